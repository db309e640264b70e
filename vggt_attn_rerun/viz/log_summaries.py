"""Log the summaries and the geometric consistency of a run's queries: series, matrices, markers.

Summaries (``metric`` in summaries.METRICS: own_view_mass, other_views_mass, camera_mass,
register_mass, entropy, top_k_mass; definitions in summaries.py) are computed from the full
rows by the analysis layer (analysis.maps.analyze_run) and only logged here; the "head mean"
series is the mean of the heads' values. One entity per metric with
H + 1 series (not one entity per series: 17x fewer chunks, 15x faster to log for VGGT).
Matrix images come from ``summaries.block_head_matrix``: block l is the l-th row of cells
(top = first captured block), head h the h-th column, each cell ``options.matrix_cell``
pixels; summary matrices map 0..1 onto the colormap (all metrics are fractions), consistency
matrices 0..max(score, control score) of that query; the range is also in the entity's
``vmin``/``vmax`` and in the legend. Geometric consistency (consistency.py) is logged for
global attention only; excluded views (own view, no point, behind the camera, outside the
image, occluded, low confidence) get no projected marker, and the query's notes list each
view's status and the counts.

With several queries, ``log_query_means`` logs the same averaged over the run's queries under
``queries/mean/...`` (paths.MEAN). Entity paths: paths.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import rerun as rr

from vggt_attn_rerun.analysis.consistency import STATUS_NAMES, VALID, Consistency
from vggt_attn_rerun.analysis.significance import ALPHA, cell_tests
from vggt_attn_rerun.analysis.summaries import METRICS, Summary, block_head_matrix
from vggt_attn_rerun.analysis.visibility import STATUS_MEANING
from vggt_attn_rerun.core.capture import CaptureResult
from vggt_attn_rerun.core.tokens import TokenLayout
from vggt_attn_rerun.viz import colormap
from vggt_attn_rerun.viz.options import RecordingOptions
from vggt_attn_rerun.viz.paths import MEAN, Paths, block_timelines

PROJECTED_COLOR = (255, 0, 255)  # magenta: the query's 3D point seen from another view

#: what each summary metric measures (legend of the matrices; see summaries.py for the definitions)
METRIC_MEANINGS = {
    "own_view_mass": "patch mass on the query's own view",
    "other_views_mass": "patch mass on all other views",
    "camera_mass": "mass on the camera tokens of all frames",
    "register_mass": "mass on the register tokens of all frames",
    "entropy": "normalized entropy of the row (0 = one key, 1 = uniform)",
    "top_k_mass": "mass of the k largest probabilities",
}


@lru_cache(maxsize=16)
def _head_series_style(num_heads: int) -> rr.SeriesLines:
    """One line per head (colors spread over turbo) and a wide white line for the head mean."""
    picks = np.linspace(20, 235, num_heads).round().astype(int) if num_heads > 1 else np.array([128])
    colors = [tuple(int(c) for c in colormap.lut("turbo")[k]) for k in picks] + [(255, 255, 255)]
    names = [f"head {h}" for h in range(num_heads)] + ["head mean"]
    return rr.SeriesLines(names=names, colors=colors, widths=[1.0] * num_heads + [3.0])


def _send_batches(rec: rr.RecordingStream, path: str, blocks: Sequence[int], values: np.ndarray) -> None:
    """values ``[L, n]``: one row of n scalars (n series of one entity) per block."""
    values = np.ascontiguousarray(values, np.float64)
    timelines = block_timelines("block", blocks)  # + the depth timeline inside paths.rooted(..., depth)
    rec.send_columns(
        path,
        indexes=[rr.TimeColumn(name, sequence=np.asarray(t, np.int64)) for name, t in timelines.items()],
        columns=rr.Scalars.columns(scalars=values.reshape(-1)).partition(lengths=[values.shape[1]] * len(values)),
    )


AXIS_COLOR = (200, 200, 200)


def _ticks(n: int, most: int = 8) -> list[int]:
    """Which of ``n`` rows (or columns) get a label: all up to ``most``, else about five, evenly
    spaced, always the first and the last (screen-size text: more would overlap on a small view)."""
    if n <= most:
        return list(range(n))
    step = -(-n // 5)
    ticks = list(range(0, n - step // 2, step))
    return ticks + [n - 1]


def matrix_axes(blocks: Sequence[int], num_heads: int, cell: int, heads: bool = True) -> rr.Points2D:
    """Axis labels of a block x head matrix image (``block_head_matrix``, ``cell`` pixels per
    entry): the first row ``block b`` and the others ``b{block}`` left of the rows, ``h{head}`` above
    the columns (none when ``heads`` is False: one column, e.g. whole blocks). Log at ``{matrix}/axes``."""
    rows = _ticks(len(blocks))
    cols = _ticks(num_heads) if heads else []
    xy = [(-2.0 * cell, (i + 0.5) * cell) for i in rows] + [((h + 0.5) * cell, -1.0 * cell) for h in cols]
    labels = [f"block {blocks[i]}" if i == 0 else f"b{blocks[i]}" for i in rows] + [f"h{h}" for h in cols]
    # An unlabelled point as far below the matrix as the head labels are above it: the view's
    # framing then keeps the last row (and its label) in sight.
    xy.append((-2.0 * cell, (len(blocks) + 1.0) * cell))
    labels.append("")
    return rr.Points2D(xy, radii=0.5, colors=[AXIS_COLOR] * len(xy), labels=labels, show_labels=True)


def _log_matrix(rec: rr.RecordingStream, path: str, values: np.ndarray, lo: float, hi: float,
                options: RecordingOptions, blocks: Sequence[int]) -> None:  # fmt: skip
    """``[L, H]`` as a static RGB image (summaries.block_head_matrix) with its color range and axes."""
    cell = int(options.matrix_cell)
    rgb = block_head_matrix(values, colormap.lut(options.colormap), cell, lo, hi)
    rec.log(path, rr.Image(rgb), rr.AnyValues(vmin=float(lo), vmax=float(hi)), static=True)
    rec.log(f"{path}/axes", matrix_axes(blocks, np.shape(values)[1], cell), static=True)


def _log_gain_matrix(rec: rr.RecordingStream, path: str, gain: np.ndarray, significant: np.ndarray | None,
                     options: RecordingOptions, blocks: Sequence[int]) -> float:  # fmt: skip
    """``[L, H]`` gains on the diverging colormap, range symmetric around 0; cells not significant muted.

    Returns the top of the range (the range is ``-top .. top``).
    """
    finite = np.abs(gain[np.isfinite(gain)])
    top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    muted = None if significant is None else ~significant
    rgb = block_head_matrix(gain, colormap.diverging_lut(), int(options.matrix_cell), -top, top, muted=muted)
    extra = {"vmin": -top, "vmax": top, "values": np.asarray(gain, np.float64).ravel()}
    if significant is not None:
        extra["significant"] = np.asarray(significant, bool).ravel()
    rec.log(path, rr.Image(rgb), rr.AnyValues(**extra), static=True)
    rec.log(f"{path}/axes", matrix_axes(blocks, np.shape(gain)[1], int(options.matrix_cell)), static=True)
    return top


def _log_summaries(rec: rr.RecordingStream, q: int | str, kind: str, values: dict[str, np.ndarray],
                   blocks: Sequence[int], options: RecordingOptions) -> None:  # fmt: skip
    """values: metric -> ``[L, H]``. Series: heads then the head mean per row; matrices on 0..1."""
    for metric, v in values.items():
        path = Paths.summary(q, kind, metric)
        rec.log(path, _head_series_style(v.shape[1]), static=True)
        _send_batches(rec, path, blocks, np.concatenate([v, v.mean(axis=1, keepdims=True)], axis=1))
        _log_matrix(rec, Paths.matrix(q, kind, metric), v, 0.0, 1.0, options, blocks)


def _legend_text(q: int | str, kind: str, blocks: Sequence[int], num_heads: int, options: RecordingOptions,
                 consistency_range: float | None) -> str:  # fmt: skip
    who = "the mean over the run's queries" if q == MEAN else f"query q{q}"
    cell = int(options.matrix_cell)
    lines = [
        f"# Block x head matrices: {who}, {kind} attention",
        "",
        f"Each picture is a matrix: **rows = captured blocks** (top to bottom: {', '.join(map(str, blocks))}),",
        f"**columns = heads** (left to right: 0..{num_heads - 1}); one {cell}x{cell}-pixel cell each.",
        f"Colormap {options.colormap}: dark = low end of the range, bright = high end; gray = no value.",
        "Exact values: the Scalars series `summary/{metric}` on the `block` timeline (one line per head,",
        "the wide white line is the head mean: the mean of the heads' values).",
        "",
        "| matrix | range | meaning |",
        "|---|---|---|",
    ]
    for metric, meaning in METRIC_MEANINGS.items():
        extra = f" (k = {options.top_k})" if metric == "top_k_mass" else ""
        lines.append(f"| `matrix/{metric}` | 0 .. 1 | {meaning}{extra} |")
    if consistency_range is not None:
        r, hi = options.consistency_radius, f"{consistency_range:.4g}"
        lines += [
            f"| `consistency/gain` | symmetric around 0 | score minus the exact score of a head uniform over the "
            f"view's patches (same clipped window): > 0 (red) = above the null, < 0 (blue) = below; colormap "
            f"{colormap.DIVERGING} centred at 0 (light gray); on the mean over queries, cells that are not "
            "findings are muted (grayed out): a finding beats both the null and position (the attention near "
            "the query's own (row, col)), one-sided t-tests over the queries, the larger p, Benjamini-Hochberg "
            "q <= 0.05 over the block x head cells |",
            f"| `consistency/score` | 0 .. {hi} | share of a head's patch mass on another view that lies within "
            f"{r} patch(es) of the projected query point (mean over valid views) |",
            f"| `consistency/control_score` | 0 .. {hi} | the same around the query's own (row, col): "
            "positional control |",
        ]
    return "\n".join(lines)


def _mean_over_views(x: np.ndarray) -> np.ndarray:
    """``[L, H, S]`` -> ``[L, H]``: mean over the finite entries (NaN where there are none)."""
    ok = np.isfinite(x)
    count = ok.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(ok, x, 0.0).sum(-1) / np.maximum(count, 1), np.nan)


def _shared_range(*matrices: np.ndarray) -> float:
    """The top of a 0-based color range shared by matrices (1 when they hold nothing positive)."""
    finite = np.concatenate([m[np.isfinite(m)] for m in matrices])
    top = float(finite.max()) if finite.size else 0.0
    return top if top > 0 else 1.0


def _log_projected(rec: rr.RecordingStream, i: int, s: int, xy: np.ndarray, patch: np.ndarray, radius: int,
                   lay: TokenLayout) -> None:  # fmt: skip
    """The query's 3D point projected into view s: a dot, a cross, and the score's patch window."""
    ps, gh, gw = lay.patch_size, lay.grid_h, lay.grid_w
    (x, y), (pr, pc) = (float(v) for v in xy), (int(v) for v in patch)
    size = max(2.0, 0.3 * ps)
    # No box of the query's size and no bare "q{i}" label: this marks where the query's 3D point
    # lands in another view, and must not look like the query itself (cyan dot + patch box).
    dot = rr.Points2D([[x, y]], radii=max(1.0, 0.05 * ps), colors=[PROJECTED_COLOR], labels=[f"q{i} projected"],
                      draw_order=31.0)  # fmt: skip
    cross = [[[x - size, y - size], [x + size, y + size]], [[x - size, y + size], [x + size, y - size]]]
    r0, r1, c0, c1 = max(0, pr - radius), min(gh - 1, pr + radius), max(0, pc - radius), min(gw - 1, pc + radius)
    window = rr.Boxes2D(mins=[[c0 * ps, r0 * ps]], sizes=[[(c1 - c0 + 1) * ps, (r1 - r0 + 1) * ps]],
                        colors=[PROJECTED_COLOR], draw_order=29.0)  # fmt: skip
    rec.log(Paths.projected(s, i), dot, static=True)
    rec.log(Paths.projected_cross(s, i), rr.LineStrips2D(cross, colors=[PROJECTED_COLOR], draw_order=31.0),
            static=True)  # fmt: skip
    rec.log(Paths.projected_window(s, i), window, static=True)


def _consistency_notes(j: int, cons: Consistency, top: float) -> list[str]:
    """The query's notes on geometric consistency: every view's projection or why it is excluded."""
    status, conf, r = cons.status[j], cons.query_conf[j], cons.radius
    reference = (
        "reference = truth: the cameras and depth that came with the images"
        if cons.reference == "truth"
        else "reference = model: VGGT's own predicted cameras and point map, so a head can only agree with "
        "what the model predicts (a wrong prediction makes a right head look wrong)"
    )
    lines = [
        "",
        "## Geometric consistency (global attention)",
        "",
        f"Geometry {reference}.",
        "",
        f"The query's 3D point (VGGT's point map over the query patch{'' if np.isnan(conf) else f', conf {conf:.3g}'})"
        f" is projected into every other view (magenta cross `projected`, with the {2 * r + 1}x{2 * r + 1}-patch "
        "window of the score); excluded views get no marker.",
        "",
    ]
    for s, code in enumerate(status):
        name = STATUS_NAMES[code]
        if code == VALID:
            x, y = cons.projected_xy[j, s]
            pr, pc = cons.projected_patch[j, s]
            lines.append(f"- view {s}: projected to x={x:.1f}, y={y:.1f} (patch row {pr}, col {pc})")
        else:
            lines.append(f"- view {s}: excluded, {name}: {STATUS_MEANING[name]}")
    counts = {name: int((status == code).sum()) for code, name in enumerate(STATUS_NAMES)}
    shown = ", ".join(f"{name} {n}" for name, n in counts.items() if n)
    lines += ["", f"Counts: {shown}.", f"Score color range: 0 .. {top:.4g} (score and control share it)."]
    return lines


def _log_query_consistency(rec: rr.RecordingStream, i: int, j: int, cons: Consistency, lay: TokenLayout,
                           options: RecordingOptions) -> tuple[list[str], float]:  # fmt: skip
    """Projected markers, score matrices and peak distances of query j of ``cons``, logged as query i.

    Returns the lines for the query's notes and the top of the score color range.
    """
    valid = np.flatnonzero(cons.status[j] == VALID)
    for s in valid:
        _log_projected(rec, i, int(s), cons.projected_xy[j, s], cons.projected_patch[j, s], cons.radius, lay)
    score = _mean_over_views(cons.share_near[:, j])  # [L, H]
    control = _mean_over_views(cons.control_share_near[:, j])
    top = _shared_range(score, control)
    _log_gain_matrix(
        rec, Paths.consistency(i, "gain"), _mean_over_views(cons.share_gain[:, j]), None, options, cons.blocks
    )
    _log_matrix(rec, Paths.consistency(i, "score"), score, 0.0, top, options, cons.blocks)
    _log_matrix(rec, Paths.consistency(i, "control_score"), control, 0.0, top, options, cons.blocks)
    if valid.size:
        path = Paths.consistency(i, "peak_dist")
        names = [f"view {s}" for s in valid]
        turbo = colormap.lut("turbo")
        colors = [tuple(int(c) for c in turbo[int(255 * (s + 0.5) / lay.num_frames)]) for s in valid]
        rec.log(path, rr.SeriesLines(names=names, colors=colors), static=True)
        rec.log(path, rr.AnyValues(views=valid.astype(np.int64), unit="model pixels"), static=True)
        dist = cons.peak_dist_pixels[:, j][:, :, valid].mean(axis=1)  # [L, V]: head mean
        _send_batches(rec, path, cons.blocks, dist)
    return _consistency_notes(j, cons, top), top


def log_query_summaries(rec: rr.RecordingStream, result: CaptureResult, j: int, i: int, kind: str,
                        summary: Summary, cons: Consistency | None, why_not: str,
                        options: RecordingOptions) -> list[str]:  # fmt: skip
    """Summaries of query j of the result, logged as query i, for one kind; then the matrices' legend.

    Series and block x head matrices of every metric; for global attention also the geometric
    consistency (``cons``, or None and ``why_not``). Returns the lines of the query's notes about
    geometric consistency (none for frame attention).
    """
    rows, lay = result.rows, result.layout
    blocks = list(rows.blocks)
    values = {m: getattr(summary, m)[:, j] for m in METRICS}  # [L, H] each
    _log_summaries(rec, i, kind, values, blocks, options)
    notes, top = [], None
    if kind == "global":
        if cons is not None:
            notes, top = _log_query_consistency(rec, i, j, cons, lay, options)
        else:
            notes = ["", "## Geometric consistency", "", f"Not computed: {why_not}"]
    legend = _legend_text(i, kind, blocks, rows.num_heads, options, top)
    rec.log(Paths.matrix_legend(i, kind), rr.TextDocument(legend, media_type=rr.MediaType.MARKDOWN),
            static=True)  # fmt: skip
    return notes


def log_query_means(rec: rr.RecordingStream, result: CaptureResult, summaries: dict[str, Summary],
                    consistency: Consistency | None, options: RecordingOptions) -> None:  # fmt: skip
    """``queries/mean/...``: summaries and consistency scores averaged over the run's queries."""
    rows = result.rows
    for kind, summary in summaries.items():
        mean = summary.mean_over_queries()
        _log_summaries(rec, MEAN, kind, {m: getattr(mean, m)[:, 0] for m in METRICS}, rows.blocks, options)
        top = None
        if kind == "global" and consistency is not None:
            cons = consistency
            top = _shared_range(cons.score, cons.control_score)
            units = cons.unit_gains()  # [L, Q, H] each: the queries are the units
            by_cell = {k: np.moveaxis(v, 1, -1).reshape(-1, v.shape[1]) for k, v in units.items()}
            # A finding beats both the uniform null and position (significance.finding_p).
            tests = cell_tests(by_cell["correspondence"], by_cell["correspondence_beyond_position"])
            significant = (np.nan_to_num(tests["q"], nan=1.0) <= ALPHA).reshape(cons.gain.shape)
            _log_gain_matrix(rec, Paths.consistency(MEAN, "gain"), cons.gain, significant, options, rows.blocks)
            _log_matrix(rec, Paths.consistency(MEAN, "score"), cons.score, 0.0, top, options, rows.blocks)
            _log_matrix(
                rec, Paths.consistency(MEAN, "control_score"), cons.control_score, 0.0, top, options, rows.blocks
            )
        legend = _legend_text(MEAN, kind, rows.blocks, rows.num_heads, options, top)
        legend += f"\n\nMeans over the {len(rows.queries)} queries q0..q{len(rows.queries) - 1} of the run"
        if top is not None:
            legend += "; the consistency scores are means over all valid (query, view) pairs"
        rec.log(Paths.matrix_legend(MEAN, kind), rr.TextDocument(legend + ".", media_type=rr.MediaType.MARKDOWN),
                static=True)  # fmt: skip
