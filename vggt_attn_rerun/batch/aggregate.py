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

For the gains (``job.GAIN_METRICS``: score minus its exact uniform-head null, larger is better)
also ``m_p``, the p-value of the finding "the gain beats both its uniform null and its gain
against position" (``job.POSITION_GAINS``): the larger of the two one-sided t-test p-values of
"mean gain > 0" over the scenes (``analysis.significance.finding_p``), and ``m_q``, its
Benjamini-Hochberg q-value over the block x head cells of that kind and measure (the per-block
rows get q-values over the blocks). A cell is significant when ``q <= 0.05``. ``reference`` says
which geometry the scenes' geometry scores used: ``truth``, ``model``, or both names joined by
``+`` when scenes differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from vggt_attn_rerun.analysis.effects import EFFECT_TITLES, EFFECTS
from vggt_attn_rerun.analysis.significance import ALPHA, bh_qvalues, finding_p, mean_interval, t_quantile
from vggt_attn_rerun.analysis.summaries import METRICS
from vggt_attn_rerun.batch.job import GAIN_METRICS, GEOMETRY_METRICS, METRIC_COLUMNS, POSITION_GAINS
from vggt_attn_rerun.viz.log_dataset import DatasetCurve, DatasetMatrix

STATS = ("mean", "low", "high", "n")
#: the extra statistics of the gains
TESTS = ("p", "q")
# t_quantile and mean_interval live in analysis.significance; their old home re-exports them.
__all__ = ["HEAD_MEAN", "STATS", "TESTS", "aggregate", "aggregate_effects", "dataset_views", "effects_markdown",
           "mean_interval", "summary_markdown", "t_quantile"]  # fmt: skip
#: the ``head`` of the per-block curve rows (the mean over heads)
HEAD_MEAN = -1


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
    kinds = np.array(cols["kind"])
    block_means = {m: _head_means(order, values[m])[1] for m in METRIC_COLUMNS}  # [B, N] per metric
    for m in METRIC_COLUMNS:
        block_values = block_means[m]
        per_head = mean_interval(values[m])
        per_block = mean_interval(block_values)
        for name, a, b in zip(STATS, per_head, per_block, strict=True):
            cols[f"{m}_{name}"] = np.concatenate([a, b]).astype(np.int32 if name == "n" else np.float64)
        if m in GAIN_METRICS:
            partner = POSITION_GAINS[m]
            p = np.concatenate([finding_p(values[m], values[partner]), finding_p(block_values, block_means[partner])])
            q = np.full(p.shape, np.nan)
            is_head = cols["head"] >= 0
            for k in dict.fromkeys(kinds.tolist()):  # one family per kind and measure: heads, then blocks
                for family in (is_head, ~is_head):
                    sel = family & (kinds == k)
                    q[sel] = bh_qvalues(p[sel])
            cols[f"{m}_p"], cols[f"{m}_q"] = p, q
    refs = sorted({r for t in tables if "reference" in t.column_names for r in t["reference"].to_pylist() if r})
    cols["reference"] = ["+".join(refs) if k == "global" else "" for k in cols["kind"]]
    return pa.table(cols)


def _column(summary: pa.Table, name: str) -> np.ndarray:
    return summary[name].to_numpy(zero_copy_only=False)


def dataset_views(summary: pa.Table) -> tuple[list[int], int, list[DatasetMatrix], list[DatasetCurve]]:
    """The block x head matrices and per-block curves of the dataset recording, from summary.parquet.

    Shown: the summaries (METRICS, on 0..1) and the gains (GAIN_METRICS, on one range symmetric
    around 0 per gain, cells with q > 0.05 muted); the raw scores and nulls stay in the tables.
    Returns (blocks, heads, matrices, curves); metrics with no finite value for a kind are left
    out (the gains of frame attention).
    """
    kind, block, head = _column(summary, "kind"), _column(summary, "block"), _column(summary, "head")
    blocks = sorted(set(block.tolist()))
    heads = int(head.max()) + 1
    matrices, curves = [], []
    for k in dict.fromkeys(kind.tolist()):
        cell = (kind == k) & (head >= 0)
        line = (kind == k) & (head == HEAD_MEAN)
        bi = np.searchsorted(blocks, block[cell])
        for m in (*METRICS, *GAIN_METRICS):
            mat = np.full((len(blocks), heads), np.nan)
            mat[bi, head[cell]] = _column(summary, f"{m}_mean")[cell]
            if not np.isfinite(mat).any():
                continue
            lb = np.searchsorted(blocks, block[line])
            mean, low, high = (np.full(len(blocks), np.nan) for _ in range(3))
            for arr, stat in ((mean, "mean"), (low, "low"), (high, "high")):
                arr[lb] = _column(summary, f"{m}_{stat}")[line]
            curves.append(DatasetCurve(k, m, mean, low, high))
            if m in METRICS:  # masses, entropy and top-k mass are fractions
                matrices.append(DatasetMatrix(k, m, mat, 0.0, 1.0))
                continue
            top = max(float(np.abs(mat[np.isfinite(mat)]).max()), 1e-12)
            significant = np.zeros(mat.shape, bool)
            significant[bi, head[cell]] = np.nan_to_num(_column(summary, f"{m}_q")[cell], nan=1.0) <= ALPHA
            matrices.append(DatasetMatrix(k, m, mat, -top, top, significant=significant, diverging=True))
    return blocks, heads, matrices, curves


def _fmt(x: float) -> str:
    return "-" if not np.isfinite(x) else f"{x:.3g}"


def _ci(summary: pa.Table, m: str, i: int) -> str:
    mean, lo, hi = (float(_column(summary, f"{m}_{s}")[i]) for s in ("mean", "low", "high"))
    return f"{_fmt(mean)} [{_fmt(lo)}, {_fmt(hi)}]" if np.isfinite(lo) else _fmt(mean)


#: what each gain measures, one line each (summary.md, the dataset recording's legend)
GAIN_MEANINGS = {
    "correspondence_gain": "share of a view's patch mass within the radius of the projected query point, minus "
                           "a uniform head's share (same clipped window)",
    "correspondence_beyond_position_gain": "attention per patch near the projected query point but not near "
                                           "the query's own (row, col), minus the reverse (uniform: 0)",
    "peak_dist_gain": "a uniform head's mean distance (patches) to the projected patch, minus the peak's",
    "epipolar_gain": "a uniform head's mean Sampson distance (pixels) to the epipolar line, minus the peak's",
    "peak_dist_beyond_position_gain": "the query's own patch's distance (patches) to the projected patch, minus the "
                                      "peak's (a head on its own position: 0)",
    "epipolar_beyond_position_gain": "the query's own patch's Sampson distance (pixels), minus the peak's (a head on "
                                     "its own position: 0)",
}  # fmt: skip


#: per gain, the two columns summary.md shows beside it: (score, null or control, their headers)
GAIN_CONTEXT = {
    "correspondence_gain": ("correspondence_score", "correspondence_null", "correspondence score", "null"),
    "correspondence_beyond_position_gain": ("correspondence_score", "correspondence_control", "correspondence score",
                                            "positional control"),
    "peak_dist_gain": ("peak_dist", "peak_dist_null", "peak_dist score", "null"),
    "epipolar_gain": ("epipolar_dist", "epipolar_null", "epipolar score", "null"),
}  # fmt: skip


def _q_text(summary: pa.Table, m: str, i: int) -> str:
    q = float(_column(summary, f"{m}_q")[i])
    return "-" if not np.isfinite(q) else (f"{q:.2g}" + (" *" if q <= ALPHA else ""))


def summary_markdown(summary: pa.Table, scenes_done: int, failures: int, options: dict[str, Any], top: int = 10) -> str:
    """``summary.md``: what was run, the per-block curves, per gain measure the top heads (q-values)."""
    kind, head = _column(summary, "kind"), _column(summary, "head")
    refs = [r for r in dict.fromkeys(_column(summary, "reference").tolist()) if r] if "reference" in \
        summary.column_names else []  # fmt: skip
    reference = "+".join(refs) or "-"
    opts = ", ".join(f"{k}={v}" for k, v in options.items())
    lines = [
        f"# Dataset study: {scenes_done} scenes",
        "",
        f"{scenes_done} scenes in the table, {failures} failed (failures.jsonl). Options: {opts}.",
        f"Geometry reference: **{reference}** (`truth`: cameras and depth that came with the scenes; `model`: the",
        "model's own predicted cameras and depth, so a head can only agree with what the model predicts).",
        "Values: mean over scenes [95% interval of the mean, Student's t]; the definitions are in",
        "`vggt_attn_rerun.batch.job` (columns) and `vggt_attn_rerun.batch.aggregate` (intervals, q-values).",
        "Gains are score minus the exact expectation for a head uniform over the view's patches: larger is",
        "better, a uniform head scores 0. A cell is a finding only where its gain beats both the uniform null and",
        "its gain against position (a head on the query's own (row, col)), the larger p of the two t-tests;",
        f"q: Benjamini-Hochberg over the block x head cells (* = q <= {ALPHA}).",
    ]
    curve_metrics = {"global": ("other_views_mass", "entropy", *GAIN_METRICS),
                     "frame": ("camera_mass", "register_mass", "entropy", "top_k_mass")}  # fmt: skip
    for k in dict.fromkeys(kind.tolist()):
        shown = curve_metrics.get(k, METRICS[:4])
        lines += ["", f"## Per-block curves, {k} attention (mean over heads)", "",
                  "| block | " + " | ".join(shown) + " |", "|---" * (len(shown) + 1) + "|"]  # fmt: skip
        for i in np.flatnonzero((kind == k) & (head == HEAD_MEAN)):
            b = int(_column(summary, "block")[i])
            lines.append(f"| {b} | " + " | ".join(_ci(summary, m, i) for m in shown) + " |")
    cell = np.flatnonzero((kind == "global") & (head >= 0))
    for m in GAIN_METRICS:
        gain = _column(summary, f"{m}_mean")[cell]
        if not (cell.size and np.isfinite(gain).any()):
            continue
        best = cell[np.argsort(-np.nan_to_num(gain, nan=-np.inf), kind="stable")[:top]]
        significant = int((np.nan_to_num(_column(summary, f"{m}_q")[cell], nan=1.0) <= ALPHA).sum())
        score_col, null_col, score_label, null_label = GAIN_CONTEXT[m]
        lines += [
            "",
            f"## Top {len(best)} heads by `{m}` (global attention, reference {reference})",
            "",
            f"`{m}`: {GAIN_MEANINGS[m]}. {significant} of {cell.size} cells significant (q <= {ALPHA}).",
            "",
            f"| rank | block | head | {m} | against position | q | {score_label} | {null_label} |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r, i in enumerate(best, start=1):
            b, h = int(_column(summary, "block")[i]), int(head[i])
            lines.append(f"| {r} | {b} | {h} | {_ci(summary, m, i)} | {_ci(summary, POSITION_GAINS[m], i)} | "
                         f"{_q_text(summary, m, i)} | "
                         f"{_fmt(float(_column(summary, f'{score_col}_mean')[i]))} | "
                         f"{_fmt(float(_column(summary, f'{null_col}_mean')[i]))} |")  # fmt: skip
    lines += ["", f"Geometry columns ({', '.join(GEOMETRY_METRICS)}) exist for global attention only."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# With --ablate: the effect of each intervention over scenes
# ------------------------------------------------------------------------------------------------

EFFECT_SUMMARY_KEYS = ("kind", "block", "head", "ablation", "effect")


def aggregate_effects(tables: Sequence[pa.Table]) -> pa.Table:
    """``effects_summary.parquet``: one row per (kind, block, head, ablation, effect) with ``mean``,
    ``low``, ``high`` (95% interval of the mean over scenes, Student's t; NaN for n < 2) and ``n``
    (the scenes with a finite value). ``tables``: the scenes' effect tables (job.EFFECT_SCHEMA).
    Rows: largest mean first within each effect, effects in ``analysis.effects.EFFECTS`` order."""
    keys: dict[tuple[str, int, int, str], int] = {}
    for t in tables:
        for k in zip(*(t[c].to_pylist() for c in EFFECT_SUMMARY_KEYS[:4]), strict=True):
            keys.setdefault(k, len(keys))
    parts: dict[str, list[Any]] = {c: [] for c in (*EFFECT_SUMMARY_KEYS, *STATS)}
    for e in EFFECTS:
        values = np.full((len(keys), len(tables)), np.nan)  # [G interventions, N scenes]
        for j, t in enumerate(tables):
            rows = [keys[k] for k in zip(*(t[c].to_pylist() for c in EFFECT_SUMMARY_KEYS[:4]), strict=True)]
            values[rows, j] = t[e].to_numpy(zero_copy_only=False)
        mean, low, high, n = mean_interval(values)
        for i in np.argsort(-np.nan_to_num(mean, nan=-np.inf), kind="stable"):
            kind, block, head, ablation = list(keys)[i]
            for c, v in zip(parts, (kind, block, head, ablation, e, mean[i], low[i], high[i], int(n[i])), strict=True):
                parts[c].append(v)
    schema = pa.schema([("kind", pa.string()), ("block", pa.int32()), ("head", pa.int32()),
                        ("ablation", pa.string()), ("effect", pa.string()), ("mean", pa.float64()),
                        ("low", pa.float64()), ("high", pa.float64()), ("n", pa.int32())])  # fmt: skip
    return pa.Table.from_pydict(parts, schema=schema)


def effects_markdown(summary: pa.Table, top: int = 10) -> str:
    """The ``summary.md`` section of ``aggregate_effects``: per effect, the ``top`` largest means."""
    lines = [
        "",
        "## Ablation effects (largest first)",
        "",
        "Each intervention's effect on the model's 3D output against the unablated forward of the same scene",
        "(`analysis.effects`; a no-op scores 0): mean over scenes [95% interval of the mean, Student's t].",
        "Head -1: the whole block (block ablation, cross-view knockout). All rows: effects_summary.parquet.",
    ]
    effect = _column(summary, "effect")
    for e in EFFECTS:
        rows = np.flatnonzero(effect == e)[:top]
        if not rows.size:
            continue
        header = "| rank | kind | block | head | ablation | mean [95%] | n |"
        lines += ["", f"### {EFFECT_TITLES[e]}", "", header, "|---" * 7 + "|"]
        kind, block, head, ablation = (_column(summary, c) for c in ("kind", "block", "head", "ablation"))
        for r, i in enumerate(rows, start=1):
            lo, hi = float(_column(summary, "low")[i]), float(_column(summary, "high")[i])
            ci = f" [{_fmt(lo)}, {_fmt(hi)}]" if np.isfinite(lo) else ""
            mean, n = _fmt(float(_column(summary, "mean")[i])), int(_column(summary, "n")[i])
            lines.append(f"| {r} | {kind[i]} | {int(block[i])} | {int(head[i])} | {ablation[i]} | {mean}{ci} | {n} |")
    return "\n".join(lines) + "\n"
