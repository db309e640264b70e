"""See where VGGT attends, in 2D and 3D, across the views of a scene, in the Rerun viewer.

The data flows one way: images -> model + capture -> attention rows + predictions -> recording.
"""

from .api import record_attention
from .capture import AttentionRows, CaptureResult, capture, capture_full
from .compat import (
    AttentionExtractor,
    demo_visualize_token_attention,
    extract_both_attentions,
    get_attention_values,
    visualize_attention_on_image,
)
from .errors import UserError
from .images import FrameTransform, LoadedImages, load_images
from .models import load_model
from .options import RecordingOptions
from .recording import log_queries, log_run
from .tokens import Query, TokenLayout, parse_query

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
