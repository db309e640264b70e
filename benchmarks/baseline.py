"""The baseline users replace: a hook script that rebuilds full attention matrices.

Written the way public VGGT attention-visualization scripts do it (with their RoPE bug fixed,
so that the comparison is fair and the matrices are right): a forward pre-hook *with kwargs*
on every hooked aggregator attention module recomputes ``qkv`` from the module input ``x``,
applies ``q_norm``/``k_norm`` and RoPE with ``pos``, builds ``softmax(scale * q @ k^T)`` as a
``[B, H, N, N]`` matrix and keeps it, for every hooked block, on the model's device.

Costs, compared with ``vggt_attn_rerun.core.capture.capture``: a second qkv projection per block,
an ``N x N`` matrix per head and block kept until the end (frame: ``[S, H, P, P]``, global:
``[1, H, S*P, S*P]``), plus one more such matrix while the softmax runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn

from vggt_attn_rerun.core.introspect import KINDS, find_aggregator
from vggt_attn_rerun.core.tokens import TokenLayout
from vggt_attn_rerun.legacy.full import full_matrix_bytes
from vggt_attn_rerun.testing.recompute import recompute_attention

_BLOCK_LISTS = {"frame": "frame_blocks", "global": "global_blocks"}


class FullMatrixHooks:
    """Context manager: while active, ``maps[(kind, block)]`` receives each hooked block's full matrix."""

    def __init__(self, model: nn.Module, blocks: Sequence[int] | None = None, kinds: Sequence[str] = KINDS) -> None:
        agg = find_aggregator(model)
        depth = len(agg.frame_blocks)
        self.blocks = tuple(range(depth)) if blocks is None else tuple(blocks)
        self.kinds = tuple(kinds)
        self._modules = [
            (kind, b, getattr(agg, _BLOCK_LISTS[kind])[b].attn) for kind in self.kinds for b in self.blocks
        ]
        self.maps: dict[tuple[str, int], Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @staticmethod
    def full_attention(attn: nn.Module, x: Tensor, pos: Tensor | None) -> Tensor:
        """``softmax(scale * q @ k^T)`` ``[B, H, N, N]`` recomputed from the module input, as scripts do."""
        return recompute_attention(attn, x, pos, fp32=False)[0]

    def _hook(self, kind: str, block: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs["x"]
            pos = kwargs.get("pos", args[1] if len(args) > 1 else None)
            with torch.no_grad():
                self.maps[(kind, block)] = self.full_attention(module, x, pos).detach()

        return hook

    def __enter__(self) -> FullMatrixHooks:
        self.maps.clear()
        for kind, b, attn in self._modules:
            self._handles.append(attn.register_forward_pre_hook(self._hook(kind, b), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.maps.values())


def baseline_bytes(layout: TokenLayout, num_heads: int, num_blocks: int, kinds: Sequence[str] = KINDS) -> int:
    """Predicted peak extra bytes of the baseline: all kept fp32 matrices plus one transient matrix.

    The transient is the logits matrix of the largest kind, alive while its softmax is built.
    """
    kept = full_matrix_bytes(layout, num_heads, kinds, num_blocks)
    transient = max(full_matrix_bytes(layout, num_heads, [k], 1) for k in kinds)
    return kept + transient


def first_frames_over_budget(
    layout: TokenLayout,
    num_heads: int,
    num_blocks: int,
    budget_bytes: int,
    kinds: Sequence[str] = KINDS,
    limit: int = 100_000,
) -> int | None:
    """The smallest S at ``layout``'s resolution whose baseline prediction exceeds ``budget_bytes``."""
    for s in range(1, limit + 1):
        if baseline_bytes(replace(layout, num_frames=s), num_heads, num_blocks, kinds) > budget_bytes:
            return s
    return None
