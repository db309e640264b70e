"""The one wiring point between the layers: what notebooks, scripts and the CLI call.

- ``record``: ``capture_run`` (one forward pass, every query's rows) and ``record_attention``
  (that, logged into a Rerun recording), ``query_grid``, ``as_loaded_images``.
- ``runner``: ``run``, one whole command-line run from a typed ``RunOptions`` (checks, model, sinks, files);
  its ``outputs`` (``Outputs``, from ``viz.sinks``) say where the recording goes, as in every command.
- ``demo``: ``run_demo``, the offline demo (generated photos, the constructed model).
- ``comparison``: ``record_comparison`` and ``compare`` (``CompareOptions``): several models on the
  same photos and queries in one recording, each under ``models/{name}``.
- ``ablation``: ``ablate`` (interventions measured on depth, points, cameras) and ``record_ablation``.
"""

from vggt_attn_rerun.api.ablation import ablate, record_ablation
from vggt_attn_rerun.api.comparison import CompareOptions, compare, record_comparison
from vggt_attn_rerun.api.demo import run_demo
from vggt_attn_rerun.api.record import (
    ImagesLike,
    QueriesLike,
    as_loaded_images,
    capture_run,
    query_grid,
    record_attention,
)
from vggt_attn_rerun.api.runner import BadInput, RunHooks, RunOptions, RunSummary, run
from vggt_attn_rerun.viz.sinks import Outputs

__all__ = [
    "BadInput",
    "CompareOptions",
    "ImagesLike",
    "Outputs",
    "QueriesLike",
    "RunHooks",
    "RunOptions",
    "RunSummary",
    "ablate",
    "as_loaded_images",
    "capture_run",
    "compare",
    "query_grid",
    "record_ablation",
    "record_attention",
    "record_comparison",
    "run",
    "run_demo",
]
