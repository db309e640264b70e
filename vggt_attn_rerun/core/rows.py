"""Attention rows of Q query tokens, rebuilt exactly from the q and k a module used."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vggt_attn_rerun.core.tokens import Query, TokenLayout
from vggt_attn_rerun.errors import UserError


def softmax_rows(q_rows: Tensor, k: Tensor, scale: float, bias: Tensor | None = None) -> Tensor:
    """fp32 softmax of ``scale * q_rows @ k^T + bias``: q_rows ``[H, Q, D]``, k ``[H, N, D]`` -> ``[H, Q, N]``.

    ``bias``: ``[Q, H, N]`` additive mask rows (``mask_rows``), or None.
    """
    # The model may run under autocast; our matmul must not be cast down again.
    with torch.autocast(q_rows.device.type, enabled=False):
        logits = (q_rows.float() * scale) @ k.float().transpose(-2, -1)
        if bias is not None:
            logits = logits + bias.transpose(0, 1).to(logits.device)
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
            Masked keys (StreamVGGT's later frames) have probability 0. A query that takes no
            part in a block (a patch in VGGT-Omega's register-only global blocks) has an all-zero row.

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


def mask_rows(mask: Tensor, seq: Tensor, rows: Tensor, num_heads: int) -> Tensor:
    """Additive fp32 mask rows of an attention mask, without expanding it to ``N x N``.

    Args:
        mask: additive float, or boolean (True = attend, as SDPA reads it), broadcastable to
            ``[B', H, N, N]``.
        seq, rows: ``[Q]`` sequence (batch) index and row (query token) index of each query.
    Returns:
        ``[Q, H, N]``: 0 where a key takes part, ``-inf`` (bool) or the mask's value (float) elsewhere.
    """
    while mask.ndim < 4:
        mask = mask[None]
    b_idx = seq if mask.shape[0] > 1 else torch.zeros_like(seq)
    q_idx = rows if mask.shape[2] > 1 else torch.zeros_like(rows)
    picked = mask[b_idx.to(mask.device), :, q_idx.to(mask.device)]  # [Q, H or 1, N or 1]
    if picked.dtype == torch.bool:
        picked = torch.zeros(picked.shape, device=picked.device).masked_fill(~picked, float("-inf"))
    return picked.float().expand(len(rows), num_heads, -1)


class RowCollector:
    """on_qk consumer that keeps the rows of the queries (see AttentionRows).

    Global blocks that attend among the special tokens only (VGGT-Omega's "register" blocks,
    ``S * patch_start`` tokens in frame order) are recognised by their length: the special
    queries get their rows over the special keys; patch queries take no part there and keep
    an all-zero row.
    """

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

    def _special_only(self, kind: str, q: Tensor) -> bool:
        lay = self.layout
        return kind == "global" and q.shape[0] == 1 and q.shape[2] == lay.num_frames * lay.patch_start

    def _check_shape(self, kind: str, q: Tensor) -> None:
        lay = self.layout
        expected = (lay.num_frames, lay.tokens_per_frame) if kind == "frame" else (1, lay.num_tokens)
        if (q.shape[0], q.shape[2]) != expected and not self._special_only(kind, q):
            raise UserError(
                f"{kind} attention saw {q.shape[0]} sequences of {q.shape[2]} tokens but the layout expects "
                f"{expected[0]} of {expected[1]} ({lay.num_frames} frames of {lay.grid_h}x{lay.grid_w} patches, "
                "batch size 1)"
            )

    def __call__(
        self, kind: str, block: int, q: Tensor, k: Tensor, attn: nn.Module, mask: Tensor | None = None
    ) -> None:
        self.compute(kind, block, q, k, float(attn.scale), mask)

    def compute(self, kind: str, block: int, q: Tensor, k: Tensor, scale: float, mask: Tensor | None = None) -> None:
        """Store the rows of the queries from q, k ``[B', H, N, D]`` of one attention module.

        ``mask``: the attention mask the module got (see ``mask_rows``); masked keys get probability 0.
        """
        self._check_shape(kind, q)
        out = self.probs[kind][self.blocks.index(block)]  # [Q, H, S, P]
        with torch.no_grad():
            if self._special_only(kind, q):
                self._special_rows(out, q, k, scale, mask)
            elif kind == "global":
                idx = self._globals.to(q.device)
                bias = None if mask is None else mask_rows(mask, torch.zeros_like(idx), idx, q.shape[1])
                rows = softmax_rows(q[0][:, idx], k[0], scale, bias)  # [H, Q, S*P]
                out.copy_(rows.transpose(0, 1).reshape(out.shape))
            else:
                out[torch.arange(len(self._frames)), :, self._frames] = self._frame_rows(q, k, scale, mask).to(out)
        self.seen.add((kind, block))

    def _frame_rows(self, q: Tensor, k: Tensor, scale: float, mask: Tensor | None) -> Tensor:
        """``[Q, H, P]`` rows of each query over its own frame's keys."""
        # One einsum for all queries against every frame's keys, then each query keeps its own
        # frame: S times the needed flops (tiny next to the attention itself) but no Python
        # loop over frames and no per-query copy of the keys.
        frames, local = self._frames.to(q.device), self._locals.to(q.device)
        with torch.autocast(q.device.type, enabled=False):
            logits = torch.einsum("qhd,shpd->qhsp", q[frames, :, local].float() * scale, k.float())
            logits = logits[torch.arange(len(frames), device=q.device), :, frames]  # [Q, H, P]
            if mask is not None:
                logits = logits + mask_rows(mask, frames, local, q.shape[1]).to(logits.device)
            return logits.softmax(dim=-1)

    def _special_rows(self, out: Tensor, q: Tensor, k: Tensor, scale: float, mask: Tensor | None) -> None:
        lay = self.layout
        ps = lay.patch_start
        special = torch.nonzero(self._locals < ps).flatten()
        if len(special) == 0:
            return
        idx = (self._frames[special] * ps + self._locals[special]).to(q.device)  # index in the S*ps sequence
        bias = None if mask is None else mask_rows(mask, torch.zeros_like(idx), idx, q.shape[1])
        rows = softmax_rows(q[0][:, idx], k[0], scale, bias)  # [H, Qs, S*ps]
        out[special, :, :, :ps] = rows.transpose(0, 1).reshape(len(special), -1, lay.num_frames, ps).to(out)

    def result(self) -> AttentionRows:
        missing = [(k, b) for k in self.probs for b in self.blocks if (k, b) not in self.seen]
        if missing:
            raise RuntimeError(f"the forward pass did not run these attention modules: {missing[:4]}")
        return AttentionRows(self.layout, self.queries, self.blocks, self.num_heads, self.probs)
