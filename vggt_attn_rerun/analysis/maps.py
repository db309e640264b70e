"""The numbers behind the pictures (numpy, no Rerun): colour scales, u8 maps, masses, ray targets.

Scales (``scale``), for a query's patch maps ``p`` (raw probabilities on patch keys):

- ``"map"`` (default): one scale per (block, head) map, shared by all views of that map:
  ``vmax = max over views and patches of p``. Every block and head fills the colour range, and
  the views of one map stay comparable.
- ``"global"``: one scale for every block, head and view of the query and kind.
- ``"view"``: one scale per map AND view (each picture fills the range; views do not compare).

The query's own key is always left out of vmax (a token's attention to itself is often far above
the rest and would wash the other patches out; it may saturate). ``clip_percentile`` < 100 takes
that percentile of the same values instead of their maximum (values above saturate), which reads
better on diffuse maps. Quantization: ``u8 = round(255 * clip(p / vmax, 0, 1) ** gamma)``;
``gamma`` < 1 lifts low values. ``dequantize`` inverts it (the hover labels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vggt_attn_rerun.analysis.consistency import Consistency, geometric_consistency
from vggt_attn_rerun.analysis.reference import Geometry
from vggt_attn_rerun.analysis.summaries import Summary, summarize
from vggt_attn_rerun.core.capture import CaptureResult
from vggt_attn_rerun.core.images import FrameTransform
from vggt_attn_rerun.errors import UserError

SCALES = ("map", "global", "view")
#: what each scale's vmax is, in words (the recording's notes say it): the maximum, or the
#: ``clip_percentile`` when below 100, of the patch probabilities without the query's own key
SCALE_MEANING = {
    "map": "the maximum over all views of this (block, head) map, shared by its views (the views compare)",
    "global": "the maximum over every block, head and view of the query and kind",
    "view": "each view's own maximum (colors do not compare across views)",
}
MIN_VMAX = 1e-12  # a map no key of which got attention (frame attention elsewhere) stays 0


def check_scale(scale: str) -> str:
    """The scale name, or UserError naming the valid ones."""
    if scale not in SCALES:
        raise UserError(f"unknown scale {scale!r}: valid scales are {', '.join(SCALES)}")
    return scale


def map_vmax(
    patches: np.ndarray,
    scale: str = "map",
    self_patch: tuple[int, int, int] | None = None,
    clip_percentile: float = 100.0,
) -> np.ndarray:
    """Maps ``[..., S, gh, gw]`` -> their colour scales ``[..., S]`` (see the module docstring).

    The leading axes index maps (e.g. ``[L, H]`` or ``[L]``); ``self_patch`` (frame, row, col) is
    the query's own key, left out.
    """
    check_scale(scale)
    x = np.array(patches, np.float64)
    if self_patch is not None:
        x[..., self_patch[0], self_patch[1], self_patch[2]] = np.nan
    lead, s = x.shape[:-3], x.shape[-3]
    if scale == "view":
        groups = x.reshape(*lead, s, -1)  # [..., S, n]
    elif scale == "map":
        groups = x.reshape(*lead, 1, -1)  # [..., 1, n]
    else:
        groups = x.reshape(1, -1)
    if clip_percentile >= 100.0:
        top = np.nanmax(groups, axis=-1)
    else:
        top = np.nanpercentile(groups, clip_percentile, axis=-1)
    top = np.where(np.isfinite(top), top, 0.0)
    return np.maximum(np.broadcast_to(top, (*lead, s)), MIN_VMAX)


def quantize(p: np.ndarray, vmax: np.ndarray | float, gamma: float = 1.0) -> np.ndarray:
    """``u8 = round(255 * clip(p / vmax, 0, 1) ** gamma)`` in float64, rounding half to even.

    ``vmax`` broadcasts against ``p`` (e.g. ``[..., S, 1, 1]`` for maps ``[..., S, gh, gw]``).
    """
    x = np.clip(np.asarray(p, np.float64) / vmax, 0.0, 1.0)
    return np.rint(255.0 * (x if gamma == 1.0 else x**gamma)).astype(np.uint8)


def dequantize(v: np.ndarray | int, vmax: float, gamma: float = 1.0) -> np.ndarray:
    """The probability a u8 value stands for: ``vmax * (v / 255) ** (1 / gamma)``."""
    return vmax * (np.asarray(v, np.float64) / 255.0) ** (1.0 / gamma)


def focus_heads(x: np.ndarray, head: int | None) -> np.ndarray:
    """``[L, H, ...]`` -> ``[L, ...]``: one head, or the head mean."""
    return x.mean(axis=1) if head is None else x[:, head]


def masses(probs: np.ndarray, patch_start: int, num_cameras: int = 1) -> np.ndarray:
    """probs ``[..., S, P]`` -> ``[..., S + C + 1]``: patch mass per view, then the camera (C =
    ``num_cameras``: 1 for VGGT, 0 for models without a camera token such as pi3) and registers.

    The camera and register columns sum over all frames' special tokens (per frame: the first
    ``num_cameras`` tokens, then registers up to ``patch_start``), so the values sum to 1 for a
    full attention row.
    """
    views = probs[..., patch_start:].sum(-1)
    cameras = [probs[..., :num_cameras].sum((-1, -2))[..., None]] if num_cameras else []
    registers = probs[..., num_cameras:patch_start].sum((-1, -2))[..., None]
    return np.concatenate([views, *cameras, registers], axis=-1)


def ray_targets(values: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest of each row among the candidates: values ``[T, N]`` -> indices ``[T, k']``.

    ``candidates`` ``[N]`` bool (e.g. patches of the other views that have a 3D point);
    ``k' = min(k, candidates.sum())``; each row's indices are in decreasing order of value (ties:
    lower index first).
    """
    idx = np.flatnonzero(candidates)
    k = min(int(k), idx.size)
    if k == 0:
        return np.zeros((values.shape[0], 0), np.int64)
    sub = np.asarray(values)[:, idx]
    order = np.argsort(-sub, axis=1, kind="stable")[:, :k]
    return idx[order]


#: a peak is at least this value on the u8 scale (half the map's scale: hot on screen)
PEAK_MIN_U8 = 128


def peak_patches(p: np.ndarray, u8: np.ndarray, k: int, self_patch: tuple[int, int, int] | None = None
                 ) -> np.ndarray:  # fmt: skip
    """The ``k`` hottest patches of each view: ``p``, ``u8`` ``[T, S, gh, gw]`` -> bool ``[T, S, gh, gw]``.

    Per map and view, the (at most) ``k`` largest probabilities among the patches that are hot
    on screen (``u8 >= PEAK_MIN_U8``) and above the view's mean probability, the query's own
    patch (``self_patch``: frame, row, col) left out. A flat view (uniform attention) has none:
    no patch is above its mean. Ties: the lower patch index first.
    """
    p = np.asarray(p, np.float64)
    t, s, gh, gw = p.shape
    flat = p.reshape(t, s, -1)
    ok = (np.asarray(u8).reshape(t, s, -1) >= PEAK_MIN_U8) & (flat > flat.mean(-1, keepdims=True))
    if self_patch is not None:
        f, r, c = self_patch
        ok[:, f, r * gw + c] = False
    out = np.zeros_like(ok)
    k = min(int(k), gh * gw)
    if k > 0:
        order = np.argsort(-np.where(ok, flat, -np.inf), axis=-1, kind="stable")[..., :k]  # [T, S, k]
        np.put_along_axis(out, order, np.take_along_axis(ok, order, axis=-1), axis=-1)
    return out.reshape(t, s, gh, gw)


@dataclass
class QueryMaps:
    """The maps of one query and kind, as u8 with their scales (shapes in the field comments)."""

    all_u8: np.ndarray  # [L, H, S, gh, gw]: every map (the tensor, the head grid)
    all_vmax: np.ndarray  # [L, H, S]
    block_p: np.ndarray  # [L, S, gh, gw] float: the focus head (or head mean) at each block
    block_u8: np.ndarray  # [L, S, gh, gw]
    block_vmax: np.ndarray  # [L, S]
    head_p: np.ndarray  # [H, S, gh, gw] float: every head at the focus block
    head_u8: np.ndarray  # [H, S, gh, gw]
    head_vmax: np.ndarray  # [H, S]


def query_maps(
    patches: np.ndarray,
    focus_head: int | None,
    focus_block: int,
    scale: str = "map",
    gamma: float = 1.0,
    clip_percentile: float = 100.0,
    self_patch: tuple[int, int, int] | None = None,
) -> QueryMaps:
    """patches ``[L, H, S, gh, gw]`` -> QueryMaps. ``focus_block``: an index into the L blocks.

    With ``scale="global"`` every map shares the one scale of all blocks, heads and views (head
    means never exceed it); otherwise each map (the head-mean maps too) gets its own.
    """
    p = np.asarray(patches, np.float64)
    all_vmax = map_vmax(p, scale, self_patch, clip_percentile)  # [L, H, S]
    block_p = focus_heads(p, focus_head)
    if scale == "global":
        block_vmax = np.broadcast_to(all_vmax[:, 0], block_p.shape[:2]).copy()
    else:
        block_vmax = map_vmax(block_p, scale, self_patch, clip_percentile)  # [L, S]
    head_p = p[focus_block]

    def u8(x: np.ndarray, vmax: np.ndarray) -> np.ndarray:
        return quantize(x, vmax[..., None, None], gamma)

    return QueryMaps(
        all_u8=u8(p, all_vmax),
        all_vmax=all_vmax,
        block_p=block_p,
        block_u8=u8(block_p, block_vmax),
        block_vmax=block_vmax,
        head_p=head_p,
        head_u8=u8(head_p, all_vmax[focus_block]),
        head_vmax=all_vmax[focus_block],
    )


# --------------------------------------------------------------------------------------------
# The run's other numbers: summaries and geometric consistency (what the recording's tabs show)
# --------------------------------------------------------------------------------------------


@dataclass
class RunAnalysis:
    """Summaries per kind, and the geometric consistency of the global rows (or None and why not)."""

    summaries: dict[str, Summary]
    consistency: Consistency | None
    why_not: str = ""


def analyze_run(
    result: CaptureResult,
    kinds: Sequence[str],
    top_k: int,
    radius: int,
    transforms: Sequence[FrameTransform] | None = None,
    geometry: Geometry | None = None,
) -> RunAnalysis:
    """summarize() per kind and, with global attention, geometric_consistency() of the rows.

    ``geometry``: the reference of the consistency scores (``reference.Geometry``; None: the model's own).
    """
    summaries = {kind: summarize(result.rows, kind, top_k=int(top_k)) for kind in kinds}
    if "global" not in kinds:
        return RunAnalysis(summaries, None, "")
    try:
        cons = geometric_consistency(result.rows, result.predictions, radius=int(radius), transforms=transforms,
                                     geometry=geometry)  # fmt: skip
    except UserError as e:
        return RunAnalysis(summaries, None, str(e))
    return RunAnalysis(summaries, cons, "")
