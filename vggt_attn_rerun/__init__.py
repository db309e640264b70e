"""See where VGGT attends, in 2D and 3D, across the views of a scene, in the Rerun viewer.

The data flows one way: images -> model + capture -> attention rows + predictions -> recording.
The earlier script's API (``AttentionExtractor``, ...) and ``capture_full`` live in
``vggt_attn_rerun.legacy``; their names resolve here too, but only load that code when used.
"""

from __future__ import annotations

import importlib
from typing import Any

from vggt_attn_rerun.api import record_attention
from vggt_attn_rerun.core.capture import CaptureResult, capture
from vggt_attn_rerun.core.images import FrameTransform, LoadedImages, load_images
from vggt_attn_rerun.core.models import load_model
from vggt_attn_rerun.core.rows import AttentionRows
from vggt_attn_rerun.core.tokens import Query, TokenLayout, parse_query
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.viz.log_run import log_queries, log_run
from vggt_attn_rerun.viz.options import RecordingOptions

__version__ = "0.1.0"

# Name -> the legacy module that defines it, imported on first access (PEP 562).
_LEGACY = {
    "AttentionExtractor": "vggt_attn_rerun.legacy.visualize_attention",
    "demo_visualize_token_attention": "vggt_attn_rerun.legacy.visualize_attention",
    "extract_both_attentions": "vggt_attn_rerun.legacy.visualize_attention",
    "get_attention_values": "vggt_attn_rerun.legacy.visualize_attention",
    "visualize_attention_on_image": "vggt_attn_rerun.legacy.visualize_attention",
    "capture_full": "vggt_attn_rerun.legacy.full",
}


def __getattr__(name: str) -> Any:
    if name not in _LEGACY:
        raise AttributeError(f"module 'vggt_attn_rerun' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LEGACY[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LEGACY))


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
