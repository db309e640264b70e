"""See where VGGT attends, in 2D and 3D, across the views of a scene, in the Rerun viewer.

The data flows one way: images -> model + capture -> attention rows + predictions -> recording.
The earlier script's API (``AttentionExtractor``, ...) and ``capture_full`` live in
``vggt_attn_rerun.legacy``; their names resolve here too, but only load that code when used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Name -> the module that defines it, imported on first access (PEP 562): importing the package
# (and so the console script, vggt_attn_rerun.cli) loads neither torch nor rerun before the
# command line's error policy is in place (Ctrl-C while they load), and no legacy code at all.
_EXPORTS = {
    "record_attention": "vggt_attn_rerun.api",
    "CaptureResult": "vggt_attn_rerun.core.capture",
    "capture": "vggt_attn_rerun.core.capture",
    "FrameTransform": "vggt_attn_rerun.core.images",
    "LoadedImages": "vggt_attn_rerun.core.images",
    "load_images": "vggt_attn_rerun.core.images",
    "load_model": "vggt_attn_rerun.core.models",
    "AttentionRows": "vggt_attn_rerun.core.rows",
    "Query": "vggt_attn_rerun.core.tokens",
    "TokenLayout": "vggt_attn_rerun.core.tokens",
    "parse_query": "vggt_attn_rerun.core.tokens",
    "UserError": "vggt_attn_rerun.errors",
    "log_queries": "vggt_attn_rerun.viz.log_run",
    "log_run": "vggt_attn_rerun.viz.log_run",
    "RecordingOptions": "vggt_attn_rerun.viz.options",
}
_LEGACY = {
    "AttentionExtractor": "vggt_attn_rerun.legacy.visualize_attention",
    "demo_visualize_token_attention": "vggt_attn_rerun.legacy.visualize_attention",
    "extract_both_attentions": "vggt_attn_rerun.legacy.visualize_attention",
    "get_attention_values": "vggt_attn_rerun.legacy.visualize_attention",
    "visualize_attention_on_image": "vggt_attn_rerun.legacy.visualize_attention",
    "capture_full": "vggt_attn_rerun.legacy.full",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name) or _LEGACY.get(name)
    if module is None:
        raise AttributeError(f"module 'vggt_attn_rerun' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_LEGACY))


__all__ = [
    "AttentionExtractor",
    "AttentionRows",
    "CaptureResult",
    "FrameTransform",
    "LoadedImages",
    "Query",
    "RecordingOptions",
    "TokenLayout",
    "UserError",
    "capture",
    "capture_full",
    "demo_visualize_token_attention",
    "extract_both_attentions",
    "get_attention_values",
    "load_images",
    "load_model",
    "log_queries",
    "log_run",
    "parse_query",
    "record_attention",
    "visualize_attention_on_image",
]
