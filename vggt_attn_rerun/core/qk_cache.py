"""Keep every block's q and k so that new queries need no second forward pass."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vggt_attn_rerun.core.introspect import KINDS
from vggt_attn_rerun.core.rows import AttentionRows, RowCollector
from vggt_attn_rerun.core.tokens import Query, TokenLayout
from vggt_attn_rerun.errors import UserError


class QKCache:
    """on_qk consumer that keeps every block's q and k, so new queries need no second forward pass.

    Memory: ``2 * P * C`` values per frame per (kind, block), stored in the dtype the module used
    (rows from the cache are then bit-identical to a fresh capture's). VGGT-1B (C = 1024) at
    518x518 (P = 1374) in fp32: 11.3 MB per frame per (kind, block), 540 MB per frame for all
    24 blocks x 2 kinds; half that for a bf16 model. Fewer blocks or one kind shrink it.
    """

    def __init__(self, store_device: str | torch.device = "cpu") -> None:
        self.store_device = store_device
        self.qk: dict[tuple[str, int], tuple[Tensor, Tensor]] = {}
        self.scale: dict[tuple[str, int], float] = {}

    def __call__(self, kind: str, block: int, q: Tensor, k: Tensor, attn: nn.Module) -> None:
        def keep(t: Tensor) -> Tensor:
            return t.detach().to(self.store_device, copy=True)

        self.qk[(kind, block)] = (keep(q), keep(k))
        self.scale[(kind, block)] = float(attn.scale)

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
            collector.compute(kind, block, q, k, self.scale[(kind, block)])
        return collector.result()


