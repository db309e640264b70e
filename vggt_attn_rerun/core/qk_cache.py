"""Keep every block's q and k so that new queries need no second forward pass, and what that costs.

Memory: q and k of every token are kept (any token may be asked for later), ``2 * P * C`` values
per frame per (kind, block), ``P`` tokens per frame of ``C`` channels (all heads together), in the
dtype the module used: ``qk_cache_bytes_per_frame``. Fewer blocks or one kind shrink it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vggt_attn_rerun.core.introspect import KINDS, model_embed_dim
from vggt_attn_rerun.core.rows import AttentionRows, RowCollector
from vggt_attn_rerun.core.tokens import Query, TokenLayout
from vggt_attn_rerun.errors import UserError


class QKCache:
    """on_qk consumer that keeps every block's q and k, so new queries need no second forward pass.

    q and k are stored in the dtype the module used, so rows from the cache are bit-identical to
    a fresh capture's. Memory: ``qk_cache_bytes_per_frame`` (540 MB per frame for VGGT-1B at
    518x518 in fp32, all 24 blocks x 2 kinds; half that for a bf16 model).
    """

    def __init__(self, store_device: str | torch.device = "cpu") -> None:
        self.store_device = store_device
        self.qk: dict[tuple[str, int], tuple[Tensor, Tensor]] = {}
        self.scale: dict[tuple[str, int], float] = {}
        # The attention mask a block got (StreamVGGT): kept as the model made it, no copy.
        self.mask: dict[tuple[str, int], Tensor] = {}

    def __call__(
        self, kind: str, block: int, q: Tensor, k: Tensor, attn: nn.Module, mask: Tensor | None = None
    ) -> None:
        def keep(t: Tensor) -> Tensor:
            return t.detach().to(self.store_device, copy=True)

        self.qk[(kind, block)] = (keep(q), keep(k))
        self.scale[(kind, block)] = float(attn.scale)
        if mask is not None:
            self.mask[(kind, block)] = mask.detach()

    def nbytes(self) -> int:
        return sum(q.nbytes + k.nbytes for q, k in self.qk.values())

    def rows(self, layout: TokenLayout, queries: Sequence[Query], num_heads: int) -> AttentionRows:
        """Attention rows of new queries from the cached q/k (no forward pass)."""
        if not self.qk:
            raise UserError("the q/k cache is empty: capture with keep_qk=True to query again without a forward pass")
        blocks = sorted({b for _, b in self.qk})
        kinds = [k for k in KINDS if any(kk == k for kk, _ in self.qk)]
        for qq in queries:
            qq.token(layout)
        collector = RowCollector(layout, queries, blocks, kinds, num_heads)
        for (kind, block), (q, k) in self.qk.items():
            collector.compute(kind, block, q, k, self.scale[(kind, block)], self.mask.get((kind, block)))
        return collector.result()


def qk_cache_bytes_per_frame(
    layout: TokenLayout, embed_dim: int, num_blocks: int, num_kinds: int = 2, bytes_per_value: int = 4
) -> int:
    """Bytes the q/k cache costs per frame: ``2 * P * C * bytes * blocks * kinds``.

    VGGT-1B (C = 1024, 24 blocks, 2 kinds, fp32): 518x518 input (P = 1374) -> 540 MB per frame
    (11.3 MB per (kind, block)); 518x392 (P = 1041) -> 409 MB per frame.
    """
    return 2 * layout.tokens_per_frame * int(embed_dim) * int(bytes_per_value) * int(num_blocks) * int(num_kinds)


def model_qk_cache_bytes(model: nn.Module, layout: TokenLayout, num_blocks: int, num_kinds: int) -> int:
    """Bytes ``capture(model, ..., keep_qk=True)`` keeps for all frames of ``layout`` (fp32 cache)."""
    return layout.num_frames * qk_cache_bytes_per_frame(layout, model_embed_dim(model), num_blocks, num_kinds)
