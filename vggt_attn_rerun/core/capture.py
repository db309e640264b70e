"""Capture the attention of chosen query tokens during one forward pass of VGGT or a relative.

``capture`` runs the model once under ``core.hooks.QKHooks`` (which hand over the q, k and
mask each selected attention module really used: see its docstring for how) and feeds them to
``core.rows.RowCollector``, which keeps only the query rows ``softmax(scale * q_rows @ k^T + mask)``
in fp32, ``[Q, H, N]`` per module, never an ``N x N`` matrix. The model's predictions are
returned untouched; ``keep_qk`` also keeps q/k (``core.qk_cache``) for later queries.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vggt_attn_rerun.core.adapters import ModelAdapter, adapter_for
from vggt_attn_rerun.core.hooks import QKHooks
from vggt_attn_rerun.core.images import ImagesLike, LoadedImages, as_loaded_images, batched_images
from vggt_attn_rerun.core.introspect import KINDS, check_blocks, check_kinds, model_heads, model_layout
from vggt_attn_rerun.core.loading import ModelLabel, model_device, model_label
from vggt_attn_rerun.core.qk_cache import QKCache
from vggt_attn_rerun.core.rows import AttentionRows, RowCollector
from vggt_attn_rerun.core.tokens import QUERY_SYNTAX, PixelMap, Query, TokenLayout, parse_query
from vggt_attn_rerun.errors import UserError

#: Query objects, query strings (``tokens.QUERY_SYNTAX``) or a function of the layout that returns Queries
QueriesLike = Sequence[Query | str] | Callable[[TokenLayout], Sequence[Query]]


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
    #: what the model is when it is not a trained one (``core.loading.model_label``), shown by recordings
    model_label: ModelLabel | None = None


def _queries(
    queries: QueriesLike,
    layout: TokenLayout,
    pixel_maps: Sequence[PixelMap] | None,
) -> list[Query]:
    """Query objects, query strings (tokens.QUERY_SYNTAX) or a function of the layout -> Queries."""
    if callable(queries):
        queries = queries(layout)
    if isinstance(queries, (str, Query)):  # one query given alone
        queries = [queries]
    try:
        items = list(queries)
    except TypeError:
        raise UserError(f"queries must be a list of Query objects or query strings, got {queries!r:.60}") from None
    out = []
    for q in items:
        if isinstance(q, str):
            q = parse_query(q, layout, pixel_maps)
        elif not isinstance(q, Query):
            raise UserError(f"query {q!r:.60} is a {type(q).__name__}: valid are Query objects or {QUERY_SYNTAX}")
        q.token(layout)  # validates frame and index against this layout
        out.append(q)
    if not out:
        raise UserError("no queries given: pass at least one token, patch or pixel to query")
    return out


def capture(
    model: nn.Module,
    images: ImagesLike,
    queries: QueriesLike,
    blocks: Sequence[int] | None = None,
    kinds: str | Sequence[str] = KINDS,
    autocast_dtype: torch.dtype | None = None,
    store_dtype: torch.dtype = torch.float32,
    keep_qk: bool = False,
    on_block: Callable[[str, int], None] | None = None,
    arch: str | ModelAdapter | None = None,
) -> CaptureResult:
    """Run the model once (``ModelAdapter.run``) and capture the attention rows of ``queries``.

    Args:
        model: VGGT, a relative with an adapter (pi3, StreamVGGT, VGGT-Omega), or a model with
            one's module tree (e.g. ``testing.tiny_vggt()``), in eval mode.
        images: ``[S, 3, H, W]`` or ``[1, S, 3, H, W]`` in [0, 1], H and W multiples of the patch
            size, LoadedImages (``load_images``), or image files / folders / globs (loaded with
            ``load_images``'s defaults). One scene: a batch of several is a UserError. They are
            moved to the model's device.
        queries: Query objects and/or query strings (``"0:p1,1"``, ``"1:camera"``, ``"0:120,80"``;
            see tokens.QUERY_SYNTAX: pixels are of the original photos when ``images`` are
            LoadedImages loaded from files, else of the model image), or a function of the layout
            that returns Query objects.
        blocks: block indices (default all); kinds: "frame" and/or "global" (one kind may be
            given as a string).
        autocast_dtype: run the forward under ``torch.autocast(device, dtype)`` (e.g. bf16);
            attention rows are still computed in fp32 from the q/k the model used.
        store_dtype: dtype of the stored rows (fp32 default; fp16 halves their memory).
        keep_qk: also keep every block's q/k (``QKCache``: VGGT-1B at 518x518 costs 540 MB per
            frame in fp32) so that other queries (``interactive.QuerySession``) can be answered
            later without a forward pass.
        on_block: called as ``on_block(kind, block)`` when a captured attention module has run
            (progress reporting: ``len(blocks) * len(kinds)`` calls per forward pass).
        arch: the model's adapter (``core.adapters``: vggt, pi3, streamvggt, vggt-omega), by name or
            as a ModelAdapter already resolved for this model; default:
            chosen from the model's type.

    Returns:
        CaptureResult with the model's predictions (untouched) and AttentionRows.
    """
    if not isinstance(images, (Tensor, LoadedImages)):
        images = as_loaded_images(images)
    pixel_maps = images.transforms if isinstance(images, LoadedImages) and images.paths is not None else None
    images = batched_images(images).to(model_device(model))
    adapter = adapter_for(model, arch)
    layout = model_layout(model, images.shape[1], images.shape[3], images.shape[4], adapter)
    qs = _queries(queries, layout, pixel_maps)
    kinds, blocks = check_kinds(kinds), check_blocks(model, blocks, adapter)
    collector = RowCollector(layout, qs, blocks, kinds, model_heads(model, adapter), store_dtype=store_dtype)
    cache = QKCache() if keep_qk else None

    def on_qk(kind: str, block: int, q: Tensor, k: Tensor, attn: nn.Module, mask: Tensor | None = None) -> None:
        collector(kind, block, q, k, attn, mask)
        if cache is not None:
            cache(kind, block, q, k, attn, mask)
        if on_block is not None:
            on_block(kind, block)

    device = images.device
    with torch.no_grad(), QKHooks(model, blocks, kinds, on_qk, adapter), warnings.catch_warnings():
        # vggt's heads call the deprecated torch.cuda.amp.autocast(enabled=False) on every device:
        # the FutureWarning is about their code, and on a CPU it is noise.
        warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.autocast.*", category=FutureWarning)
        if autocast_dtype is not None:
            with torch.autocast(device.type, dtype=autocast_dtype):
                predictions = adapter.run(model, images)
        else:
            predictions = adapter.run(model, images)
    return CaptureResult(predictions, collector.result(), layout, cache, model_label(model))
