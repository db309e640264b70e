"""pi3 and Pi3X (yyfz/Pi3, ``pi3/models/pi3.py``): one ``decoder`` list of ``BlockRope``.

Checked in its code: ``decode`` runs ``self.decoder[i](hidden, xpos=pos)``; even ``i`` sees
``[B*N, hw, C]`` (frame attention), odd ``i`` sees ``[B, N*hw, C]`` (global attention), so
block ``b`` of each kind is ``decoder[2b]`` / ``decoder[2b + 1]`` (18 + 18 for the large
decoder). Per frame: 5 register tokens (``register_token [1, 1, 5, C]``, the same for every
frame), no camera token, patches from ``patch_start_idx = 5``; patch 14. Positions: patch
(row, col) + 1, the registers at (0, 0), used by the shared croco-style ``RoPE2D`` module
``attn.rope``. ``FlashAttentionRope``: ``q_norm``/``k_norm`` then ``.to(v.dtype)``, RoPE, SDPA
(flash backend under bf16), scale ``head_dim ** -0.5``. Outputs ``points [B, N, H, W, 3]``
(world), ``local_points``, ``conf [B, N, H, W, 1]`` and ``camera_poses [B, N, 4, 4]``
(camera-to-world).
"""

from __future__ import annotations

from torch import nn

from vggt_attn_rerun.core.adapters import ModelAdapter, type_path
from vggt_attn_rerun.errors import UserError


class Pi3Blocks(nn.Module):
    """A view that names pi3's decoder blocks as frame and global blocks (no copies).

    Not registered on the model, so the model's state dict is untouched.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        decoder = model.decoder
        self.frame_blocks = nn.ModuleList(decoder[0::2])
        self.global_blocks = nn.ModuleList(decoder[1::2])
        self.patch_size = int(getattr(model, "patch_size", 14))
        self.patch_start_idx = int(model.patch_start_idx)
        self.rope = getattr(model, "rope", None)


def _fits(model: nn.Module) -> bool:
    decoder = getattr(model, "decoder", None)
    return (
        isinstance(decoder, nn.ModuleList)
        and len(decoder) >= 2
        and len(decoder) % 2 == 0
        and hasattr(model, "register_token")
        and hasattr(model, "patch_start_idx")
        and all(hasattr(block, "attn") for block in decoder)
    )


def _matches(model: nn.Module) -> bool:
    return _fits(model) and ("pi3" in type_path(model).lower())


def _root(model: nn.Module) -> nn.Module:
    if isinstance(model, Pi3Blocks):
        return model
    if not _fits(model):
        raise UserError(
            f"model {type(model).__name__} is not a pi3 model: expected .decoder (an even number of "
            "blocks, frame and global alternating), .register_token and .patch_start_idx"
        )
    return Pi3Blocks(model)


PI3 = ModelAdapter(
    name="pi3",
    title="pi3 / Pi3X",
    matches=_matches,
    fits=_fits,
    root=_root,
    blocks=lambda root, kind: root.frame_blocks if kind == "frame" else root.global_blocks,
    patch_size=lambda root: root.patch_size,
    num_registers=lambda root: root.patch_start_idx,
    num_cameras=0,
    pos_kwarg="xpos",
    points="points",
    cameras="camera_poses",
)
