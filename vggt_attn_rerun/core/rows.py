"""Attention rows of Q query tokens, rebuilt exactly from the q and k a module used."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vggt_attn_rerun.core.tokens import Query, TokenLayout
from vggt_attn_rerun.errors import UserError


def attention_logits_rows(q_rows: Tensor, k: Tensor, scale: float) -> Tensor:
    """fp32 softmax of ``scale * q_rows @ k^T``: q_rows ``[H, Q, D]``, k ``[H, N, D]`` -> ``[H, Q, N]``."""
    # The model may run under autocast; our matmul must not be cast down again.
    with torch.autocast(q_rows.device.type, enabled=False):
        logits = (q_rows.float() * scale) @ k.float().transpose(-2, -1)
        return logits.softmax(dim=-1)


# --------------------------------------------------------------------------------------------
# Rows of Q queries
# --------------------------------------------------------------------------------------------


@dataclass
class AttentionRows:
    """The attention rows of Q query tokens, per kind, block and head.

    Attributes:
        layout: the run's TokenLayout (S frames, gh x gw patches, special tokens).
        queries: the Q queries, in order.
        blocks: the captured block indices, in order (index ``l`` of the first axis below).
        num_heads: H.
        probs: per kind, ``[L, Q, H, S, P]`` raw probabilities over all keys in token order
            (each frame: camera, registers, patches). Each ``[l, q, h]`` sums to 1. For frame
            attention only the query's own frame is non-zero (frames attend within themselves).

    Views (no copies): ``patches(kind)`` ``[L, Q, H, S, gh, gw]`` and ``special(kind)``
    ``[L, Q, H, S, 1 + R]``. Renormalizing over patches is explicit: ``patches(kind, renorm=True)``.
    """

    layout: TokenLayout
    queries: tuple[Query, ...]
    blocks: tuple[int, ...]
    num_heads: int
    probs: dict[str, Tensor]

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.probs)

    def block_index(self, block: int) -> int:
        try:
            return self.blocks.index(block)
        except ValueError:
            raise UserError(f"block {block} was not captured: captured blocks are {list(self.blocks)}") from None

    def _probs(self, kind: str) -> Tensor:
        if kind not in self.probs:
            raise UserError(f"attention kind {kind!r} was not captured: captured kinds are {list(self.probs)}")
        return self.probs[kind]

    def patches(self, kind: str, renorm: bool = False) -> Tensor:
        """``[L, Q, H, S, gh, gw]``: probability on each patch key (renorm: divided by the patch mass)."""
        lay = self.layout
        p = self._probs(kind)[..., lay.patch_start :]
        if renorm:
            p = p / p.sum(dim=(-1, -2), keepdim=True).clamp_min(1e-30)
        return p.reshape(*p.shape[:-1], lay.grid_h, lay.grid_w)

    def special(self, kind: str) -> Tensor:
        """``[L, Q, H, S, 1 + R]``: probability on each frame's camera and register tokens."""
        return self._probs(kind)[..., : self.layout.patch_start]

    def frame_mass(self, kind: str) -> Tensor:
        """``[L, Q, H, S]``: total probability on each frame's tokens."""
        return self._probs(kind).sum(-1)

    def get(self, kind: str, block: int) -> Tensor:
        """``[Q, H, S, gh, gw]`` patch probabilities of one block."""
        return self.patches(kind)[self.block_index(block)]


class RowCollector:
    """on_qk consumer that keeps the rows of the queries (see AttentionRows)."""

    def __init__(self, layout: TokenLayout, queries: Sequence[Query], blocks: Sequence[int],
                 kinds: Sequence[str], num_heads: int, store_device: str | torch.device = "cpu",
                 store_dtype: torch.dtype = torch.float32) -> None:  # fmt: skip
        self.layout = layout
        self.queries = tuple(queries)
        self.blocks = tuple(blocks)
        self.num_heads = num_heads
        lay, q = layout, len(self.queries)
        self.probs = {
            kind: torch.zeros(
                len(self.blocks),
                q,
                num_heads,
                lay.num_frames,
                lay.tokens_per_frame,
                dtype=store_dtype,
                device=store_device,
            )  # fmt: skip
            for kind in kinds
        }
        self.seen: set[tuple[str, int]] = set()
        self._frames = torch.tensor([qq.frame for qq in self.queries], dtype=torch.long)
        self._locals = torch.tensor([qq.local for qq in self.queries], dtype=torch.long)
        self._globals = torch.tensor([qq.token(layout) for qq in self.queries], dtype=torch.long)

    def _check_shape(self, kind: str, q: Tensor) -> None:
        lay = self.layout
        expected = (lay.num_frames, lay.tokens_per_frame) if kind == "frame" else (1, lay.num_tokens)
        if (q.shape[0], q.shape[2]) != expected:
            raise UserError(
                f"{kind} attention saw {q.shape[0]} sequences of {q.shape[2]} tokens but the layout expects "
                f"{expected[0]} of {expected[1]} ({lay.num_frames} frames of {lay.grid_h}x{lay.grid_w} patches, "
                "batch size 1)"
            )

    def __call__(self, kind: str, block: int, q: Tensor, k: Tensor, attn: nn.Module) -> None:
        self.compute(kind, block, q, k, float(attn.scale))

    def compute(self, kind: str, block: int, q: Tensor, k: Tensor, scale: float) -> None:
        """Store the rows of the queries from q, k ``[B', H, N, D]`` of one attention module."""
        self._check_shape(kind, q)
        out = self.probs[kind][self.blocks.index(block)]  # [Q, H, S, P]
        with torch.no_grad():
            if kind == "global":
                rows = attention_logits_rows(q[0][:, self._globals.to(q.device)], k[0], scale)  # [H, Q, S*P]
                out.copy_(rows.transpose(0, 1).reshape(out.shape))
            else:
                # One einsum for all queries against every frame's keys, then each query keeps its own
                # frame: S times the needed flops (tiny next to the attention itself) but no Python
                # loop over frames and no per-query copy of the keys.
                frames, local = self._frames.to(q.device), self._locals.to(q.device)
                with torch.autocast(q.device.type, enabled=False):
                    logits = torch.einsum("qhd,shpd->qhsp", q[frames, :, local].float() * scale, k.float())
                    rows = logits[torch.arange(len(frames), device=q.device), :, frames].softmax(dim=-1)  # [Q, H, P]
                out[torch.arange(len(frames)), :, self._frames] = rows.to(out)
        self.seen.add((kind, block))

    def result(self) -> AttentionRows:
        missing = [(k, b) for k in self.probs for b in self.blocks if (k, b) not in self.seen]
        if missing:
            raise RuntimeError(f"the forward pass did not run these attention modules: {missing[:4]}")
        return AttentionRows(self.layout, self.queries, self.blocks, self.num_heads, self.probs)


