"""See where VGGT attends, in 2D and 3D, across the views of a scene, in the Rerun viewer.

The data flows one way: images -> model + capture -> attention rows + predictions -> recording.
"""

from vggt_attn_rerun.api import record_attention
from vggt_attn_rerun.core.capture import CaptureResult, capture
from vggt_attn_rerun.core.images import FrameTransform, LoadedImages, load_images
from vggt_attn_rerun.core.models import load_model
from vggt_attn_rerun.core.rows import AttentionRows
from vggt_attn_rerun.core.tokens import Query, TokenLayout, parse_query
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.legacy.full import capture_full
from vggt_attn_rerun.legacy.seed import (
    AttentionExtractor,
    demo_visualize_token_attention,
    extract_both_attentions,
    get_attention_values,
    visualize_attention_on_image,
)
from vggt_attn_rerun.viz.log_run import log_queries, log_run
from vggt_attn_rerun.viz.options import RecordingOptions

__version__ = "0.1.0"

__all__ = [
    "AttentionExtractor",
    "RecordingOptions",
    "demo_visualize_token_attention",
    "extract_both_attentions",
    "get_attention_values",
    "log_queries",
    "log_run",
    "record_attention",
    "visualize_attention_on_image",
    "AttentionRows",
    "CaptureResult",
    "FrameTransform",
    "LoadedImages",
    "Query",
    "TokenLayout",
    "UserError",
    "capture",
    "capture_full",
    "load_images",
    "load_model",
    "parse_query",
]
