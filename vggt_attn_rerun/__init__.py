"""See where VGGT attends, in 2D and 3D, across the views of a scene, in the Rerun viewer.

The data flows one way: images -> model + capture -> attention rows + predictions -> recording.
The public names are ``__all__``: load a model and images, name queries, capture rows, record
them, run the command line's work, compare models, ablate heads and blocks, and the options of
each. Everything else is imported from its module (``vggt_attn_rerun.core.tokens.TokenLayout``,
...). Names that used to resolve here still do, with a DeprecationWarning that says where they
live now; the earlier visualize_attention script's names live in the module ``visualize_attention``.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

__version__ = "0.1.0"

# Name -> the module that defines it, imported on first access (PEP 562): importing the package
# (and so the console script, vggt_attn_rerun.cli) loads neither torch nor rerun before the
# command line's error policy is in place (Ctrl-C while they load), and no legacy code at all.
_EXPORTS = {
    "ablate": "vggt_attn_rerun.api.ablation",
    "compare": "vggt_attn_rerun.api.comparison",
    "CompareOptions": "vggt_attn_rerun.api.comparison",
    "record_attention": "vggt_attn_rerun.api.record",
    "run": "vggt_attn_rerun.api.runner",
    "RunOptions": "vggt_attn_rerun.api.runner",
    "capture": "vggt_attn_rerun.core.capture",
    "load_images": "vggt_attn_rerun.core.images",
    "load_model": "vggt_attn_rerun.core.loading",
    "Query": "vggt_attn_rerun.core.tokens",
    "RecordingOptions": "vggt_attn_rerun.viz.options",
    "Outputs": "vggt_attn_rerun.viz.sinks",
}
# Names this package once exported -> the module that defines them now (``module:new_name`` when
# the name changed too).
_DEPRECATED = {
    "CaptureResult": "vggt_attn_rerun.core.capture",
    "FrameTransform": "vggt_attn_rerun.core.images",
    "LoadedImages": "vggt_attn_rerun.core.images",
    "AttentionRows": "vggt_attn_rerun.core.rows",
    "TokenLayout": "vggt_attn_rerun.core.tokens",
    "parse_query": "vggt_attn_rerun.core.tokens",
    "UserError": "vggt_attn_rerun.errors",
    "log_queries": "vggt_attn_rerun.viz.log_run:log_added_queries",
    "log_run": "vggt_attn_rerun.viz.log_run",
    "capture_full": "vggt_attn_rerun.legacy.full",
    # the earlier visualize_attention script's names: `from visualize_attention import ...`
    "AttentionExtractor": "visualize_attention",
    "demo_visualize_token_attention": "visualize_attention",
    "extract_both_attentions": "visualize_attention",
    "get_attention_values": "visualize_attention",
    "visualize_attention_on_image": "visualize_attention",
}
# The top-level module visualize_attention is an installed alias of this module of the package.
_DEFINED_IN = {"visualize_attention": "vggt_attn_rerun.legacy.visualize_attention"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name not in _DEPRECATED:
        raise AttributeError(f"module 'vggt_attn_rerun' has no attribute {name!r}")
    home, _, new_name = _DEPRECATED[name].partition(":")
    new_name = new_name or name
    # Not cached in globals(): every use from the package root warns.
    warnings.warn(
        f"vggt_attn_rerun.{name} is deprecated and will be removed: use `from {home} import {new_name}`",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(_DEFINED_IN.get(home, home)), new_name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "CompareOptions",
    "Outputs",
    "Query",
    "RecordingOptions",
    "RunOptions",
    "ablate",
    "capture",
    "compare",
    "load_images",
    "load_model",
    "record_attention",
    "run",
]
