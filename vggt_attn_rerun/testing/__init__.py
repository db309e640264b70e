"""A tiny VGGT with VGGT's module tree and code path, a constructed matching variant, synthetic scenes."""

from vggt_attn_rerun.testing.matching import CONSTRUCTED_LABEL, CONSTRUCTED_NOTE, matching_vggt
from vggt_attn_rerun.testing.scenes import synthetic_scene
from vggt_attn_rerun.testing.tiny_model import TinyVGGT, tiny_vggt

__all__ = ["CONSTRUCTED_LABEL", "CONSTRUCTED_NOTE", "TinyVGGT", "matching_vggt", "synthetic_scene", "tiny_vggt"]
