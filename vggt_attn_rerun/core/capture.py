"""Capture the attention of chosen query tokens during one VGGT forward pass.

How: hooks read the q and k each aggregator attention module really uses, right where the
module computes them (outputs of ``q_norm``/``k_norm`` and of the shared ``rope``, which gets
``pos`` by keyword from ``Block.forward``). When the module returns, its query rows are
rebuilt as ``softmax(scale * q_rows @ k^T)`` in fp32, stored, and q/k are released. So:

- exact: the same q/k (norms and RoPE included) and scale as the module, softmax in fp32;
- light: one ``[Q, H, N]`` row block per module, never an ``N x N`` matrix, and no second
  qkv projection; the fused SDPA path of the model stays on;
- faithful: hooks only read; they are removed on exit, also when the forward raises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vggt_attn_rerun.core.hooks import qk_hooks
from vggt_attn_rerun.core.images import batched_images
from vggt_attn_rerun.core.introspect import KINDS, check_blocks, check_kinds, model_heads, model_layout
from vggt_attn_rerun.core.qk_cache import QKCache
from vggt_attn_rerun.core.rows import AttentionRows, RowCollector
from vggt_attn_rerun.core.tokens import Query, TokenLayout
from vggt_attn_rerun.errors import UserError


@dataclass
class CaptureResult:
    """What one forward pass with capture returns.

    ``qk_cache`` is set when capture ran with ``keep_qk=True``: ``qk_cache.rows(layout, queries,
    rows.num_heads)`` gives the rows of any other query without running the model again.
    """

    predictions: dict[str, Tensor]
    rows: AttentionRows
    layout: TokenLayout
    qk_cache: QKCache | None = None


def capture(
    model: nn.Module,
    images: Tensor,
    queries: Sequence[Query] | Callable[[TokenLayout], Sequence[Query]],
    blocks: Sequence[int] | None = None,
    kinds: Sequence[str] = KINDS,
    autocast_dtype: torch.dtype | None = None,
    store_dtype: torch.dtype = torch.float32,
    keep_qk: bool = False,
) -> CaptureResult:
    """Run ``model(images)`` once and capture the attention rows of ``queries``.

    Args:
        model: VGGT or a model with its module tree (e.g. ``testing.tiny_vggt()``), in eval mode.
        images: ``[S, 3, H, W]`` or ``[1, S, 3, H, W]`` in [0, 1], H and W multiples of the patch size.
        queries: Query objects, or a function of the layout that returns them.
        blocks: block indices (default all); kinds: "frame" and/or "global".
        autocast_dtype: run the forward under ``torch.autocast(device, dtype)`` (e.g. bf16);
            attention rows are still computed in fp32 from the q/k the model used.
        store_dtype: dtype of the stored rows (fp32 default; fp16 halves their memory).
        keep_qk: also keep every block's q/k (see QKCache for its memory) so that other
            queries can be answered later without a forward pass.

    Returns:
        CaptureResult with the model's predictions (untouched) and AttentionRows.
    """
    images = batched_images(images)
    layout = model_layout(model, images.shape[1], images.shape[3], images.shape[4])
    qs = list(queries(layout) if callable(queries) else queries)
    if not qs:
        raise UserError("no queries given: pass at least one token, patch or pixel to query")
    for qq in qs:
        qq.token(layout)  # validates frame and index against this layout
    kinds, blocks = check_kinds(kinds), check_blocks(model, blocks)
    collector = RowCollector(layout, qs, blocks, kinds, model_heads(model), store_dtype=store_dtype)
    cache = QKCache() if keep_qk else None

    def on_qk(kind: str, block: int, q: Tensor, k: Tensor, attn: nn.Module) -> None:
        collector(kind, block, q, k, attn)
        if cache is not None:
            cache(kind, block, q, k, attn)

    device = images.device
    with torch.no_grad(), qk_hooks(model, blocks, kinds, on_qk):
        if autocast_dtype is not None:
            with torch.autocast(device.type, dtype=autocast_dtype):
                predictions = model(images)
        else:
            predictions = model(images)
    return CaptureResult(predictions, collector.result(), layout, cache)


