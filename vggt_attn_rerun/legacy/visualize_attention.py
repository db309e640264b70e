"""``from visualize_attention import ...``: the earlier script's module name, for code written for it.

A thin alias: the package installs this file also as the top-level module ``visualize_attention``
(pyproject ``[tool.setuptools] py-modules``), so the imports of its guide and its notebook run
unchanged. Everything here is defined in ``extraction``, ``values``, ``figures`` and
``demos`` (see ``extraction``'s docstring for what differs from the earlier script: its bugs are fixed).
"""

from vggt_attn_rerun.legacy.demos import demo_single_layer_attention, demo_visualize_token_attention
from vggt_attn_rerun.legacy.extraction import AttentionExtractor, extract_both_attentions
from vggt_attn_rerun.legacy.figures import (
    visualize_all_frames_attention,
    visualize_attention_map,
    visualize_attention_on_image,
    visualize_frame_attention,
)
from vggt_attn_rerun.legacy.values import get_all_frames_attention, get_attention_values

__all__ = [
    "AttentionExtractor",
    "demo_single_layer_attention",
    "demo_visualize_token_attention",
    "extract_both_attentions",
    "get_all_frames_attention",
    "get_attention_values",
    "visualize_all_frames_attention",
    "visualize_attention_map",
    "visualize_attention_on_image",
    "visualize_frame_attention",
]
