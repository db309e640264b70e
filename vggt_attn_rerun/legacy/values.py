"""The earlier script's value functions: one query token's attention over the patches, as numpy arrays.

Token indices (see extraction.py): ``token_idx`` is a global token index ``frame * P + index within
frame``, unless ``frame_idx`` is given: then it may also be an index within that frame
(``0..P-1``), as its guide's FAQ uses frame-attention indices ("token 820 of frame 2").
Both name the same token, so ``(token_idx=820, frame_idx=1)`` and ``token_idx=1750`` (with
``P = 930``) give the same maps; a global index of another frame than ``frame_idx`` is a UserError.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vggt_attn_rerun.core.images import batched_images
from vggt_attn_rerun.core.introspect import check_kinds
from vggt_attn_rerun.core.tokens import VGGT_PATCH_SIZE, TokenLayout
from vggt_attn_rerun.errors import UserError

RESIZE_MODE = "bilinear"  # as the earlier script; align_corners=False puts each patch value at its patch centre
MEAN = "mean"


def _index(value: object, what: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise UserError(f"{what} must be an integer, got {value!r}") from None


def frame_token(layout: TokenLayout, token_idx: int, frame_idx: int | None = None) -> tuple[int, int]:
    """(frame, index within frame) of a token: global ``token_idx``, or one within ``frame_idx``.

    UserError with the valid ranges for anything else (the earlier script silently moved such tokens).
    """
    token, p = _index(token_idx, "token_idx"), layout.tokens_per_frame
    if frame_idx is None:
        if not 0 <= token < layout.num_tokens:
            raise UserError(
                f"token_idx {token} is out of range: valid are 0..{layout.num_tokens - 1} "
                f"(frame * {p} + index within frame; {layout.num_frames} frames of {p} tokens, patches at "
                f"{layout.patch_start}..{p - 1} of each frame), or an index within frame frame_idx"
            )
        return divmod(token, p)
    frame = _index(frame_idx, "frame_idx")
    if not 0 <= frame < layout.num_frames:
        raise UserError(f"frame_idx {frame} is out of range: valid frames are 0..{layout.num_frames - 1}")
    if 0 <= token < p:
        return frame, token
    if 0 <= token < layout.num_tokens and token // p == frame:
        return frame, token - frame * p
    raise UserError(
        f"token_idx {token} is not a token of frame {frame}: valid are indices within the frame 0..{p - 1} "
        f"or its global indices {frame * p}..{(frame + 1) * p - 1}"
    )


def check_head(head_idx: int | str | None, num_heads: int) -> int | None:
    """A head index, or None for the mean over heads."""
    if head_idx is None or (isinstance(head_idx, str) and head_idx.strip().lower() == MEAN):
        return None
    try:
        head = -1 if isinstance(head_idx, bool) else operator.index(head_idx)  # type: ignore[arg-type]
    except TypeError:
        head = -1
    if not 0 <= head < num_heads:
        raise UserError(f"head_idx {head_idx!r} is out of range: valid are 0..{num_heads - 1}, or 'mean'")
    return head


def seed_layout(images: Tensor, patch_start_idx: int, patch_size: int) -> tuple[Tensor, TokenLayout]:
    """Images ``[S, 3, H, W]`` (one scene) and the token layout of the earlier script's arguments."""
    imgs = batched_images(images)[0]
    s, _, h, w = (int(d) for d in imgs.shape)
    registers = _index(patch_start_idx, "patch_start_idx") - 1
    if registers < 0:
        raise UserError(f"patch_start_idx must be >= 1 (the camera token comes first), got {patch_start_idx}")
    return imgs, TokenLayout.for_image_size(s, h, w, patch_size, registers)


def check_weights(attn_weights: Tensor, layout: TokenLayout, kind: str, patch_start_idx: int) -> None:
    s, p, n = layout.num_frames, layout.tokens_per_frame, layout.num_tokens
    expected = [s, None, p, p] if kind == "frame" else [1, None, n, n]
    got = list(attn_weights.shape) if isinstance(attn_weights, Tensor) else None
    if got is None or len(got) != 4 or any(e is not None and e != g for e, g in zip(expected, got, strict=True)):
        h, w = layout.image_size
        want = f"[{s}, H, {p}, {p}]" if kind == "frame" else f"[1, H, {n}, {n}]"
        batch = got is not None and len(got) == 4 and (got[0] > s if kind == "frame" else got[0] > 1)
        raise UserError(
            f"{kind} attention weights must be {want} for {s} images of {w}x{h} with patch_start_idx "
            f"{patch_start_idx}, got {got}: "
            + ("a batch of several scenes is not supported, pass one scene's weights" if batch else
               "pass the images and weights of the same run")
        )  # fmt: skip


def _maps(row: Tensor, layout: TokenLayout, renormalize: bool) -> Tensor:
    """One query row over ``[1 or S] * P`` keys -> patch maps ``[1 or S, gh, gw]`` (fp32)."""
    keys = row.float().cpu().reshape(-1, layout.tokens_per_frame)[:, layout.patch_start :]
    if renormalize:
        keys = keys / keys.sum().clamp_min(torch.finfo(keys.dtype).tiny)
    return keys.reshape(-1, layout.grid_h, layout.grid_w)


def resize_maps(maps: Tensor, height: int, width: int) -> Tensor:
    """``[n, gh, gw]`` -> ``[n, H, W]``, bilinear with ``align_corners=False`` (as the earlier script)."""
    return F.interpolate(maps[:, None], size=(height, width), mode=RESIZE_MODE, align_corners=False)[:, 0]


def _metadata(layout: TokenLayout, token_idx: int, head: int | None) -> dict[str, Any]:
    """The metadata keys both value functions return (the earlier script's names)."""
    h, w = layout.image_size
    return {
        "grid_h": layout.grid_h,
        "grid_w": layout.grid_w,
        "H": h,
        "W": w,
        "S": layout.num_frames,
        "token_idx": int(token_idx),
        "head_idx": MEAN if head is None else head,
        "patch_start_idx": layout.patch_start,
    }


def get_attention_values(
    attn_weights: Tensor,
    images: Tensor,
    token_idx: int,
    head_idx: int | str | None = 0,
    patch_start_idx: int = 5,
    attention_type: str = "frame",
    *,
    frame_idx: int | None = None,
    renormalize: bool = True,
    patch_size: int = VGGT_PATCH_SIZE,
) -> dict[str, Any]:
    """The attention of one query token over the patches of the images, as numpy arrays.

    Args:
        attn_weights: frame ``[S, H, P, P]`` or global ``[1, H, S*P, S*P]`` (from
            ``extract_both_attentions`` / ``AttentionExtractor``), ``P = patch_start_idx + gh * gw``.
        images: the model input, ``[S, 3, H, W]`` or ``[1, S, 3, H, W]`` in [0, 1] (one scene).
        token_idx: the query token: a global index ``frame * P + index within frame`` (special
            tokens allowed), or, with ``frame_idx``, an index within that frame (module docstring).
            Frame attention reads the row of the token's frame (the earlier script always read frame 0).
        head_idx: a head (0..H-1), or ``"mean"`` / None for the mean over heads.
        patch_start_idx: camera + register tokens before the patches of each frame (VGGT: 5).
        attention_type: ``"frame"`` or ``"global"``.
        frame_idx: the frame of ``token_idx`` when it is an index within a frame (None: global).
        renormalize: divide by the mass on patches (the earlier script's behaviour), so the maps sum to 1
            over all patches of all frames; False keeps the raw softmax probabilities.
        patch_size: pixels per patch side (VGGT: core.tokens.VGGT_PATCH_SIZE).

    Returns:
        ``attention_maps``: frame ``[gh, gw]``, global ``[S, gh, gw]`` (float32);
        ``attention_maps_resized``: frame ``[H, W]``, global ``[S, H, W]``, bilinear
        (``align_corners=False``) upsampling of the maps to the image size;
        ``images``: ``[S, H, W, 3]`` float32 in [0, 1];
        ``metadata``: grid_h, grid_w, H, W, S, token_idx (as given), head_idx, attention_type,
        patch_start_idx, frame_idx (the query's frame) and local_idx (its index within the frame).
        Out-of-range token, head or type: UserError naming the valid range.
    """
    kind = check_kinds(attention_type)[0]
    imgs, layout = seed_layout(images, patch_start_idx, patch_size)
    check_weights(attn_weights, layout, kind, patch_start_idx)
    frame, local = frame_token(layout, token_idx, frame_idx)
    head = check_head(head_idx, int(attn_weights.shape[1]))

    weights, p = attn_weights.detach(), layout.tokens_per_frame
    # One query row over the keys: frame [P] within the token's frame, global [S*P].
    rows = weights[frame, :, local] if kind == "frame" else weights[0, :, frame * p + local]
    maps = _maps(rows.float().mean(0) if head is None else rows[head], layout, renormalize)
    h, w = layout.image_size
    resized = resize_maps(maps, h, w)
    if kind == "frame":
        maps, resized = maps[0], resized[0]
    return {
        "attention_maps": maps.numpy(),
        "attention_maps_resized": resized.numpy(),
        "images": imgs.detach().permute(0, 2, 3, 1).float().clamp(0, 1).cpu().numpy(),
        "metadata": {
            **_metadata(layout, token_idx, head),
            "attention_type": kind,
            "frame_idx": frame,
            "local_idx": local,
        },
    }


def get_all_frames_attention(
    attn_weights: Tensor,
    images: Tensor,
    token_idx: int,
    head_idx: int | str | None = 0,
    patch_start_idx: int = 5,
    frame_indices: Sequence[int] | None = None,
    *,
    renormalize: bool = True,
    patch_size: int = VGGT_PATCH_SIZE,
) -> dict[str, Any]:
    """Frame attention of the token at the same place in each of several frames.

    Args:
        attn_weights: frame attention ``[S, H, P, P]``.
        images: ``[S, 3, H, W]`` or ``[1, S, 3, H, W]`` (one scene).
        token_idx: an index within a frame (``0..P-1``, as the earlier script), read in every frame of
            ``frame_indices``; a global index ``frame * P + i`` stands for its index ``i``.
        head_idx, patch_start_idx, renormalize, patch_size: as in ``get_attention_values`` (each
            frame's map is renormalized over that frame's patches, as the earlier script).
        frame_indices: the frames (default all, in order); out of range: UserError.

    Returns:
        The earlier script's dict: ``attention_maps [n, gh, gw]``, ``attention_maps_resized [n, H, W]``,
        ``images [S, H, W, 3]``, ``frame_indices`` (list), ``metadata`` (grid_h, grid_w, H, W, S,
        token_idx, head_idx, patch_start_idx, attention_type "frame", local_idx).
    """
    imgs, layout = seed_layout(images, patch_start_idx, patch_size)
    check_weights(attn_weights, layout, "frame", patch_start_idx)
    _, local = frame_token(layout, token_idx)
    if frame_indices is None:
        frame_indices = range(layout.num_frames)
    frames = [_index(f, "frame index") for f in frame_indices]
    for f in frames:
        layout.check_frame(f)
    if not frames:
        raise UserError(f"frame_indices is empty: give frames among 0..{layout.num_frames - 1}, or None for all")
    head = check_head(head_idx, int(attn_weights.shape[1]))
    rows = attn_weights.detach()[frames, :, local]  # [n, H, P]
    rows = rows.float().mean(1) if head is None else rows[:, head]
    maps = torch.cat([_maps(r, layout, renormalize) for r in rows])  # [n, gh, gw]
    h, w = layout.image_size
    return {
        "attention_maps": maps.numpy(),
        "attention_maps_resized": resize_maps(maps, h, w).numpy(),
        "images": imgs.detach().permute(0, 2, 3, 1).float().clamp(0, 1).cpu().numpy(),
        "frame_indices": frames,
        "metadata": {**_metadata(layout, token_idx, head), "attention_type": "frame", "local_idx": local},
    }
