"""New queries after a run, answered from the run's q/k cache: clicks, typed queries or code.

``session`` (QuerySession, start_session), ``clicks`` (a viewer selection -> frame and pixel),
``notebook`` (clicks in Jupyter's viewer), ``prompt`` (typed queries in a terminal).
"""

from vggt_attn_rerun.interactive.clicks import (
    Click,
    SelectedEntity,
    click_from_selection,
    origin_units,
    selection_items,
)
from vggt_attn_rerun.interactive.notebook import SelectionHandler, attach_to_notebook_viewer, show_in_notebook
from vggt_attn_rerun.interactive.prompt import describe, prompt_queries
from vggt_attn_rerun.interactive.session import AddedQuery, QuerySession, start_session

__all__ = [
    "AddedQuery",
    "Click",
    "QuerySession",
    "SelectedEntity",
    "SelectionHandler",
    "attach_to_notebook_viewer",
    "click_from_selection",
    "describe",
    "origin_units",
    "prompt_queries",
    "selection_items",
    "show_in_notebook",
    "start_session",
]
