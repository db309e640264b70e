"""Recordings of dataset mode: one scene's recording as bytes, and the dataset recording.

The dataset recording shows a whole study (means over scenes) in the viewer::

    dataset/summary                       TextDocument: the study's summary.md
    dataset/legend                        TextDocument: how to read the matrices, color ranges
    dataset/{kind}/matrix/{metric}        Image [L*cell, H*cell, 3]: block x head matrix of the mean
                                          over scenes (rows = blocks, columns = heads), static, with
                                          AnyValues ``values`` (the [L, H] means, row-major),
                                          ``blocks``, ``vmin``, ``vmax`` (and ``significant`` for gains)
    dataset/{kind}/matrix/{metric}/axes   Points2D: labels of the rows (blocks) and columns (heads)

Gains (``*_gain``) are drawn with a diverging colormap centred at 0 (blue < 0 < red) on one range
symmetric around 0 per gain; cells that are not findings (q > 0.05) are muted (grayed out).
    dataset/{kind}/curve/{metric}         Scalars on the ``block`` timeline: the per-block curve (mean
                                          over heads and scenes) and its 95% interval over scenes

The caller (``batch.aggregate``) computes every number; this module only draws and lays out.
Both recordings come back as ``.rrd`` bytes with the blueprint embedded; the caller writes them
(atomically) where they belong.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rerun as rr
import rerun.blueprint as rrb

from vggt_attn_rerun.analysis.summaries import block_head_matrix
from vggt_attn_rerun.core.capture import CaptureResult
from vggt_attn_rerun.core.images import LoadedImages
from vggt_attn_rerun.io.atomic import commit
from vggt_attn_rerun.viz import colormap
from vggt_attn_rerun.viz.blueprint import default_blueprint_for, with_stable_ids
from vggt_attn_rerun.viz.log_run import log_run
from vggt_attn_rerun.viz.log_summaries import matrix_axes
from vggt_attn_rerun.viz.options import RecordingOptions
from vggt_attn_rerun.viz.paths import APPLICATION_ID
from vggt_attn_rerun.viz.sinks import Outputs, SinkPlan, open_sinks

_ID_NAMESPACE = uuid.UUID("0d6c2a8e-41c4-4b7e-9d0e-3f5a9b1c7e21")
SUMMARY_PATH = "dataset/summary"
LEGEND_PATH = "dataset/legend"
CURVE_SERIES = ("mean", "95% low", "95% high")


def matrix_path(kind: str, metric: str) -> str:
    return f"dataset/{kind}/matrix/{metric}"


def curve_path(kind: str, metric: str) -> str:
    return f"dataset/{kind}/curve/{metric}"


@dataclass
class DatasetMatrix:
    """A block x head matrix of one metric: ``values [L, H]`` drawn on ``vmin..vmax``.

    ``diverging``: a signed value (a gain) drawn with the diverging colormap centred at 0
    (``vmin == -vmax``); ``significant``: optional ``[L, H]`` bool, the other cells are drawn muted.
    """

    kind: str
    metric: str
    values: np.ndarray
    vmin: float
    vmax: float
    significant: np.ndarray | None = None
    diverging: bool = False


@dataclass
class DatasetCurve:
    """A per-block curve of one metric: ``mean``, ``low``, ``high`` are ``[L]``."""

    kind: str
    metric: str
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray


def _recording_bytes(rec: rr.RecordingStream, stream: rr.BinaryStream) -> bytes:
    rec.flush()
    data = stream.read(flush=True)
    return data or b""


def save_scene_recording(result: CaptureResult, images: LoadedImages, options: RecordingOptions, name: str,
                         path: Path) -> None:  # fmt: skip
    """One scene's full recording (as the main command makes it, default blueprint embedded) at
    ``path``, streamed to disk as it is logged (as ``--save``: memory does not grow with the file;
    complete or absent)."""
    rec = rr.RecordingStream(APPLICATION_ID, recording_id=uuid.uuid5(_ID_NAMESPACE, f"scene/{name}"))
    with open_sinks(rec, SinkPlan(Outputs(save=path, overwrite=True))) as sinks:
        rec.send_blueprint(default_blueprint_for(result, options), make_active=True, make_default=True)
        log_run(rec, result, images, options)
        commit(sinks.finish())


def _title(metric: str) -> str:
    """A view's title: the metric's column name, with the longest one shortened so a header shows it
    whole (its entity path keeps the full name)."""
    return "beyond_position_gain" if metric == "correspondence_beyond_position_gain" else metric


def dataset_blueprint(kinds: Sequence[str], matrices: Sequence[DatasetMatrix], curves: Sequence[DatasetCurve]):
    """One tab per kind (matrices above, curves below), then the summary text; ``block`` timeline active."""
    tabs = []
    for kind in kinds:
        mats = [
            rrb.Spatial2DView(origin=matrix_path(kind, m.metric), name=_title(m.metric))
            for m in matrices
            if m.kind == kind
        ]
        # No plot legend: it would hide most of these small plots; the legend document names the series.
        lines = [
            rrb.TimeSeriesView(
                origin=curve_path(kind, c.metric), name=_title(c.metric), plot_legend=rrb.PlotLegend(visible=False)
            )
            for c in curves
            if c.kind == kind
        ]
        # The legend gets a column of its own beside the matrices, so that it is read whole.
        legend = rrb.TextDocumentView(origin=LEGEND_PATH, name="legend")
        top = rrb.Horizontal(
            rrb.Grid(*mats, grid_columns=4, name="block x head (mean over scenes)"), legend, column_shares=[3, 1]
        )
        tabs.append(
            rrb.Vertical(
                top,
                rrb.Grid(*lines, grid_columns=6, name="per-block curves"),
                row_shares=[3, 2],
                name=f"{kind} attention",
            )  # fmt: skip
        )
    tabs.append(rrb.TextDocumentView(origin=SUMMARY_PATH, name="summary"))
    root = rrb.Tabs(*tabs)
    with_stable_ids(root, "dataset", _ID_NAMESPACE)  # the same study gives the same blueprint
    return rrb.Blueprint(root, rrb.TimePanel(state="collapsed", timeline="block"), collapse_panels=True)


def _legend(blocks: Sequence[int], num_heads: int, matrices: Sequence[DatasetMatrix], cmap: str) -> str:
    lines = [
        "# Block x head matrices (mean over scenes)",
        "",
        f"**Rows = blocks** (top to bottom: {', '.join(map(str, blocks))}, labelled b0, b1, ...), **columns = "
        f"heads** (left to right: 0..{num_heads - 1}, labelled h0, h1, ...). Summaries: colormap {cmap} on 0 .. 1, "
        "dark = low, bright = high; gray = no value.",
        f"**Gains** (`*_gain`, score minus the uniform-head null, larger is better): colormap {colormap.DIVERGING}, "
        "centred at 0 (light gray), **red = above the null, blue = below**, one range symmetric around 0 per gain; "
        "cells that are **not findings** are **muted (grayed out)**: a finding beats both the null and a head on "
        "the query's own (row, col), Benjamini-Hochberg q <= 0.05 over the block x head cells.",
        "Exact values: the matrix entity's `values` (hover it in the selection panel).",
        "Curves (below the matrices, on the `block` timeline): the white line is the mean over heads and",
        "scenes, the blue lines the 95% interval over scenes.",
        "",
        "| matrix | range |",
        "|---|---|",
    ]
    lines += [f"| `{m.kind}/{m.metric}` | {m.vmin:.4g} .. {m.vmax:.4g} |" for m in matrices]
    return "\n".join(lines)


def dataset_recording_bytes(
    blocks: Sequence[int],
    num_heads: int,
    matrices: Sequence[DatasetMatrix],
    curves: Sequence[DatasetCurve],
    summary_markdown: str,
    *,
    cmap: str = "inferno",
    cell: int = 12,
) -> bytes:
    """The dataset recording (module docstring) with its blueprint embedded, as .rrd bytes."""
    kinds = list(dict.fromkeys([m.kind for m in matrices] + [c.kind for c in curves]))
    rec = rr.RecordingStream(APPLICATION_ID, recording_id=uuid.uuid5(_ID_NAMESPACE, "dataset"))
    stream = rec.binary_stream()
    rec.send_blueprint(dataset_blueprint(kinds, matrices, curves), make_active=True, make_default=True)
    md = rr.MediaType.MARKDOWN
    rec.log(SUMMARY_PATH, rr.TextDocument(summary_markdown, media_type=md), static=True)
    rec.log(LEGEND_PATH, rr.TextDocument(_legend(blocks, num_heads, matrices, cmap), media_type=md), static=True)
    lut = colormap.lut(cmap)
    block_index = np.asarray(blocks, np.int64)
    for m in matrices:
        muted = None if m.significant is None else ~np.asarray(m.significant, bool)
        table = colormap.diverging_lut() if m.diverging else lut
        rgb = block_head_matrix(m.values, table, cell, m.vmin, m.vmax, muted=muted)
        extra = rr.AnyValues(values=np.asarray(m.values, np.float64).ravel(), blocks=block_index,
                             vmin=float(m.vmin), vmax=float(m.vmax))  # fmt: skip
        path = matrix_path(m.kind, m.metric)
        rec.log(path, rr.Image(rgb), extra, static=True)
        if m.significant is not None:
            rec.log(path, rr.AnyValues(significant=np.asarray(m.significant, bool).ravel()), static=True)
        rec.log(f"{path}/axes", matrix_axes(blocks, m.values.shape[1], cell), static=True)
    for c in curves:
        path = curve_path(c.kind, c.metric)
        rec.log(path, rr.SeriesLines(names=list(CURVE_SERIES), colors=[(255, 255, 255), (120, 160, 255),
                                                                        (120, 160, 255)],
                                     widths=[2.5, 1.0, 1.0]), static=True)  # fmt: skip
        values = np.stack([c.mean, c.low, c.high], axis=1).astype(np.float64)
        rec.send_columns(
            path,
            indexes=[rr.TimeColumn("block", sequence=block_index)],
            columns=rr.Scalars.columns(scalars=values.reshape(-1)).partition(lengths=[3] * len(values)),
        )
    return _recording_bytes(rec, stream)
