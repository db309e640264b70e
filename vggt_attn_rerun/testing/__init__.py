"""A tiny VGGT with VGGT's module tree and code path, a constructed matching variant, synthetic scenes."""

from vggt_attn_rerun.testing.matching import CONSTRUCTED_LABEL, CONSTRUCTED_NOTE, matching_vggt, uniform_vggt
from vggt_attn_rerun.testing.scenes import CAMERA_PATHS, RenderedScene, render_scene, synthetic_scene, write_scene
from vggt_attn_rerun.testing.tiny_model import TinyVGGT, tiny_vggt

__all__ = [
    "CAMERA_PATHS",
    "CONSTRUCTED_LABEL",
    "CONSTRUCTED_NOTE",
    "RenderedScene",
    "TinyVGGT",
    "matching_vggt",
    "render_scene",
    "synthetic_scene",
    "tiny_vggt",
    "uniform_vggt",
    "write_scene",
]
