"""Log the attention of one query and kind: 2D overlays, 3D heat, rays, head grid, tensor, masses.

The encoding (numbers: analysis/maps.py; colors: colormap.py):

- **2D overlays** (``world/frames/{s}/image/attention/q{i}/{kind}``): a patch-grid u8
  SegmentationImage under the image's ``[patch, patch, 1]`` scale; an AnnotationContext maps a
  value to the colormap color with alpha rising from 0 (cold: the photo shows) to opaque (hot).
  The (static) context labels each value with the raw probability it stands for under
  ``scale="global"``, else with its fraction of the map's scale (overlay_context says why).
- **3D heat** (``world/attention/q{i}/{kind}``): one point per patch at its mean 3D point, static
  positions; per row, the value as the point's class id (a static context gives the colormap's
  visible upper part and the same labels as the overlays, on hover) and a radius from 0.35x to
  3.35x the scene's point size (analysis.scene.SceneSizes: the median half-footprint of a
  patch, bounded by the scene's extent), growing with the value squared.
- **Peaks** (``.../{kind}/peaks``): per row, white outlines on each view's ``options.peaks``
  hottest patches (analysis.maps.peak_patches: hot on screen and above the view's mean; none in
  a flat view) and white boxes around their 3D points, so a peaked map reads at a glance.
- **Colour bar** (``legend/colorbar``, static, once per run): the colormap from 0 (cold, left)
  to the scale of the map on screen (hot, right); the scale note gives that scale.
- **Rays** (``world/attention/q{i}/{kind}/rays``, global attention): per row, line strips from
  the query's 3D point to its ``options.rays`` most attended patches of the other views
  (analysis.maps.ray_targets on the raw probabilities), colored like their patch and wider the
  larger their share of the top target's probability.
- **Scale** (``queries/q{i}/{kind}/scale``): per row, a note with the scale of the map on screen.

Rows carry ONE timeline each: ``block`` rows (every captured block, focus head or head mean) and
``head`` rows (every head at the focus block). The head grid (``heads/q{i}/{kind}/{h}``) has
its ``block`` rows and one ``head`` row (head h at the focus block); its static context labels
values as a fraction of each map's scale (every map's scale is in ``queries/q{i}/{kind}:vmax``,
flat ``[block, head, view]``). The tensor holds every map, each under its own scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import rerun as rr

from vggt_attn_rerun.analysis.maps import (
    SCALE_MEANING,
    QueryMaps,
    dequantize,
    masses,
    peak_patches,
    query_maps,
    ray_targets,
)
from vggt_attn_rerun.analysis.scene import Scene
from vggt_attn_rerun.core.capture import CaptureResult
from vggt_attn_rerun.core.tokens import TokenLayout
from vggt_attn_rerun.viz import colormap
from vggt_attn_rerun.viz.options import RecordingOptions
from vggt_attn_rerun.viz.paths import MAP_DIMS, Paths, block_timelines, mass_series

#: 3D point radius = the scene's point size (SceneSizes.point) x (POINT_MIN + POINT_GAIN * (v / 255) ** 2):
#: squared so that only the hottest patches grow large (a diffuse map is no wall of spheres)
POINT_MIN, POINT_GAIN = 0.35, 3.0
#: ray width in UI points = RAY_MIN + RAY_GAIN * (p / p of the top target)
RAY_MIN, RAY_GAIN = 0.5, 2.5

# The Arrow type of one AnnotationContext, read off a public batch once (no private attribute).
_CONTEXT_TYPE = rr.components.AnnotationContextBatch([rr.AnnotationInfo(id=0, label="", color=0)]).as_arrow_array().type


def _packed(rgba: np.ndarray) -> np.ndarray:
    rgba = rgba.astype(np.uint32)
    return (rgba[:, 0] << 24) | (rgba[:, 1] << 16) | (rgba[:, 2] << 8) | rgba[:, 3]


def _context_items(labels: Sequence[str], rgba: np.ndarray) -> list[dict]:
    return [
        {
            "class_id": v,
            "class_description": {
                "info": {"id": v, "label": labels[v], "color": int(rgba[v])},
                "keypoint_annotations": [],
                "keypoint_connections": [],
            },
        }
        for v in range(256)
    ]


def overlay_context(cmap: str, gamma: float, vmax: float | None = None, rgba: np.ndarray | None = None
                    ) -> rr.AnnotationContext:  # fmt: skip
    """Value v -> overlay color (``rgba [256, 4]``, default colormap.overlay_rgba), labeled with
    what v stands for.

    With one scale for every map (``vmax``), the label is the raw probability ``p≈...``;
    otherwise the fraction of the map's own scale (the scale is in the scale note). Rerun 0.41
    applies only STATIC annotation contexts (checked by rendering: a context logged on a
    timeline is ignored), so a label cannot follow a per-map scale. Built as Arrow data (what
    ``rr.AnnotationContext([rr.AnnotationInfo(...), ...])`` makes) in ~1 ms instead of ~15 ms.
    """
    x = dequantize(np.arange(256), 1.0 if vmax is None else float(vmax), gamma)
    labels = [f"p≈{v:.3g}" if vmax is not None else f"{v:.3g} x the map's vmax" for v in x]
    items = _context_items(labels, _packed(colormap.overlay_rgba(cmap) if rgba is None else rgba))
    return rr.AnnotationContext.from_fields(context=pa.array([items], type=_CONTEXT_TYPE))


@dataclass
class _Rows:
    """The rows of one timeline: times, maps p and u8 ``[T, S, gh, gw]``, scales ``[T, S]``."""

    timeline: str
    times: list[int]
    p: np.ndarray
    u8: np.ndarray
    vmax: np.ndarray


def _index(timeline: str, times: Sequence[int]) -> list[rr.TimeColumn]:
    timelines = block_timelines(timeline, times)  # + the depth timeline inside paths.rooted(..., depth)
    return [rr.TimeColumn(name, sequence=np.asarray(t, np.int64)) for name, t in timelines.items()]


def _seg_format(layout: TokenLayout) -> rr.components.ImageFormat:
    return rr.components.ImageFormat(width=layout.grid_w, height=layout.grid_h, color_model="L", channel_datatype="U8")


def _send_maps(rec: rr.RecordingStream, path: str, timeline: str, times: Sequence[int], maps: np.ndarray) -> None:
    """maps ``[T, gh, gw]`` u8, one row per time on one timeline."""
    buffer = np.ascontiguousarray(maps).reshape(len(times), -1)
    rec.send_columns(path, indexes=_index(timeline, times), columns=rr.SegmentationImage.columns(buffer=buffer))


def _one_scale(rows: Sequence[_Rows], options: RecordingOptions) -> float | None:
    """The scale of every map under ``scale="global"`` (labels can then give p), else None."""
    return float(rows[0].vmax.flat[0]) if options.scale == "global" else None


def _log_overlays(rec: rr.RecordingStream, i: int, kind: str, lay: TokenLayout, rows: Sequence[_Rows],
                  options: RecordingOptions) -> None:  # fmt: skip
    fmt = _seg_format(lay)
    context = overlay_context(options.colormap, float(options.gamma), _one_scale(rows, options))
    for s in range(lay.num_frames):
        path = Paths.overlay(s, i, kind)
        rec.log(path, rr.SegmentationImage.from_fields(format=fmt, draw_order=10.0, opacity=1.0), context, static=True)
        for r in rows:
            _send_maps(rec, path, r.timeline, r.times, r.u8[:, s])


def _log_head_grid(rec: rr.RecordingStream, i: int, kind: str, lay: TokenLayout, maps: QueryMaps, blocks: list[int],
                   focus_block: int, grid_view: int, options: RecordingOptions) -> None:  # fmt: skip
    root = Paths.heads_kind(i, kind)
    rec.log(root, rr.Transform3D(scale=[lay.patch_size, lay.patch_size, 1.0]), static=True)
    rec.log(root, overlay_context(options.colormap, float(options.gamma)), static=True)
    fmt = _seg_format(lay)
    for h in range(maps.all_u8.shape[1]):
        path = Paths.head(i, kind, h)
        rec.log(path, rr.SegmentationImage.from_fields(format=fmt, draw_order=10.0, opacity=1.0), static=True)
        _send_maps(rec, path, "block", blocks, maps.all_u8[:, h, grid_view])
        # On the head timeline the grid shows the focus block: one row at head 0 holds for every head.
        _send_maps(rec, path, "head", [0], maps.all_u8[focus_block : focus_block + 1, h, grid_view])


def _log_heat(rec: rr.RecordingStream, path: str, scene: Scene, rows: Sequence[_Rows], options: RecordingOptions,
              one_scale: float | None) -> None:  # fmt: skip
    """Static patch points and a static context (value -> opaque visible color, label as for the
    overlays, shown on hover); per row, each point's value as its class id and a radius that
    grows with it. One u16 and one radius per point and row: colors and label strings per point
    would double the .rrd at VGGT-1B's size."""
    positions = scene.centroids[scene.kept]
    rgba = colormap.overlay_rgba(options.colormap)
    rgba[:, 3] = 255
    context = overlay_context(options.colormap, float(options.gamma), one_scale, rgba)
    rec.log(path, rr.Points3D.from_fields(positions=positions, show_labels=False), context, static=True)
    size = scene.sizes.point * (POINT_MIN + POINT_GAIN * (np.arange(256) / 255.0) ** 2)
    for r in rows:
        values = r.u8.reshape(len(r.times), -1)[:, scene.kept]  # [T, n]
        columns = rr.Points3D.columns(class_ids=values.reshape(-1).astype(np.uint16),
                                      radii=size[values].astype(np.float32).reshape(-1))  # fmt: skip
        columns = columns.partition(lengths=[values.shape[1]] * len(r.times))
        rec.send_columns(path, indexes=_index(r.timeline, r.times), columns=columns)


def _log_rays(rec: rr.RecordingStream, path: str, origin: np.ndarray, frame: int, lay: TokenLayout, scene: Scene,
              rows: Sequence[_Rows], options: RecordingOptions) -> None:  # fmt: skip
    """Per row: strips from ``origin`` to the top-k patches of the other views (that have a point)."""
    view_of = np.repeat(np.arange(lay.num_frames), lay.grid_h * lay.grid_w)
    candidates = scene.kept & (view_of != frame)
    for r in rows:
        p, u8 = r.p.reshape(len(r.times), -1), r.u8.reshape(len(r.times), -1)
        idx = ray_targets(p, candidates, int(options.rays))  # [T, k]
        if idx.shape[1] == 0:  # no other view has a kept patch
            return
        t = np.arange(len(r.times))[:, None]
        ends = scene.centroids[idx]  # [T, k, 3]
        strips = np.stack([np.broadcast_to(origin, ends.shape), ends], axis=2).reshape(-1, 2, 3)
        weight = p[t, idx] / np.maximum(p[t, idx[:, :1]], 1e-30)  # [T, k], 1 for the top target
        columns = rr.LineStrips3D.columns(
            strips=list(strips.astype(np.float32)),
            colors=colormap.visible_colors(u8[t, idx], options.colormap).reshape(-1, 3),
            radii=-(RAY_MIN + RAY_GAIN * weight).astype(np.float32).reshape(-1),  # negative: UI points
        ).partition(lengths=[idx.shape[1]] * len(r.times))
        rec.send_columns(path, indexes=_index(r.timeline, r.times), columns=columns)


#: the colour of the peak outlines: white stands out on every colormap here and on the photos
PEAK_COLOR = (255, 255, 255)
#: the 3D boxes are half-transparent wireframes: filled, they would hide the hot point inside
#: them and take the clicks meant for it (a clicked patch point becomes a query)
PEAK_ALPHA_3D = 120


def _log_peaks(rec: rr.RecordingStream, i: int, kind: str, lay: TokenLayout, scene: Scene, rows: Sequence[_Rows],
               self_patch: tuple[int, int, int] | None, options: RecordingOptions) -> None:  # fmt: skip
    """Per row: outlines on each view's hottest patches (patch units) and boxes around their 3D points."""
    for r in rows:
        peaks = peak_patches(r.p, r.u8, int(options.peaks), self_patch)  # [T, S, gh, gw]
        for s in range(lay.num_frames):
            t_idx, row, col = np.nonzero(peaks[:, s])
            columns = rr.Boxes2D.columns(
                centers=np.stack([col, row], -1).astype(np.float32).reshape(-1, 2) + 0.5,
                half_sizes=np.full((len(row), 2), 0.5, np.float32),
                colors=np.tile(np.array(PEAK_COLOR, np.uint8), (len(row), 1)),
                radii=np.full(len(row), -1.5, np.float32),  # negative: UI points
            ).partition(lengths=np.bincount(t_idx, minlength=len(r.times)).tolist())
            rec.send_columns(Paths.peaks(s, i, kind), indexes=_index(r.timeline, r.times), columns=columns)
        if scene.kept.any():
            flat = peaks.reshape(len(r.times), -1) & scene.kept[None]  # [T, S * gh * gw]
            t_idx, idx = np.nonzero(flat)
            half = np.full((len(idx), 3), scene.sizes.peak, np.float32)
            columns = rr.Boxes3D.columns(
                centers=scene.centroids[idx].astype(np.float32).reshape(-1, 3), half_sizes=half,
                colors=np.tile(np.array([*PEAK_COLOR, PEAK_ALPHA_3D], np.uint8), (len(idx), 1)),
                radii=np.full(len(idx), -0.5, np.float32),
            ).partition(lengths=np.bincount(t_idx, minlength=len(r.times)).tolist())  # fmt: skip
            rec.send_columns(Paths.peaks_3d(i, kind), indexes=_index(r.timeline, r.times), columns=columns)
    wireframe = rr.Boxes3D.from_fields(fill_mode=rr.components.FillMode.MajorWireframe)
    rec.log(Paths.peaks_3d(i, kind), wireframe, static=True)


def log_colorbar(rec: rr.RecordingStream, options: RecordingOptions) -> None:
    """``legend/colorbar``: the colormap from 0 (cold, left) to the map's scale (hot, right), static."""
    rgb = colormap.visible_colors(np.arange(256), options.colormap).reshape(1, 256, 3)
    rec.log(Paths.colorbar, rr.Image(np.repeat(rgb, 12, axis=0).astype(np.uint8)), static=True)


def _scale_note(label: str, vmax: np.ndarray, options: RecordingOptions) -> str:
    how = SCALE_MEANING[options.scale]
    clip = "" if options.clip_percentile >= 100 else f" ({options.clip_percentile:g}th percentile, not the max)"
    top = f"{vmax[0]:.3g}" if options.scale != "view" else ", ".join(f"v{s} {v:.3g}" for s, v in enumerate(vmax))
    gamma = "" if options.gamma == 1 else f", gamma {options.gamma:g}"
    return (
        f"**{label}**: colour scale 0 .. {top} = {how}{clip}, query's own key excluded{gamma}. "
        "Cold = transparent, small; hot = opaque, large. Hover a patch for its share of the scale."
    )


def marker_legend(i: int, options: RecordingOptions) -> str:
    """What each marker of query i means (the 2D views and the 3D view)."""
    peaks = f"white outlines: the {options.peaks} hottest patches of each view (boxes in 3D)"
    return (
        f"**Markers**: cyan dot + box `q{i}` = the query; magenta cross `q{i} projected` + window = the "
        f"query's 3D point seen from another view; {peaks if options.peaks else 'no peak outlines'}."
    )


def _note_header(result: CaptureResult, scene: Scene) -> str:
    """The lines above every scale note: the model's label and what the 3D view cannot show."""
    lines = [f"**{result.model_label.title}** (see notes)."] if result.model_label is not None else []
    lines += [f"⚠ {w.split(':')[0]}: see notes." for w in scene.warnings]
    return "\n\n".join(lines) + ("\n\n" if lines else "")


def _log_scale_notes(rec: rr.RecordingStream, path: str, rows: Sequence[_Rows], labels: Sequence[list[str]],
                     header: str, legend: str, options: RecordingOptions) -> None:  # fmt: skip
    rec.log(path, rr.TextDocument.from_fields(media_type=rr.MediaType.MARKDOWN), static=True)
    last = f"\n\n{legend}" + (f"\n\n{options.note}" if options.note else "")
    for r, names in zip(rows, labels, strict=True):
        texts = [header + _scale_note(n, v, options) + last for n, v in zip(names, r.vmax, strict=True)]
        rec.send_columns(path, indexes=_index(r.timeline, r.times), columns=rr.TextDocument.columns(text=texts))


def _log_masses(rec: rr.RecordingStream, result: CaptureResult, j: int, i: int, kind: str, head: int | None,
                focus_block: int) -> None:  # fmt: skip
    rows, lay = result.rows, result.layout
    probs = rows.probs[kind][:, j].detach().double().cpu().numpy()  # [L, H, S, P]
    focused = probs.mean(axis=1) if head is None else probs[:, head]
    per_block = masses(focused, lay.patch_start, lay.num_cameras)  # [L, S + C + 1]
    per_head = masses(probs[focus_block], lay.patch_start, lay.num_cameras)  # [H, S + C + 1]
    for k, series in enumerate(mass_series(lay.num_frames, lay.num_cameras)):
        path = Paths.mass(i, kind, series)
        rec.log(path, rr.SeriesLines(names=[series.replace("_", " ")]), static=True)
        for timeline, times, values in (("block", rows.blocks, per_block), ("head", range(rows.num_heads), per_head)):
            rec.send_columns(path, indexes=_index(timeline, list(times)),
                             columns=rr.Scalars.columns(scalars=values[:, k]))  # fmt: skip


@dataclass(frozen=True)
class KindTarget:
    """What to log: query ``j`` of the result as query ``i``, one kind, with the run's focus.

    ``head``: the focus head (None = head mean); ``focus_block``: an index into the captured
    blocks; ``grid_view``: the head grid's view; ``origin``: the query's 3D point (None: no rays).
    """

    j: int
    i: int
    kind: str
    head: int | None
    focus_block: int
    grid_view: int
    origin: np.ndarray | None


def _query_maps(result: CaptureResult, t: KindTarget, options: RecordingOptions) -> QueryMaps:
    lay, q = result.layout, result.rows.queries[t.j]
    rc = q.patch(lay)
    patches = result.rows.patches(t.kind)[:, t.j].detach().double().cpu().numpy()  # [L, H, S, gh, gw]
    return query_maps(patches, t.head, t.focus_block, options.scale, float(options.gamma),
                      float(options.clip_percentile), None if rc is None else (q.frame, *rc))  # fmt: skip


def log_query_kind(rec: rr.RecordingStream, result: CaptureResult, t: KindTarget, scene: Scene,
                   options: RecordingOptions) -> np.ndarray:  # fmt: skip
    """All attention data of one query and kind (see KindTarget). Returns the maps' scales ``[L, H, S]``."""
    rows, lay, i, kind = result.rows, result.layout, t.i, t.kind
    maps = _query_maps(result, t, options)
    blocks, heads = list(rows.blocks), list(range(rows.num_heads))
    by_block = _Rows("block", blocks, maps.block_p, maps.block_u8, maps.block_vmax)
    by_head = _Rows("head", heads, maps.head_p, maps.head_u8, maps.head_vmax)

    scales = rr.AnyValues(vmax=maps.all_vmax.reshape(-1), vmax_shape=list(maps.all_vmax.shape), blocks=blocks)
    rec.log(Paths.scales(i, kind), scales, static=True)
    rec.log(Paths.maps(i, kind), rr.Tensor(maps.all_u8, dim_names=list(MAP_DIMS), value_range=(0, 255)), static=True)
    _log_overlays(rec, i, kind, lay, (by_block, by_head), options)
    _log_head_grid(rec, i, kind, lay, maps, blocks, t.focus_block, t.grid_view, options)
    if scene.kept.any():
        _log_heat(rec, Paths.patch_points(i, kind), scene, (by_block, by_head), options,
                  _one_scale((by_block,), options))  # fmt: skip
        if options.peaks > 0:
            rc = rows.queries[t.j].patch(lay)
            self_patch = None if rc is None else (rows.queries[t.j].frame, *rc)
            _log_peaks(rec, i, kind, lay, scene, (by_block, by_head), self_patch, options)
        if kind == "global" and t.origin is not None and options.rays > 0:
            frame = rows.queries[t.j].frame
            _log_rays(rec, Paths.rays(i, kind), t.origin, frame, lay, scene, (by_block, by_head), options)
    who = "head mean" if t.head is None else f"head {t.head}"
    block_labels = [f"block {b}, {who}" for b in blocks]
    head_labels = [f"block {blocks[t.focus_block]}, head {h}" for h in heads]
    header, legend = _note_header(result, scene), marker_legend(i, options)
    _log_scale_notes(rec, Paths.scale_note(i, kind), (by_block, by_head), (block_labels, head_labels), header, legend,
                     options)  # fmt: skip
    _log_masses(rec, result, t.j, i, kind, t.head, t.focus_block)
    return maps.all_vmax
