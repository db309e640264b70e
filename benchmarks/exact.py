"""Step 1 of the CUDA check (``run.py --gpu-check``): captured rows against an explicit recomputation,
and untouched predictions.

For chosen frame and global blocks, forward pre-hooks keep each attention module's input ``x``
and the ``pos`` the aggregator passes (by keyword). After the forward, q and k are recomputed
from ``x`` with the module's own layers (``qkv``, ``q_norm``/``k_norm``, RoPE with that ``pos``,
under the same autocast), and the query rows are rebuilt as ``softmax(q_rows k^T / sqrt(D))``
in fp32, with the scale taken from the head dimension rather than the module. The captured
rows must match these to rounding; the predictions of a forward with capture must be
bit-identical to those of a plain forward (and a second plain forward tells a
non-deterministic kernel apart from an effect of the capture).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from vggt_attn_rerun.core.capture import capture
from vggt_attn_rerun.core.introspect import _BLOCK_LISTS, KINDS, find_aggregator, model_depth, model_layout
from vggt_attn_rerun.core.tokens import Query, TokenLayout
from vggt_attn_rerun.testing.recompute import recompute_qkv

from .common import DTYPES, autocast_context, make_images, plain_forward, spread_queries

if TYPE_CHECKING:
    from .check import Ctx


def clamp_blocks(blocks: Sequence[int], depth: int) -> tuple[int, ...]:
    """``blocks`` clamped to ``0..depth-1``, sorted, without repeats (0, 12, 23 -> 0, 3 at depth 4)."""
    return tuple(sorted({min(max(int(b), 0), depth - 1) for b in blocks}))


@contextmanager
def module_inputs(model: nn.Module, blocks: Sequence[int]) -> Iterator[dict[tuple[str, int], tuple[Tensor, Any]]]:
    """While active, ``inputs[(kind, block)] = (x, pos)`` of each selected attention module's last call."""
    agg = find_aggregator(model)
    inputs: dict[tuple[str, int], tuple[Tensor, Any]] = {}
    handles = []

    def keep(kind: str, block: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs["x"]
            inputs[(kind, block)] = (x, kwargs.get("pos", args[1] if len(args) > 1 else None))

        return hook

    try:
        for kind in KINDS:
            for b in blocks:
                attn = getattr(agg, _BLOCK_LISTS[kind])[b].attn
                handles.append(attn.register_forward_pre_hook(keep(kind, b), with_kwargs=True))
        yield inputs
    finally:
        for h in handles:
            h.remove()


def grid_positions(layout: TokenLayout) -> Tensor:
    """``[P, 2]`` (row, col) positions VGGT gives one frame: 0 for special tokens, patch (row + 1, col + 1)."""
    rows = torch.arange(layout.grid_h).repeat_interleave(layout.grid_w) + 1
    cols = torch.arange(layout.grid_w).repeat(layout.grid_h) + 1
    special = torch.zeros(layout.patch_start, 2, dtype=torch.long)
    return torch.cat([special, torch.stack([rows, cols], dim=-1)])


def recompute_rows(
    attn: nn.Module,
    x: Tensor,
    pos: Tensor | None,
    kind: str,
    layout: TokenLayout,
    queries: Sequence[Query],
    autocast_dtype: torch.dtype | None,
) -> Tensor:
    """``[Q, H, S, P]`` fp32 rows of ``queries``, recomputed from the module input ``x`` ``[B', N, C]``.

    Frame attention: each query's row covers its own frame, other frames are 0 (as in AttentionRows).
    """
    with torch.no_grad(), autocast_context(x.device, autocast_dtype):
        q, k, _ = recompute_qkv(attn, x, pos)  # [B', H, N, D]
    q, k = q.float(), k.float()
    scale = q.shape[-1] ** -0.5
    s, p = layout.num_frames, layout.tokens_per_frame
    out = torch.zeros(len(queries), q.shape[1], s, p)
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        for i, qq in enumerate(queries):
            if kind == "global":
                logits = (q[0, :, qq.token(layout)] * scale)[:, None] @ k[0].transpose(-2, -1)  # [H, 1, S*P]
                out[i] = torch.softmax(logits[:, 0], dim=-1).reshape(-1, s, p).cpu()
            else:
                logits = (q[qq.frame, :, qq.local] * scale)[:, None] @ k[qq.frame].transpose(-2, -1)  # [H, 1, P]
                out[i, :, qq.frame] = torch.softmax(logits[:, 0], dim=-1).cpu()
    return out


def bit_identical(a: Any, b: Any) -> bool:
    """Same structure and, for tensors, the same bytes (NaNs in the same places count as equal)."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        return torch.equal(a.reshape(-1).contiguous().view(torch.uint8), b.reshape(-1).contiguous().view(torch.uint8))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(bit_identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(bit_identical(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def max_abs_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Largest ``|a - b|`` over the floating-point tensors both prediction dicts hold (NaN-aware)."""
    worst = 0.0
    for key, t in a.items():
        u = b.get(key)
        if isinstance(t, Tensor) and isinstance(u, Tensor) and t.is_floating_point() and t.shape == u.shape:
            d = (t.float() - u.float()).abs().nan_to_num(nan=0.0)
            worst = max(worst, float(d.max()) if d.numel() else 0.0)
    return worst


def exactness_run(
    model: nn.Module,
    images: Tensor,
    layout: TokenLayout,
    queries: Sequence[Query],
    blocks: Sequence[int],
    autocast_dtype: torch.dtype | None,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """One dtype: errors per kind and block, prediction identity; also the captured rows by ``kind/block``."""
    agg = find_aggregator(model)
    plain = plain_forward(model, images, autocast_dtype)
    with module_inputs(model, blocks) as inputs:
        res = capture(model, images, list(queries), blocks=blocks, kinds=KINDS, autocast_dtype=autocast_dtype)
    again = plain_forward(model, images, autocast_dtype)
    grid = grid_positions(layout)
    per_block, rows = [], {}
    for kind in KINDS:
        for li, b in enumerate(blocks):
            x, pos = inputs[(kind, b)]
            attn = getattr(agg, _BLOCK_LISTS[kind])[b].attn
            expected = recompute_rows(attn, x, pos, kind, layout, queries, autocast_dtype)
            got = res.rows.probs[kind][li].float()  # [Q, H, S, P]
            rows[f"{kind}/{b}"] = got
            per_block.append(
                {
                    "kind": kind,
                    "block": b,
                    "max_abs_error": float((got - expected).abs().max()),
                    "row_sum_error": float((got.sum(dim=(-1, -2)) - 1).abs().max()),
                    "pos_given": pos is not None,
                    "pos_is_grid": pos is not None
                    and bool(torch.equal(pos.reshape(-1, layout.tokens_per_frame, 2)[0].long().cpu(), grid)),
                }
            )
            del inputs[(kind, b)]
    result = {
        "max_abs_error": max(r["max_abs_error"] for r in per_block),
        "blocks": per_block,
        "predictions_bit_identical": bit_identical(plain, res.predictions),
        "plain_forwards_bit_identical": bit_identical(plain, again),
        "predictions_max_abs_difference": max_abs_difference(plain, res.predictions),
    }
    return result, rows


def rows_difference(a: dict[str, Tensor], b: dict[str, Tensor]) -> dict[str, float]:
    """Max and mean ``|a - b|`` over all rows two runs captured (e.g. bf16 against fp32)."""
    diffs = [(a[key] - b[key]).abs() for key in a if key in b]
    if not diffs:
        return {}
    return {
        "max_abs": max(float(d.max()) for d in diffs),
        "mean_abs": float(torch.cat([d.flatten() for d in diffs]).mean()),
        "max_row_value": max(float(a[key].max()) for key in a if key in b),
    }


def step_exact(ctx: Ctx, entry: dict[str, Any]) -> None:
    """Step 1: ``exactness_run`` per dtype, then each low-precision dtype's rows against fp32's."""
    s, model = ctx.settings, ctx.model
    (h, w), frames = s.size, s.exact_frames
    blocks = clamp_blocks(s.exact_blocks, model_depth(model))
    layout = model_layout(model, frames, h, w)
    # patches spread over the frames, plus the last frame's camera token (a special-token row)
    queries = [
        *spread_queries(layout, s.exact_queries),
        Query.from_token(layout, (frames - 1) * layout.tokens_per_frame),
    ]
    images = make_images(frames, h, w, ctx.device)
    entry.update(
        frames=frames, size=[h, w], tokens=layout.num_tokens, blocks=list(blocks), queries=len(queries), dtypes={}
    )
    captured: dict[str, dict[str, Tensor]] = {}
    for name in s.exact_dtypes:
        ctx.log(f"[exact] {name}: S={frames} {h}x{w}, blocks {list(blocks)}, {len(queries)} queries")
        t0 = time.perf_counter()
        result, captured[name] = exactness_run(model, images, layout, queries, blocks, DTYPES[name])
        entry["dtypes"][name] = result | {"seconds": time.perf_counter() - t0}
        ctx.save()
    for name in captured:
        if name != "float32" and "float32" in captured:
            entry["dtypes"][name]["rows_vs_float32"] = rows_difference(captured[name], captured["float32"])
