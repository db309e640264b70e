"""A tiny VGGT with VGGT's module tree and code path, and synthetic scenes, for tests and demos."""

from vggt_attn_rerun.testing.scenes import synthetic_scene
from vggt_attn_rerun.testing.tiny_model import TinyVGGT, tiny_vggt

__all__ = ["TinyVGGT", "synthetic_scene", "tiny_vggt"]
