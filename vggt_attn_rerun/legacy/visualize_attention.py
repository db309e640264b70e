"""``from visualize_attention import ...``: the seed script's module name, for code written for it.

A thin alias: the package installs this file also as the top-level module ``visualize_attention``
(pyproject ``[tool.setuptools] py-modules``), so the seed guide's imports and its notebook run
unchanged. Everything here is defined in ``seed``, ``seed_values``, ``seed_figures`` and
``seed_demos`` (see ``seed``'s docstring for what differs from the seed: its bugs are fixed).
"""

from vggt_attn_rerun.legacy.seed import AttentionExtractor, extract_both_attentions
from vggt_attn_rerun.legacy.seed_demos import demo_single_layer_attention, demo_visualize_token_attention
from vggt_attn_rerun.legacy.seed_figures import (
    visualize_all_frames_attention,
    visualize_attention_map,
    visualize_attention_on_image,
    visualize_frame_attention,
)
from vggt_attn_rerun.legacy.seed_values import get_all_frames_attention, get_attention_values

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
