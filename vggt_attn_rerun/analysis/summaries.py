"""Per (kind, block, head) numbers that summarize where each query's attention row goes.

Every metric is computed from the raw probabilities of the full row (``AttentionRows.probs``:
all keys in token order, camera + registers + patches of every frame), never from a
renormalized patch map, so the masses of a row add up:

    own_view_mass + other_views_mass + camera_mass + register_mass = 1

Definitions, for one row ``p`` (query q, block l, head h) of ``kind`` attention:

- ``view_mass[s]``: the sum of ``p`` over the PATCH tokens of view ``s`` (special tokens excluded).
- ``own_view_mass``: ``view_mass`` of the query's own frame (patches only). A special-token
  query has an own frame too (the frame it belongs to).
- ``other_views_mass``: the sum of ``view_mass`` over all other frames (0 for frame attention).
- ``camera_mass`` / ``register_mass``: the sum of ``p`` over the camera tokens / the register
  tokens of ALL frames (for global attention a query may attend another frame's camera token;
  ``AttentionRows.special`` keeps the per-frame split).
- ``entropy``: normalized entropy ``-sum(p log p) / log(N)`` with ``0 log 0 = 0``, where N is the
  number of keys the row can attend: ``S * P`` for global attention, ``P`` (one frame, special
  tokens included) for frame attention. 0 = all mass on one key, 1 = uniform over the N keys.
- ``top_k_mass``: the sum of the ``k`` largest probabilities of the row (``k = min(top_k, N)``).
  1 means the row is carried by at most k keys; for a uniform row it is ``k / N``.

``summarize(..., head_mean=True)`` computes the same metrics on the head-mean row
(the mean of the H rows, what a "mean over heads" map shows): its H axis has length 1.
The masses of the head-mean row equal the mean of the per-head masses; entropy and top-k do not
(the mean of peaked heads that look at different places is spread out).

All arrays are float64 numpy arrays; rows are processed one block at a time, so memory stays
at one block of rows in float64.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from vggt_attn_rerun.core.rows import AttentionRows
from vggt_attn_rerun.errors import UserError

#: a muted cell of block_head_matrix keeps this share of its color and takes the rest from MUTE_RGB
MUTE_WEIGHT = 0.3
MUTE_RGB = (40, 40, 40)
#: names of the ``[L, Q, H]`` metrics of a Summary (the ones block_head matrices are made of)
METRICS = ("own_view_mass", "other_views_mass", "camera_mass", "register_mass", "entropy", "top_k_mass")


@dataclass
class Summary:
    """Summaries of the rows of one attention kind.

    Attributes:
        kind: "frame" or "global".
        blocks: the block index of each entry of the L axis.
        top_k: the k of ``top_k_mass`` as asked (the row length caps it: see ``num_keys``).
        num_keys: N, the keys a row can attend (S * P for global, P for frame).
        head_mean: True when the H axis holds the head-mean row only (length 1).
        view_mass: ``[L, Q, H, S]`` patch mass on each view.
        own_view_mass, other_views_mass, camera_mass, register_mass, entropy, top_k_mass:
            ``[L, Q, H]`` each (see the module docstring).

    After ``mean_over_queries()`` the Q axis has length 1 (kept so that shapes stay uniform).
    """

    kind: str
    blocks: tuple[int, ...]
    top_k: int
    num_keys: int
    head_mean: bool
    view_mass: np.ndarray
    own_view_mass: np.ndarray
    other_views_mass: np.ndarray
    camera_mass: np.ndarray
    register_mass: np.ndarray
    entropy: np.ndarray
    top_k_mass: np.ndarray

    def _arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), np.ndarray)}

    def mean_over_queries(self, queries: list[int] | tuple[int, ...] | None = None) -> Summary:
        """The mean over queries (all, or the given query indices): every array keeps its rank
        with a Q axis of length 1."""
        sel = slice(None) if queries is None else list(queries)
        if queries is not None and not sel:
            raise UserError("mean_over_queries needs at least one query index")
        q = self.own_view_mass.shape[1]
        if queries is not None and any(not 0 <= i < q for i in sel):
            raise UserError(f"query index out of range in {list(queries)}: valid are 0..{q - 1}")
        return replace(self, **{k: v[:, sel].mean(axis=1, keepdims=True) for k, v in self._arrays().items()})

    def matrix(self, metric: str) -> np.ndarray:
        """``[L, H]``: one ``[L, Q, H]`` metric averaged over queries (input of block_head_matrix)."""
        if metric not in METRICS:
            raise UserError(f"unknown summary metric {metric!r}: valid metrics are {', '.join(METRICS)}")
        return getattr(self, metric).mean(axis=1)


def _kind_probs(rows: AttentionRows, kind: str) -> torch.Tensor:
    if kind not in rows.probs:
        raise UserError(f"attention kind {kind!r} was not captured: captured kinds are {list(rows.probs)}")
    return rows.probs[kind]


def num_keys(rows: AttentionRows, kind: str) -> int:
    """The keys one row of ``kind`` attention can attend: S * P (global) or P (frame)."""
    lay = rows.layout
    return lay.num_tokens if kind == "global" else lay.tokens_per_frame


def summarize(rows: AttentionRows, kind: str, top_k: int = 10, head_mean: bool = False) -> Summary:
    """Summaries of every captured row of ``kind`` attention (see the module docstring).

    Args:
        rows: captured rows; ``rows.probs[kind]`` is ``[L, Q, H, S, P]``.
        kind: "frame" or "global" (must have been captured).
        top_k: k of the top-k concentration (>= 1).
        head_mean: summarize the head-mean row instead of each head (H axis of length 1).

    Returns:
        Summary with ``view_mass [L, Q, H, S]`` and the other metrics ``[L, Q, H]``.
    """
    if int(top_k) < 1:
        raise UserError(f"top_k must be >= 1, got {top_k}")
    probs = _kind_probs(rows, kind)
    lay = rows.layout
    n_keys = num_keys(rows, kind)
    k = min(int(top_k), n_keys)
    l_, q_, h_, s_, _ = probs.shape
    h_out = 1 if head_mean else h_
    out = {name: np.empty((l_, q_, h_out), np.float64) for name in METRICS}
    view_mass = np.empty((l_, q_, h_out, s_), np.float64)
    own = torch.tensor([qq.frame for qq in rows.queries], dtype=torch.long)
    ps, nc = lay.patch_start, lay.num_cameras
    log_n = math.log(n_keys) if n_keys > 1 else 1.0
    with torch.no_grad():
        # One (block, query) at a time: the float64 temporaries are a few times one query's rows
        # of one block, never a multiple of all the rows (they may be most of the memory).
        for li, qi in itertools.product(range(l_), range(q_)):
            p = probs[li, qi].to(device="cpu", dtype=torch.float64)  # [H, S, P]
            if head_mean:
                p = p.mean(dim=0, keepdim=True)
            vm = p[..., ps:].sum(-1)  # [H', S]
            own_mass = vm[:, int(own[qi])]
            flat = p.flatten(-2)  # [H', S * P]
            view_mass[li, qi] = vm.numpy()
            out["own_view_mass"][li, qi] = own_mass.numpy()
            out["other_views_mass"][li, qi] = (vm.sum(-1) - own_mass).numpy()
            # Per frame the first num_cameras tokens (none for pi3: camera_mass 0), then registers.
            out["camera_mass"][li, qi] = p[..., :nc].sum((-1, -2)).numpy()
            out["register_mass"][li, qi] = p[..., nc:ps].sum((-1, -2)).numpy()
            out["entropy"][li, qi] = (-torch.special.xlogy(flat, flat).sum(-1) / log_n).numpy()
            out["top_k_mass"][li, qi] = flat.topk(k, dim=-1).values.sum(-1).numpy()
    return Summary(kind, tuple(rows.blocks), int(top_k), n_keys, bool(head_mean), view_mass, **out)


def block_head_matrix(
    values: np.ndarray,
    lut: np.ndarray,
    cell: int = 16,
    vmin: float | None = None,
    vmax: float | None = None,
    nan_rgb: tuple[int, int, int] = (128, 128, 128),
    muted: np.ndarray | None = None,
) -> np.ndarray:
    """A ``[L, H]`` matrix as a colormapped RGB picture: one ``cell x cell`` square per (block, head).

    Block l is the l-th row of squares (top = first captured block), head h the h-th column.

    Args:
        values: ``[L, H]`` numbers (NaN allowed: drawn in ``nan_rgb``).
        lut: ``[256, 3]`` uint8 colormap (e.g. ``colormap.lut("inferno")``).
        cell: integer upscaling factor (pixels per matrix entry, >= 1).
        vmin, vmax: the values mapped to the first and last LUT entries (default: the finite
            min and max of ``values``); values outside (and +-inf) are clipped. When ``vmax == vmin`` every
            finite value maps to entry 0: pass an explicit range (e.g. 0..1 for masses).
        muted: optional ``[L, H]`` bool: cells drawn muted (MUTE_WEIGHT of their color blended
            into MUTE_RGB, a dark gray), e.g. the cells that are not significant.

    Returns:
        ``[L * cell, H * cell, 3]`` uint8.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or 0 in v.shape:
        raise UserError(f"block_head_matrix needs a non-empty [blocks, heads] matrix, got shape {list(v.shape)}")
    table = np.asarray(lut)
    if table.shape != (256, 3):
        raise UserError(f"the colormap LUT must have shape [256, 3], got {list(table.shape)}")
    if table.dtype != np.uint8:
        if np.any((table < 0) | (table > 255)) or not np.all(np.mod(table, 1) == 0):
            raise UserError("the colormap LUT must hold integer colors in 0..255")
        table = table.astype(np.uint8)
    if int(cell) != cell or cell < 1:
        raise UserError(f"cell must be an integer >= 1, got {cell}")
    finite = np.isfinite(v)
    lo = float(vmin) if vmin is not None else (float(v[finite].min()) if finite.any() else 0.0)
    hi = float(vmax) if vmax is not None else (float(v[finite].max()) if finite.any() else 1.0)
    span = hi - lo
    with np.errstate(invalid="ignore"):
        t = np.clip((v - lo) / span, 0.0, 1.0) if span > 0 else np.where(np.isnan(v), np.nan, 0.0)
    idx = np.round(np.nan_to_num(t, nan=0.0) * 255).astype(np.intp)
    rgb = table[idx]
    rgb[np.isnan(v)] = np.asarray(nan_rgb, dtype=np.uint8)
    if muted is not None:
        mute = np.asarray(muted, bool) & ~np.isnan(v)
        blend = MUTE_WEIGHT * rgb[mute].astype(np.float64) + (1 - MUTE_WEIGHT) * np.asarray(MUTE_RGB, np.float64)
        rgb[mute] = np.round(blend).astype(np.uint8)
    cell = int(cell)
    return np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1)
