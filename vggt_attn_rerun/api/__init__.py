"""The one wiring point between the layers: what notebooks, scripts and the CLI call.

- ``record``: ``capture_run`` (one forward pass, every query's rows) and ``record_attention``
  (that, logged into a Rerun recording), ``query_grid``, ``as_loaded_images``.
- ``runner``: ``run``, one whole command-line run from a typed ``RunOptions`` (checks, model, sinks, files).
"""

from vggt_attn_rerun.api.record import (
    ImagesLike,
    QueriesLike,
    as_loaded_images,
    capture_run,
    query_grid,
    record_attention,
)
from vggt_attn_rerun.api.runner import BadInput, RunHooks, RunOptions, RunSummary, plural, run

__all__ = [
    "BadInput",
    "ImagesLike",
    "QueriesLike",
    "RunHooks",
    "RunOptions",
    "RunSummary",
    "as_loaded_images",
    "capture_run",
    "plural",
    "query_grid",
    "record_attention",
    "run",
]
