"""The explicit attention recomputation that tests and benchmarks check captured rows against.

Independent of ``core.hooks`` and ``core.rows``: it starts again from an attention module's input
``x`` (kept by a forward hook) and applies the module's own layers in the order VGGT's
``Attention.forward`` does (``qkv`` projection, ``q_norm``/``k_norm``, RoPE with the position the
block passed, ``scale * q @ k^T``, the mask, softmax) as plain tensor code, with no fused kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

Rope = Callable[[Tensor, Any], Tensor]


def dinov3_rope(x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
    """VGGT-Ω's frame RoPE: rotates the patch tokens only (the special-token prefix untouched),
    in the dtype of its ``(sin, cos)`` tables. ``x`` ``[B, H, N, D]``; tables ``[N - prefix, D]``."""
    sin, cos = rope
    prefix = x.shape[-2] - sin.shape[-2]
    body = x[:, :, prefix:].to(sin.dtype)
    d = body.shape[-1] // 2
    rotated = torch.cat([-body[..., d:], body[..., :d]], dim=-1)
    return torch.cat([x[:, :, :prefix], (body * cos + rotated * sin).to(x.dtype)], dim=-2)


def rope_of(attn: nn.Module, arch: str = "vggt") -> Rope | None:
    """The RoPE an architecture applies in ``attn``: VGGT-Ω's own formula, else the module's ``rope``."""
    if arch == "vggt-omega":
        return dinov3_rope
    return getattr(attn, "rope", None)


def recompute_qkv(
    attn: nn.Module, x: Tensor, pos: Any = None, rope: Rope | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v ``[B, H, N, D]`` from the module input ``x`` ``[B, N, C]``: the ``qkv`` projection,
    ``q_norm``/``k_norm``, then ``rope`` (default: the module's ``rope``) with ``pos`` when given.
    Runs in the caller's autocast, as the module did."""
    b, n, c = x.shape
    q, k, v = attn.qkv(x).reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(q), attn.k_norm(k)
    rope = rope if rope is not None else getattr(attn, "rope", None)
    if pos is not None and rope is not None:
        q, k = rope(q, pos), rope(k, pos)
    return q, k, v


def recompute_attention(
    attn: nn.Module,
    x: Tensor,
    pos: Any = None,
    *,
    mask: Tensor | None = None,
    rope: Rope | None = None,
    fp32: bool = True,
) -> tuple[Tensor, Tensor]:
    """``(A [B, H, N, N], v [B, H, N, D])``: ``A = softmax(scale * q k^T + mask)`` over all keys.

    ``mask``: additive (float) or boolean (True = may attend). ``fp32``: logits and softmax in
    fp32 (what the captured rows are); False keeps the working dtype, as hook scripts do.
    """
    q, k, v = recompute_qkv(attn, x, pos, rope)
    if fp32:
        q, k = q.float(), k.float()
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    if mask is not None:
        logits = logits.masked_fill(~mask, -torch.inf) if mask.dtype == torch.bool else logits + mask.to(logits.dtype)
    return logits.softmax(dim=-1), v
