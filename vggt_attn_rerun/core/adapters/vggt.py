"""VGGT and StreamVGGT: an ``aggregator`` with ``frame_blocks`` and ``global_blocks``.

VGGT (facebookresearch/vggt, ``vggt/models/aggregator.py``): per frame ``[camera, register x 4,
patches]``, patch 14, one shared 2D RoPE module ``attn.rope`` called with ``pos`` by keyword.
StreamVGGT (wzzheng/StreamVGGT, ``src/streamvggt/models/aggregator.py``) keeps VGGT's module
names and layout; its global blocks get ``attn_mask`` (additive, ``finfo.min`` on the keys of
later frames: frame-causal), which the rows apply too. Its streaming mode (``inference`` with
a k/v cache, k stored before norm and RoPE) attends to the same keys as the masked batch
forward that capture runs, so capture does not hook the cache.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

from vggt_attn_rerun.core.adapters import ModelAdapter, type_path


def _aggregator(model: nn.Module) -> nn.Module | None:
    for candidate in (getattr(model, "aggregator", None), model):
        if isinstance(candidate, nn.Module) and all(
            isinstance(getattr(candidate, name, None), nn.ModuleList) for name in ("frame_blocks", "global_blocks")
        ):
            return candidate
    return None


def vggt_root(model: nn.Module) -> nn.Module:
    agg = _aggregator(model)
    if agg is None:
        from vggt_attn_rerun.errors import UserError

        raise UserError(
            f"model {type(model).__name__} has no VGGT aggregator: expected a module with .aggregator, "
            f"or one with .frame_blocks and .global_blocks (ModuleLists of attention blocks)"
        )
    return agg


def _blocks(root: nn.Module, kind: str) -> nn.ModuleList:
    return root.frame_blocks if kind == "frame" else root.global_blocks


def _patch_size(root: nn.Module) -> int:
    ps = getattr(getattr(root, "patch_embed", None), "patch_size", getattr(root, "patch_size", 14))
    return int(ps[0] if isinstance(ps, (tuple, list)) else ps)


def _num_registers(root: nn.Module) -> int:
    return int(getattr(root, "patch_start_idx", 5)) - 1


def _is_streamvggt(model: nn.Module) -> bool:
    agg = _aggregator(model)
    return agg is not None and any("streamvggt" in type_path(m).lower() for m in (model, agg))


def _run(model: nn.Module, images: Tensor) -> dict[str, Tensor]:
    """``model(images)``; but StreamVGGT.forward takes ``views`` (dicts with ``img [B, 3, H, W]``) and returns per-view
    results (``ress``); rebuild VGGT's prediction dict ``[B, S, ...]`` from them."""
    params = list(inspect.signature(model.forward).parameters)
    if not params or params[0] != "views":
        return model(images)
    out = model([{"img": images[:, s]} for s in range(images.shape[1])])
    if isinstance(out, dict) and "ress" not in out:
        return out
    ress = out["ress"] if isinstance(out, dict) else out.ress
    names = {
        "world_points": "pts3d_in_other_view", "world_points_conf": "conf", "depth": "depth",
        "depth_conf": "depth_conf", "pose_enc": "camera_pose",
    }  # fmt: skip
    preds = {ours: torch.stack([r[theirs] for r in ress], dim=1) for ours, theirs in names.items()}
    preds["images"] = images
    return preds


VGGT = ModelAdapter(
    name="vggt",
    title="VGGT",
    matches=lambda model: _aggregator(model) is not None,
    root=vggt_root,
    blocks=_blocks,
    patch_size=_patch_size,
    num_registers=_num_registers,
    run=_run,
)

STREAMVGGT = ModelAdapter(
    name="streamvggt",
    title="StreamVGGT",
    matches=_is_streamvggt,
    fits=lambda model: _aggregator(model) is not None,
    root=vggt_root,
    blocks=_blocks,
    patch_size=_patch_size,
    num_registers=_num_registers,
    mask_kwarg="attn_mask",
    run=_run,
)
