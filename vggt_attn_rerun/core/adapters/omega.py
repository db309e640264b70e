"""VGGT-Omega (facebookresearch/vggt-omega, ``vggt_omega/models/aggregator.py``).

Checked in its code: ``aggregator.frame_blocks`` and ``aggregator.inter_frame_blocks`` (24
each, 16 heads), run alternately; blocks are ``SelfAttentionBlock.forward(x, rope)`` calling
``self.attn(self.norm1(x), rope=rope)``. Per frame ``[camera, register x 16, patches]``
(``patch_token_start = 17``), patch 16, special tokens as VGGT's (frame 0 its own set).
``SelfAttention.compute_attention``: ``q_norm``/``k_norm`` (LayerNorm), then, in frame blocks
only, DINOv3 RoPE through the method ``apply_rope(q, k, (sin, cos))`` on the patch tokens only
(the prefix of special tokens is left alone), then SDPA; ``qkv`` masks its k bias
(``LinearKMaskedBias``). Inter-frame blocks get no RoPE. The inter-frame blocks listed in
``register_attention_block_indices`` ("register" blocks) attend among the camera and register
tokens of all frames only (``S * 17`` tokens); patch tokens skip them, so a patch query has no
row there (all zeros). Outputs ``pose_enc [B, S, 9]`` (VGGT's encoding) and ``depth``; ``run``
adds ``world_points`` (the depth unprojected with the predicted cameras, ``geometry.unproject_depth``)
and ``world_points_conf`` (``depth_conf``) for the recording.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from vggt_attn_rerun.core.adapters import ModelAdapter
from vggt_attn_rerun.errors import UserError


def _aggregator(model: nn.Module) -> nn.Module | None:
    for candidate in (getattr(model, "aggregator", None), model):
        if isinstance(candidate, nn.Module) and all(
            isinstance(getattr(candidate, name, None), nn.ModuleList) for name in ("frame_blocks", "inter_frame_blocks")
        ):
            return candidate
    return None


def _root(model: nn.Module) -> nn.Module:
    agg = _aggregator(model)
    if agg is None:
        raise UserError(
            f"model {type(model).__name__} is not a VGGT-Omega model: expected an aggregator with "
            ".frame_blocks and .inter_frame_blocks"
        )
    return agg


def _apply_rope(attn: nn.Module, q: Tensor, k: Tensor, rope: object) -> tuple[Tensor, Tensor]:
    # The module's own method: the same prefix handling and dtype round trip as its forward.
    return (q, k) if rope is None else attn.apply_rope(q, k, rope)


def _run(model: nn.Module, images: Tensor) -> dict[str, Tensor]:
    from vggt_attn_rerun.core.geometry import pose_encoding_to_cameras, unproject_depth

    out = dict(model(images))
    if "depth" not in out or "pose_enc" not in out:
        return out
    b, s, _, h, w = images.shape
    extr, intr = pose_encoding_to_cameras(out["pose_enc"].detach().double().cpu(), (h, w))
    depth = out["depth"].detach().double().cpu().reshape(b, s, h, w)
    world = [unproject_depth(depth[i].numpy(), extr[i].numpy(), intr[i].numpy()) for i in range(b)]
    out["world_points"] = torch.from_numpy(np.stack(world)).to(out["depth"])
    out["world_points_conf"] = out.get("depth_conf", torch.ones_like(out["depth"][..., 0]))
    return out


VGGT_OMEGA = ModelAdapter(
    name="vggt-omega",
    title="VGGT-Omega",
    matches=lambda model: _aggregator(model) is not None,
    root=_root,
    blocks=lambda root, kind: root.frame_blocks if kind == "frame" else root.inter_frame_blocks,
    patch_size=lambda root: int(root.patch_size),
    num_registers=lambda root: int(root.patch_token_start) - 1,
    pos_kwarg="rope",
    apply_rope=_apply_rope,
    run=_run,
    points="depth",
    cameras="pose_enc",
)
