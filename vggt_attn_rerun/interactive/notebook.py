"""Clicks in a Jupyter notebook's Rerun viewer become new queries of a session.

``rerun.notebook.Viewer`` (package ``rerun-notebook``) reports ``SelectionChangeEvent``s through
``Viewer.on_event``; ``attach_to_notebook_viewer`` registers a ``SelectionHandler`` there, which maps
each newly selected image pixel to a patch (``interactive.clicks``) and adds it to the session.
``show_in_notebook`` does it all in one call: the viewer, a status line and a log of the added queries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.interactive.clicks import event_field, selection_items
from vggt_attn_rerun.interactive.prompt import describe, print_line
from vggt_attn_rerun.interactive.session import AddedQuery, QuerySession

# The status line under a viewer: until it reports the session's recording open, then after.
LOADING_LINE = "loading the run into the viewer..."
READY_LINE = "ready: click a pixel of a view or a 3D point to add a query (no forward pass)"
NOTHING_ADDED_LINE = "no query added: the click selected no pixel of a view and no 3D point"


@dataclass
class SelectionHandler:
    """Callable for ``rerun.notebook.Viewer.on_event``: each newly selected image pixel becomes a query.

    Items already in the previous selection are skipped (a multi-selection lists them again), so is
    a selection in another recording than the session's. ``on_added(AddedQuery)`` and
    ``on_error(str)`` report (default: one printed line each); errors never reach the viewer's
    event loop.
    """

    session: QuerySession
    on_added: Callable[[AddedQuery], None] | None = None
    on_error: Callable[[str], None] | None = None
    seen: set = field(default_factory=set)

    def __call__(self, event: Any) -> list[int]:
        """Add the queries of one event; returns their indices (known tokens give their index again)."""
        if event_field(event, "type") != "selection_change":
            return []
        rid = event_field(event, "recording_id")
        if rid is not None and rid != self.session.rec.get_recording_id():
            return []
        items = selection_items(event)
        fresh = [it for it in items if it not in self.seen]
        self.seen = set(items)
        added = []
        for item in fresh:
            click = self.session.click_from_item(item.entity_path, item.position, item.view_name,
                                                 instance_id=item.instance_id)  # fmt: skip
            if click is None:
                continue
            before = len(self.session.added)
            try:
                index = self.session.add_query(self.session.query_at(click.frame, click.x, click.y))
            except UserError as err:
                (self.on_error or print_line)(f"click on {click.entity_path} ignored: {err}")
                continue
            added.append(index)
            if len(self.session.added) > before:
                self._report_added(self.session.added[-1])
        if added:
            self.session.rec.flush()
        return added

    def _report_added(self, added: AddedQuery) -> None:
        if self.on_added is not None:
            self.on_added(added)
        else:
            print_line(describe(added, self.session.layout))


def attach_to_notebook_viewer(
    viewer: Any,
    session: QuerySession,
    *,
    on_added: Callable[[AddedQuery], None] | None = None,
    on_error: Callable[[str], None] | None = None,
) -> SelectionHandler:
    """Turn clicks on images in a ``rerun.notebook.Viewer`` into new queries of ``session``.

    The viewer must show ``session.rec`` (``rr.notebook.Viewer(recording=session.rec)``). Click a
    pixel of a view (the image, its overlay or a marker), or of a head-grid image: the patch under it
    becomes ``q{n}``, logged without a forward pass, and its tab is made active. Clicks on 3D image
    planes in the 3D view are projected into that frame with the predicted cameras.
    Returns the handler (call it with an event to replay one).
    """
    if not callable(getattr(viewer, "on_event", None)):
        raise UserError(
            f"{type(viewer).__name__} has no on_event(callback): pass a rerun.notebook.Viewer "
            "(pip install 'rerun-sdk[notebook]')"
        )
    handler = SelectionHandler(session, on_added, on_error)
    viewer.on_event(handler)
    return handler


def show_in_notebook(session: QuerySession, *, height: int = 700) -> Any:
    """Show ``session.rec`` in a ``rerun.notebook.Viewer`` in this notebook cell, clicks adding queries.

    Under the viewer: a status line (``READY_LINE`` once the viewer reports the recording open, then
    what the last click did) and the list of added queries with their times, since prints from
    widget callbacks land in Jupyter's log console, not in the cell. Returns the viewer.
    """
    import ipywidgets
    import rerun as rr
    from IPython.display import display

    viewer = rr.notebook.Viewer(recording=session.rec, width="auto", height=height)
    status = ipywidgets.Label(LOADING_LINE)
    log = ipywidgets.Output()
    recording_id = session.rec.get_recording_id()

    def on_added(added: AddedQuery) -> None:
        status.value = f"q{added.index} added (listed below): click another pixel to add a query"
        log.append_stdout(describe(added, session.layout) + "\n")

    refused: list[str] = []  # what the handler refused during the current event

    def on_error(text: str) -> None:
        refused.append(text)
        status.value = text
        log.append_stderr(text + "\n")

    handler = SelectionHandler(session, on_added=on_added, on_error=on_error)

    def on_event(event: Any) -> None:
        kind = event_field(event, "type")
        if kind == "recording_open" and event_field(event, "recording_id") == recording_id:
            if status.value == LOADING_LINE:
                status.value = READY_LINE
        elif kind == "selection_change":
            refused.clear()
            before = len(session.added)
            indices = handler(event)
            if indices and len(session.added) == before:  # a patch that already is a query
                shown = ": its dashboards are shown" if session.update_blueprint else ""
                status.value = f"q{indices[-1]} is already a query{shown}"
            # Something selected (a view's background, a legend) but nothing mapped to a patch: say so.
            elif not indices and not refused and event_field(event, "items"):
                status.value = NOTHING_ADDED_LINE

    viewer.on_event(on_event)
    viewer.display()
    display(status, log)
    return viewer
