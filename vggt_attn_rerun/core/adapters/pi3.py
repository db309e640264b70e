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

pi3 has no reference frame and no intrinsics, so ``run`` adds VGGT's keys for the recording
(the originals stay): ``world_points`` (pi3's points in the first camera's frame, VGGT's world),
``world_points_conf`` (``sigmoid(conf)``, as pi3's examples threshold it), and ``pose_enc``
(camera-from-world translation, quaternion xyzw, and fields of view from the focal lengths
that best map pi3's ``local_points`` to their pixels, least squares, principal point at the
centre, pixel (i, j) at its index as ``geometry.unproject_depth`` reads it).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

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


def mat_to_quat(rot: Tensor) -> Tensor:
    """Rotation matrices ``[..., 3, 3]`` -> unit quaternions ``[..., 4]`` (x, y, z, w), w >= 0."""
    m = rot
    diag = torch.stack([m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]], -1)
    w = 0.5 * (1 + diag.sum(-1)).clamp_min(0).sqrt()
    x = 0.5 * (1 + diag[..., 0] - diag[..., 1] - diag[..., 2]).clamp_min(0).sqrt()
    y = 0.5 * (1 - diag[..., 0] + diag[..., 1] - diag[..., 2]).clamp_min(0).sqrt()
    z = 0.5 * (1 - diag[..., 0] - diag[..., 1] + diag[..., 2]).clamp_min(0).sqrt()
    x = torch.copysign(x, m[..., 2, 1] - m[..., 1, 2])
    y = torch.copysign(y, m[..., 0, 2] - m[..., 2, 0])
    z = torch.copysign(z, m[..., 1, 0] - m[..., 0, 1])
    q = torch.stack([x, y, z, w], -1)
    return q / q.norm(dim=-1, keepdim=True)


def _focal(coord: Tensor, ratio: Tensor) -> Tensor:
    """Least-squares f of ``coord - centre = f * ratio`` over the pixels: ``[B, S, H, W]`` -> ``[B, S]``."""
    return (coord * ratio).sum((-1, -2)) / (ratio * ratio).sum((-1, -2)).clamp_min(1e-12)


def vggt_predictions(out: dict[str, Tensor], height: int, width: int) -> dict[str, Tensor]:
    """VGGT's ``pose_enc [B, S, 9]``, ``world_points [B, S, H, W, 3]``, ``world_points_conf`` from pi3's output."""
    c2w = out["camera_poses"].double()  # [B, S, 4, 4]
    to_first = torch.linalg.inv(c2w[:, :1])  # world := the first camera, as in VGGT
    w2c = torch.linalg.inv(to_first @ c2w)
    pts = out["points"].double()
    world = torch.einsum("bij,bshwj->bshwi", to_first[:, 0, :3, :3], pts) + to_first[:, 0, None, None, None, :3, 3]
    local = out["local_points"].double()
    z = local[..., 2].clamp_min(1e-12)
    u = torch.arange(width, dtype=torch.float64, device=z.device) - width / 2.0
    v = torch.arange(height, dtype=torch.float64, device=z.device)[:, None] - height / 2.0
    fx, fy = _focal(u.expand_as(z), local[..., 0] / z), _focal(v.expand_as(z), local[..., 1] / z)
    fov_h, fov_w = 2 * torch.atan(height / 2.0 / fy), 2 * torch.atan(width / 2.0 / fx)
    pose_enc = torch.cat([w2c[..., :3, 3], mat_to_quat(w2c[..., :3, :3]), fov_h[..., None], fov_w[..., None]], -1)
    dtype = out["points"].dtype
    return {
        "pose_enc": pose_enc.to(dtype),
        "world_points": world.to(dtype),
        "world_points_conf": torch.sigmoid(out["conf"][..., 0]),
    }


def _run(model: nn.Module, images: Tensor) -> dict[str, Tensor]:
    out = dict(model(images))
    return {**vggt_predictions(out, images.shape[-2], images.shape[-1]), **out, "images": images}


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
    run=_run,
    points="points",
    cameras="camera_poses",
)
