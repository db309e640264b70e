"""The dataset table: every metric's mean and 95% interval over scenes, per (kind, block, head).

``summary.parquet`` has one row per (kind, block, head) and, per block, a row with ``head = -1``:
the per-block curve, computed from each scene's mean over heads. For every metric ``m`` of
``job.METRIC_COLUMNS`` it holds ``m_mean``, ``m_low``, ``m_high`` and ``m_n``:

- ``m_n``: the scenes with a finite value (a scene without valid pairs has none);
- ``m_mean``: the mean over those scenes;
- ``m_low`` / ``m_high``: the 95% confidence interval of that mean, Student's t,
  ``mean -+ t(0.975, n - 1) * sd / sqrt(n)`` with the sample standard deviation (NaN for n < 2).

Scenes are the unit: a scene with 64 queries and one with 4 weigh the same (each scene's rows
already average its queries and views).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa

from vggt_attn_rerun.analysis.summaries import METRICS
from vggt_attn_rerun.batch.job import GEOMETRY_METRICS, METRIC_COLUMNS
from vggt_attn_rerun.viz.log_dataset import DatasetCurve, DatasetMatrix

STATS = ("mean", "low", "high", "n")
#: the ``head`` of the per-block curve rows (the mean over heads)
HEAD_MEAN = -1
#: ranges shared by matrices that are compared with each other (score vs control)
_SHARED = {
    "correspondence_score": "correspondence",
    "correspondence_control": "correspondence",
    "epipolar_dist": "epipolar",
    "epipolar_control": "epipolar",
}


def _t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with ``df`` degrees of freedom (Abramowitz and Stegun 26.7.3/4)."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 1:
        term, total = math.cos(theta), 0.0
        for k in range(1, (df - 1) // 2 + 1):  # cos + 2/3 cos^3 + (2*4)/(3*5) cos^5 + ...
            total += term
            term *= c2 * (2 * k) / (2 * k + 1)
        return (2 / math.pi) * (theta + s * total) if df > 1 else 2 * theta / math.pi
    term, total = 1.0, 0.0
    for k in range(1, df // 2 + 1):  # 1 + 1/2 cos^2 + (1*3)/(2*4) cos^4 + ...
        total += term
        term *= c2 * (2 * k - 1) / (2 * k)
    return s * total


@lru_cache(maxsize=256)
def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (p > 0.5) of Student's t with ``df >= 1`` degrees of freedom, by bisection."""
    if df < 1 or not 0.5 < p < 1:
        raise ValueError(f"t_quantile needs df >= 1 and 0.5 < p < 1, got df={df}, p={p}")
    if df > 1000:  # the series below would need df/2 terms; the Cornish-Fisher expansion is exact to ~1e-12 here
        z = statistics.NormalDist().inv_cdf(p)
        return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
                + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))  # fmt: skip
    mass = 2 * p - 1
    lo, hi = 0.0, 1.0
    while _t_two_sided_mass(hi, df) < mass:
        hi *= 2
    for _ in range(64):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_two_sided_mass(mid, df) < mass else (lo, mid)
    return (lo + hi) / 2


def mean_interval(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``values [G, N]`` (NaN = missing) -> mean, low, high, n ``[G]`` over the finite entries."""
    ok = np.isfinite(values)
    n = ok.sum(axis=1)
    v = np.where(ok, values, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, v.sum(axis=1) / np.maximum(n, 1), np.nan)
        var = np.where(ok, (values - mean[:, None]) ** 2, 0.0).sum(axis=1) / np.maximum(n - 1, 1)
    tq = np.array([t_quantile(0.975, int(k) - 1) if k >= 2 else np.nan for k in n])
    half = tq * np.sqrt(var) / np.sqrt(np.maximum(n, 1))
    return mean, mean - half, mean + half, n


def _grid(tables: Sequence[pa.Table]) -> tuple[list[tuple[str, int, int]], dict[str, np.ndarray]]:
    """The (kind, block, head) keys in order and per metric ``[G, N scenes]`` (NaN where absent)."""
    keys: dict[tuple[str, int, int], int] = {}
    for t in tables:
        for k in zip(t["kind"].to_pylist(), t["block"].to_pylist(), t["head"].to_pylist(), strict=True):
            keys.setdefault(k, len(keys))
    order = sorted(keys, key=lambda k: (k[0] != "global", k[1], k[2]))  # global first, then frame
    index = {k: i for i, k in enumerate(order)}
    out = {m: np.full((len(order), len(tables)), np.nan) for m in METRIC_COLUMNS}
    for j, t in enumerate(tables):
        rows = [index[k] for k in zip(t["kind"].to_pylist(), t["block"].to_pylist(), t["head"].to_pylist(),
                                      strict=True)]  # fmt: skip
        for m in METRIC_COLUMNS:
            out[m][rows, j] = t[m].to_numpy(zero_copy_only=False)
    return order, out


def _head_means(order: list[tuple[str, int, int]], values: np.ndarray) -> tuple[list[tuple[str, int]], np.ndarray]:
    """Per scene, the mean over heads of each (kind, block): ``[B, N]`` (NaN when no head has a value)."""
    blocks = list(dict.fromkeys((k, b) for k, b, _ in order))
    where = {kb: i for i, kb in enumerate(blocks)}
    total = np.zeros((len(blocks), values.shape[1]))
    count = np.zeros_like(total)
    for g, (k, b, _) in enumerate(order):
        ok = np.isfinite(values[g])
        total[where[(k, b)]] += np.where(ok, values[g], 0.0)
        count[where[(k, b)]] += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return blocks, np.where(count > 0, total / np.maximum(count, 1), np.nan)


def aggregate(tables: Sequence[pa.Table]) -> pa.Table:
    """``summary.parquet`` from the scenes' tables (module docstring): heads, then the per-block curves."""
    if not tables:
        raise ValueError("aggregate needs at least one scene table")
    order, values = _grid(tables)
    blocks = list(dict.fromkeys((k, b) for k, b, _ in order))
    cols: dict[str, Any] = {
        "kind": [k for k, _, _ in order] + [k for k, _ in blocks],
        "block": np.array([b for _, b, _ in order] + [b for _, b in blocks], np.int32),
        "head": np.array([h for _, _, h in order] + [HEAD_MEAN] * len(blocks), np.int32),
    }
    for m in METRIC_COLUMNS:
        per_head = mean_interval(values[m])
        per_block = mean_interval(_head_means(order, values[m])[1])
        for name, a, b in zip(STATS, per_head, per_block, strict=True):
            cols[f"{m}_{name}"] = np.concatenate([a, b]).astype(np.int32 if name == "n" else np.float64)
    return pa.table(cols)


def _column(summary: pa.Table, name: str) -> np.ndarray:
    return summary[name].to_numpy(zero_copy_only=False)


def dataset_views(summary: pa.Table) -> tuple[list[int], int, list[DatasetMatrix], list[DatasetCurve]]:
    """The block x head matrices and per-block curves of the dataset recording, from summary.parquet.

    Returns (blocks, heads, matrices, curves); metrics with no finite value for a kind are left out
    (the geometry metrics of frame attention).
    """
    kind, block, head = _column(summary, "kind"), _column(summary, "block"), _column(summary, "head")
    blocks = sorted(set(block.tolist()))
    heads = int(head.max()) + 1
    matrices, curves = [], []
    for k in dict.fromkeys(kind.tolist()):
        cell = (kind == k) & (head >= 0)
        line = (kind == k) & (head == HEAD_MEAN)
        bi = np.searchsorted(blocks, block[cell])
        shown: dict[str, np.ndarray] = {}
        for m in METRIC_COLUMNS:
            mat = np.full((len(blocks), heads), np.nan)
            mat[bi, head[cell]] = _column(summary, f"{m}_mean")[cell]
            if np.isfinite(mat).any():
                shown[m] = mat
                lb = np.searchsorted(blocks, block[line])
                mean, low, high = (np.full(len(blocks), np.nan) for _ in range(3))
                for arr, stat in ((mean, "mean"), (low, "low"), (high, "high")):
                    arr[lb] = _column(summary, f"{m}_{stat}")[line]
                curves.append(DatasetCurve(k, m, mean, low, high))
        for m, mat in shown.items():
            group = [shown[o] for o in shown if _SHARED.get(o, o) == _SHARED.get(m, m)]
            finite = np.concatenate([g[np.isfinite(g)] for g in group])
            if m in METRICS:  # masses, entropy and top-k mass are fractions
                lo, hi = 0.0, 1.0
            elif m in _SHARED:  # score vs control, distance vs control: one scale, from 0
                lo, hi = 0.0, max(float(finite.max()), 1e-12)
            else:  # gains: their own range
                lo, hi = float(finite.min()), float(finite.max())
                hi = hi if hi > lo else lo + 1e-12
            matrices.append(DatasetMatrix(k, m, mat, lo, hi))
    return blocks, heads, matrices, curves


def _fmt(x: float) -> str:
    return "-" if not np.isfinite(x) else f"{x:.3g}"


def _ci(summary: pa.Table, m: str, i: int) -> str:
    mean, lo, hi = (float(_column(summary, f"{m}_{s}")[i]) for s in ("mean", "low", "high"))
    return f"{_fmt(mean)} [{_fmt(lo)}, {_fmt(hi)}]" if np.isfinite(lo) else _fmt(mean)


def summary_markdown(summary: pa.Table, scenes_done: int, failures: int, options: dict[str, Any], top: int = 10) -> str:
    """``summary.md``: what was run, the per-block curves, the top heads by correspondence gain."""
    kind, head = _column(summary, "kind"), _column(summary, "head")
    opts = ", ".join(f"{k}={v}" for k, v in options.items())
    lines = [
        f"# Dataset study: {scenes_done} scenes",
        "",
        f"{scenes_done} scenes in the table, {failures} failed (failures.jsonl). Options: {opts}.",
        "Values: mean over scenes [95% interval of the mean, Student's t]; the definitions are in",
        "`vggt_attn_rerun.batch.job` (columns) and `vggt_attn_rerun.batch.aggregate` (intervals).",
    ]
    curve_metrics = {"global": ("other_views_mass", "entropy", "correspondence_score", "correspondence_control",
                                "epipolar_dist", "epipolar_control"),
                     "frame": ("camera_mass", "register_mass", "entropy", "top_k_mass")}  # fmt: skip
    for k in dict.fromkeys(kind.tolist()):
        shown = curve_metrics.get(k, METRICS[:4])
        lines += ["", f"## Per-block curves, {k} attention (mean over heads)", "",
                  "| block | " + " | ".join(shown) + " |", "|---" * (len(shown) + 1) + "|"]  # fmt: skip
        for i in np.flatnonzero((kind == k) & (head == HEAD_MEAN)):
            b = int(_column(summary, "block")[i])
            lines.append(f"| {b} | " + " | ".join(_ci(summary, m, i) for m in shown) + " |")
    cell = np.flatnonzero((kind == "global") & (head >= 0))
    gain = _column(summary, "correspondence_gain_mean")[cell]
    if cell.size and np.isfinite(gain).any():
        best = cell[np.argsort(-np.nan_to_num(gain, nan=-np.inf), kind="stable")[:top]]
        cols = ("correspondence_gain", "correspondence_score", "correspondence_control", "epipolar_dist",
                "epipolar_control")  # fmt: skip
        lines += [
            "",
            f"## Top {len(best)} heads by correspondence score against the positional control (global attention)",
            "",
            "Gain = score - control per scene (> 0: the head follows VGGT's geometry more than position).",
            "",
            "| block | head | " + " | ".join(cols) + " |",
            "|---|---" + "|---" * len(cols) + "|",
        ]
        for i in best:
            b, h = int(_column(summary, "block")[i]), int(head[i])
            lines.append(f"| {b} | {h} | " + " | ".join(_ci(summary, m, i) for m in cols) + " |")
    lines += ["", f"Geometry columns ({', '.join(GEOMETRY_METRICS)}) exist for global attention only."]
    return "\n".join(lines) + "\n"
