"""Log one VGGT attention run into a Rerun recording.

On the ``block`` timeline you scrub through blocks: the views and the 3D scene show the focus head
(the head mean unless you pick one) and the head grid shows every head at that block. On the
``head`` timeline you scrub through the heads of the focus block (the last captured unless you pick
one), and the TensorView holds every ``[block, head, view, y, x]`` map whichever timeline is active.

Entity paths: entities.py (``Paths``, and the table of every path). Summaries, block x head
matrices and geometric consistency: summary_logging.py. The scene's numbers (cameras, point map,
patch centroids): scene.py. One call from images to recording (``record_attention``): api.py.

Rows of the overlays, 3D patch colors and mass series carry ONE timeline each: ``block`` rows
(one per captured block, focus head) and ``head`` rows (one per head, focus block); a row with
only one timeline is invisible on the other. Summary and peak-distance series are on ``block``
only. Everything else is static. The tensor's block axis indexes the captured blocks in order
(see ``queries/q{i}/{kind}:blocks``).

Many queries: each query keeps its own entities (``q{i}``); ``log_queries`` adds more to a
recording later (interactive queries). The default layout shows at most blueprint.MANY_QUERIES
queries' dashboards (then only q0, the query means and a query picker): see blueprint.py for
switching the shown query.

Maps are stored as u8: ``u8 = round(255 * clip(p / vmax, 0, 1))`` with ``p`` the raw
probability on a patch key and ``vmax`` the largest patch probability of that query and kind
over all captured blocks, heads and views (one absolute scale shared by all views), or over
each view separately with ``per_view_normalize``. The query's own key is left out of vmax
(self-attention would wash out the rest; the query patch may saturate at 255). Hovering an
overlay shows ``p≈`` the absolute probability of its value. Mass series: ``view_s`` is the
probability on view s's patches, ``camera``/``registers`` on all frames' special tokens; they
sum to 1.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
import rerun as rr

from vggt_attn_rerun.analysis.consistency import Consistency
from vggt_attn_rerun.analysis.scene import (
    PointMap,
    Scene,
    build_scene,
    camera_is_valid,
    cameras,
    logged_cloud,
    query_point,
)
from vggt_attn_rerun.analysis.summaries import Summary, summarize
from vggt_attn_rerun.core.capture import CaptureResult
from vggt_attn_rerun.core.images import LoadedImages
from vggt_attn_rerun.core.tokens import Query, TokenLayout
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.viz import colormap
from vggt_attn_rerun.viz.log_summaries import compute_consistency, log_query_means, log_query_summaries
from vggt_attn_rerun.viz.options import RecordingOptions
from vggt_attn_rerun.viz.paths import MAP_DIMS, Paths, mass_series

QUERY_COLOR = (0, 255, 255)  # cyan: stands out against every perceptual colormap here
_MIN_VMAX = 1e-12  # a view no key of which got attention (frame attention elsewhere) stays 0
# Overlay alpha = min(255, ALPHA_GAIN * 255 * sqrt(v / 255)): transparent at 0 so the photo shows,
# opaque from v = 100 (39% of vmax) so that mid values stand out on textured photos.
ALPHA_GAIN = 1.6


# --------------------------------------------------------------------------------------------
# Options resolved against one run
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Focus:
    """Options resolved against one run."""

    kinds: tuple[str, ...]
    head: int | None  # None = head mean
    block_index: int  # index into rows.blocks
    grid_views: tuple[int, ...]  # per query


def _resolve(options: RecordingOptions, result: CaptureResult) -> _Focus:
    rows, lay = result.rows, result.layout
    missing = [k for k in options.kinds if k not in rows.kinds]
    if missing:
        raise UserError(f"attention kind {missing[0]!r} was not captured: captured kinds are {list(rows.kinds)}")
    if options.focus_head is not None and options.focus_head >= rows.num_heads:
        raise UserError(f"focus_head {options.focus_head} does not exist: valid heads are 0..{rows.num_heads - 1}")
    block = rows.blocks[-1] if options.focus_block is None else options.focus_block
    if options.grid_view is not None and options.grid_view >= lay.num_frames:
        raise UserError(f"grid_view {options.grid_view} does not exist: valid views are 0..{lay.num_frames - 1}")
    grid = tuple(q.frame if options.grid_view is None else options.grid_view for q in rows.queries)
    return _Focus(tuple(options.kinds), options.focus_head, rows.block_index(block), grid)


# --------------------------------------------------------------------------------------------
# Numbers: scales and quantization (plain numpy, no Rerun)
# --------------------------------------------------------------------------------------------


def attention_vmax(
    patches: np.ndarray, per_view: bool = False, self_patch: tuple[int, int, int] | None = None
) -> np.ndarray:
    """The scale of one query and kind: patches ``[L, H, S, gh, gw]`` -> vmax ``[S]``.

    The largest patch probability over blocks, heads and views (the same for every view), or
    over each view separately when ``per_view``. Head means never exceed it, so they share it.
    ``self_patch`` (frame, row, col), the query's own key, is left out: a token's attention to
    itself is often far above the rest and would wash every other patch out (it saturates).
    """
    if self_patch is not None:
        patches = patches.copy()
        patches[:, :, self_patch[0], self_patch[1], self_patch[2]] = 0
    per = patches.max(axis=(0, 1, 3, 4)).astype(np.float64)
    if not per_view:
        per = np.full_like(per, per.max())
    return np.maximum(per, _MIN_VMAX)


def quantize(p: np.ndarray, vmax: np.ndarray | float) -> np.ndarray:
    """``u8 = round(255 * clip(p / vmax, 0, 1))`` in float64, rounding half to even."""
    return np.rint(255.0 * np.clip(np.asarray(p, np.float64) / vmax, 0.0, 1.0)).astype(np.uint8)


def _per_view(vmax: np.ndarray) -> np.ndarray:
    """vmax ``[S]`` shaped to broadcast over ``[..., S, gh, gw]``."""
    return vmax[:, None, None]


def _focus_heads(x: np.ndarray, head: int | None) -> np.ndarray:
    """``[L, H, ...]`` -> ``[L, ...]``: one head, or the head mean."""
    return x.mean(axis=1) if head is None else x[:, head]


def masses(probs: np.ndarray, patch_start: int) -> np.ndarray:
    """probs ``[..., S, P]`` -> ``[..., S + 2]``: patch mass per view, then camera and registers.

    The camera and register columns sum over all frames' special tokens, so the S + 2 values
    sum to 1 for a full attention row.
    """
    views = probs[..., patch_start:].sum(-1)
    camera = probs[..., 0].sum(-1, keepdims=True)
    registers = probs[..., 1:patch_start].sum((-1, -2))[..., None]
    return np.concatenate([views, camera, registers], axis=-1)


# --------------------------------------------------------------------------------------------
# Rerun pieces
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)  # all views of a query and kind share one scale
def annotation_context(vmax: float, cmap: str) -> rr.AnnotationContext:
    """256 classes: value v -> colormap color with alpha rising with v, labeled with its probability.

    Built as one Arrow array (what ``rr.AnnotationContext([rr.AnnotationInfo(...), ...])`` makes,
    equal to it) in ~1 ms instead of ~15 ms: it is built once per query and kind.
    """
    colors = colormap.lut(cmap).astype(np.uint32)
    v = np.arange(256)
    alpha = np.rint(np.minimum(255.0, ALPHA_GAIN * 255 * np.sqrt(v / 255.0))).astype(np.uint32)
    rgba = (colors[:, 0] << 24) | (colors[:, 1] << 16) | (colors[:, 2] << 8) | alpha
    items = [
        {
            "class_id": int(i),
            "class_description": {
                "info": {"id": int(i), "label": f"p≈{i * vmax / 255:.3g}", "color": int(rgba[i])},
                "keypoint_annotations": [],
                "keypoint_connections": [],
            },
        }
        for i in v
    ]
    return rr.AnnotationContext.from_fields(context=pa.array([items], type=_ANNOTATION_CONTEXT_TYPE))


_ANNOTATION_CONTEXT_TYPE = rr.components.AnnotationContextBatch._ARROW_DATATYPE


def _seg_format(layout: TokenLayout) -> rr.components.ImageFormat:
    return rr.components.ImageFormat(width=layout.grid_w, height=layout.grid_h, color_model="L", channel_datatype="U8")


def _send_maps(rec: rr.RecordingStream, path: str, timeline: str, times: Sequence[int], maps: np.ndarray) -> None:
    """maps ``[T, gh, gw]`` u8, one row per time on one timeline."""
    rec.send_columns(
        path,
        indexes=[rr.TimeColumn(timeline, sequence=np.asarray(times, np.int64))],
        columns=rr.SegmentationImage.columns(buffer=np.ascontiguousarray(maps).reshape(len(times), -1)),
    )


def _send_series(rec: rr.RecordingStream, path: str, timeline: str, times: Sequence[int], values: np.ndarray) -> None:
    rec.send_columns(
        path,
        indexes=[rr.TimeColumn(timeline, sequence=np.asarray(times, np.int64))],
        columns=rr.Scalars.columns(scalars=np.asarray(values, np.float64)),
    )


def _send_colors(
    rec: rr.RecordingStream, path: str, timeline: str, times: Sequence[int], values: np.ndarray, cmap: str,
    radius: np.ndarray,
) -> None:  # fmt: skip
    """values ``[T, n]`` u8 -> per-time colors and radii of n static points (full radius ``[n]``)."""
    t, n = values.shape
    colors = colormap.apply(values, cmap).reshape(-1, 3)
    # Radii grow with attention so attended patches stand out from the photo-colored cloud.
    radii = (radius * (0.1 + 0.9 * values / 255.0)).astype(np.float32).reshape(-1)
    rec.send_columns(
        path,
        indexes=[rr.TimeColumn(timeline, sequence=np.asarray(times, np.int64))],
        columns=rr.Points3D.columns(colors=colors, radii=radii).partition(lengths=[n] * t),
    )


def _log_scene(rec: rr.RecordingStream, result: CaptureResult, rgb: np.ndarray, pm: PointMap,
               options: RecordingOptions) -> None:  # fmt: skip
    """Cameras, images and the point cloud (all static)."""
    lay = result.layout
    h, w = lay.image_size
    extr, intr = cameras(result)
    rec.log("world", rr.ViewCoordinates.RDF, static=True)

    pick, cloud, scale = logged_cloud(pm, options)
    rec.log(Paths.cloud, rr.Points3D(cloud, colors=rgb.reshape(-1, 3)[pick], radii=-1.5), static=True)

    for s in range(lay.num_frames):
        if camera_is_valid(extr[s], intr[s]):
            # Rerun stores the camera-from-world matrix as given; the relation tells it the direction.
            transform = rr.Transform3D(
                translation=extr[s, :, 3], mat3x3=extr[s, :, :3], relation=rr.TransformRelation.ChildFromParent
            )
            rec.log(Paths.frame(s), transform, static=True)
            pinhole = rr.Pinhole(image_from_camera=intr[s], resolution=[w, h], image_plane_distance=0.15 * scale)
            rec.log(Paths.image(s), pinhole, static=True)
        else:
            # One non-finite camera (e.g. a zero field of view from an untrained model) makes the
            # viewer refuse every view that contains it: keep the photo, drop the camera, say so.
            warnings.warn(
                f"view {s}: the predicted camera is degenerate (non-finite or zero focal length): not shown",
                stacklevel=3,
            )
        rec.log(Paths.image(s), rr.Image(rgb[s]).compress(jpeg_quality=int(options.jpeg_quality)), static=True)
        rec.log(Paths.overlay_root(s), rr.Transform3D(scale=[lay.patch_size, lay.patch_size, 1.0]), static=True)


def _log_query(rec: rr.RecordingStream, i: int, q: Query, lay: TokenLayout, pm: PointMap, rgb: np.ndarray,
               grid_view: int, scale: float, jpeg_quality: int) -> None:  # fmt: skip
    """Marker, 3D point and the head grid's backdrop of query i (all static)."""
    name = f"q{i}"
    backdrop = rr.Image(rgb[grid_view]).compress(jpeg_quality=jpeg_quality)
    rec.log(f"{Paths.heads_root(i)}/image", backdrop, static=True)
    centre = q.model_pixel(lay)
    if centre is None:
        return
    ps, (row, col) = lay.patch_size, q.patch(lay)
    marker = rr.Points2D([centre], radii=max(2.0, 0.2 * ps), colors=[QUERY_COLOR], labels=[name], draw_order=30.0)
    box = rr.Boxes2D(mins=[[col * ps, row * ps]], sizes=[[ps, ps]], colors=[QUERY_COLOR], draw_order=29.0)
    rec.log(Paths.marker(q.frame, i), marker, static=True)
    rec.log(f"{Paths.marker(q.frame, i)}/patch", box, static=True)
    if grid_view == q.frame:
        # No label here: in the small head views it would hide the patch.
        dot = rr.Points2D([centre], radii=max(2.0, 0.2 * ps), colors=[QUERY_COLOR], draw_order=30.0)
        rec.log(f"{Paths.heads_root(i)}/query", dot, static=True)
    point = query_point(pm, lay, q)
    if point is not None:
        dot = rr.Points3D([point], radii=0.03 * scale, colors=[QUERY_COLOR], labels=[name])
        rec.log(Paths.query_point(i), dot, static=True)


def _info_text(i: int, j: int, q: Query, result: CaptureResult, focus: _Focus, vmax: dict[str, np.ndarray],
               options: RecordingOptions) -> str:  # fmt: skip
    """Notes of query i (``j``: its index in ``result.rows.queries``)."""
    lay, rows = result.layout, result.rows
    rc = q.patch(lay)
    where = (
        f"frame {q.frame}, patch row {rc[0]}, col {rc[1]} (centre x={q.model_pixel(lay)[0]:g}, "
        f"y={q.model_pixel(lay)[1]:g} model pixels)"
        if rc is not None
        else f"frame {q.frame}, special token `{lay.special_names[q.local]}` (no pixel: no marker)"
    )
    head = "head mean" if focus.head is None else f"head {focus.head}"
    per_view = options.per_view_normalize
    scale = "per view (colors not comparable across views)" if per_view else "one absolute scale for all views"
    lines = [
        f"# Query q{i}: {q.label or q.name(lay)}",
        "",
        f"- token: {where}; global index {q.token(lay)}",
        f"- captured blocks: {list(rows.blocks)}; heads: {rows.num_heads}",
        f"- `block` timeline: views show the {head}; head grid: every head of view {focus.grid_views[j]}",
        f"- `head` timeline: views show each head at block {rows.blocks[focus.block_index]}",
        "",
        "Maps are u8: `u8 = round(255 * clip(p / vmax, 0, 1))`, p = raw probability on a patch key.",
        f"Scale: {scale}.",
        "",
    ]
    for kind, vm in vmax.items():
        shown = (
            f"{vm[0]:.4g}"
            if not options.per_view_normalize
            else ", ".join(f"view {s}: {v:.4g}" for s, v in enumerate(vm))
        )
        lines.append(f"- {kind}: vmax = {shown} (uniform attention would be {1 / lay.num_tokens:.3g})")
    return "\n".join(lines)


def _log_query_kind(rec: rr.RecordingStream, result: CaptureResult, j: int, i: int, kind: str, focus: _Focus,
                    options: RecordingOptions, centroids: np.ndarray, kept: np.ndarray,
                    radius: np.ndarray) -> np.ndarray:  # fmt: skip
    """All attention data of query j of the result, logged as query i, for one kind. Returns its vmax ``[S]``."""
    rows, lay = result.rows, result.layout
    blocks, heads = list(rows.blocks), list(range(rows.num_heads))
    lf, cmap = focus.block_index, options.colormap
    patches = rows.patches(kind)[:, j].detach().float().cpu().numpy()  # [L, H, S, gh, gw]
    q = rows.queries[j]
    rc = q.patch(lay)
    vmax = attention_vmax(patches, options.per_view_normalize, None if rc is None else (q.frame, *rc))  # [S]
    all_u8 = quantize(patches, _per_view(vmax))  # [L, H, S, gh, gw]
    by_block = quantize(_focus_heads(patches.astype(np.float64), focus.head), _per_view(vmax))  # [L, S, gh, gw]
    by_head = all_u8[lf]  # [H, S, gh, gw]: every head at the focus block

    rec.log(Paths.scales(i, kind), rr.AnyValues(vmax=vmax, blocks=np.asarray(blocks)), static=True)
    rec.log(Paths.maps(i, kind), rr.Tensor(all_u8, dim_names=list(MAP_DIMS), value_range=(0, 255)), static=True)

    fmt = _seg_format(lay)
    for s in range(lay.num_frames):
        path = Paths.overlay(s, i, kind)
        rec.log(path, rr.SegmentationImage.from_fields(format=fmt, draw_order=10.0, opacity=1.0), static=True)
        rec.log(path, annotation_context(float(vmax[s]), cmap), static=True)
        _send_maps(rec, path, "block", blocks, by_block[:, s])
        _send_maps(rec, path, "head", heads, by_head[:, s])

    g = focus.grid_views[j]
    rec.log(
        f"{Paths.heads_root(i)}/{kind}",
        rr.Transform3D(scale=[lay.patch_size, lay.patch_size, 1.0]),
        static=True,
    )
    rec.log(f"{Paths.heads_root(i)}/{kind}", annotation_context(float(vmax[g]), cmap), static=True)
    for h in heads:
        path = Paths.head(i, kind, h)
        rec.log(path, rr.SegmentationImage.from_fields(format=fmt, draw_order=10.0, opacity=1.0), static=True)
        _send_maps(rec, path, "block", blocks, all_u8[:, h, g])

    if kept.any():
        path = Paths.patch_points(i, kind)
        rec.log(path, rr.Points3D.from_fields(positions=centroids[kept]), static=True)
        _send_colors(rec, path, "block", blocks, by_block.reshape(len(blocks), -1)[:, kept], cmap, radius)
        _send_colors(rec, path, "head", heads, by_head.reshape(len(heads), -1)[:, kept], cmap, radius)

    probs = rows.probs[kind][:, j].detach().double().cpu().numpy()  # [L, H, S, P]
    m_block = masses(_focus_heads(probs, focus.head), lay.patch_start)  # [L, S + 2]
    m_head = masses(probs[lf], lay.patch_start)  # [H, S + 2]
    for k, series in enumerate(mass_series(lay.num_frames)):
        path = Paths.mass(i, kind, series)
        rec.log(path, rr.SeriesLines(names=[series.replace("_", " ")]), static=True)
        _send_series(rec, path, "block", blocks, m_block[:, k])
        _send_series(rec, path, "head", heads, m_head[:, k])
    return vmax


# --------------------------------------------------------------------------------------------
# Logging a run
# --------------------------------------------------------------------------------------------


def _check_images(result: CaptureResult, images: LoadedImages) -> None:
    lay = result.layout
    if tuple(images.tensor.shape[-2:]) != lay.image_size or images.tensor.shape[-4] != lay.num_frames:
        raise UserError(
            f"images are {list(images.tensor.shape)} but the run saw {lay.num_frames} frames of "
            f"{lay.image_size[0]}x{lay.image_size[1]}: pass the same images to log_run"
        )


@dataclass
class _Logged:
    """Per-run numbers of one _log_queries call, for the means over queries."""

    summaries: dict[str, Summary]
    consistency: Consistency | None


def _log_queries(rec: rr.RecordingStream, result: CaptureResult, images: LoadedImages, options: RecordingOptions,
                 focus: _Focus, scene: Scene, first_index: int) -> _Logged:  # fmt: skip
    rows, lay = result.rows, result.layout
    summaries = {kind: summarize(rows, kind, top_k=int(options.top_k)) for kind in focus.kinds}
    cons, why_not = compute_consistency(result, images, options) if "global" in focus.kinds else (None, "")
    for j, q in enumerate(rows.queries):
        i = first_index + j
        _log_query(rec, i, q, lay, scene.pm, scene.rgb, focus.grid_views[j], scene.scale, int(options.jpeg_quality))
        vmax, notes = {}, []
        for kind in focus.kinds:
            vmax[kind] = _log_query_kind(rec, result, j, i, kind, focus, options, scene.centroids, scene.kept,
                                         scene.radius)  # fmt: skip
            kind_notes = log_query_summaries(rec, result, j, i, kind, summaries[kind], cons, why_not, options)
            if kind == "global":
                notes = kind_notes
        text = "\n".join([_info_text(i, j, q, result, focus, vmax, options), *notes])
        rec.log(Paths.info(i), rr.TextDocument(text, media_type=rr.MediaType.MARKDOWN), static=True)
    return _Logged(summaries, cons)


def _index_text(result: CaptureResult) -> str:
    lay, queries = result.layout, result.rows.queries
    lines = [
        f"# Queries of this run ({len(queries)})",
        "",
        "Every query has its own entities: `queries/q{i}/...`, `world/frames/{s}/image/attention/q{i}/...`,",
        "`heads/q{i}/...`. To look at another query than the layout shows: select a view, and in the",
        "selection panel edit its entity path filter (replace `q0` by `q7`), or make a layout for it",
        "(`default_blueprint(..., shown_queries=[7])`, see blueprint.py).",
        "",
        "| query | token | frame | patch (row, col) |",
        "|---|---|---|---|",
    ]
    for i, q in enumerate(queries):
        rc = q.patch(lay)
        patch = f"{rc[0]}, {rc[1]}" if rc is not None else lay.special_names[q.local]
        lines.append(f"| q{i} | {q.label or q.name(lay)} | {q.frame} | {patch} |")
    return "\n".join(lines)


def log_queries(rec: rr.RecordingStream, result: CaptureResult, images: LoadedImages, options: RecordingOptions,
                first_index: int) -> None:  # fmt: skip
    """Log ONLY the per-query data of ``result.rows.queries``, as queries ``q{first_index + j}``.

    Markers, 2D overlays, 3D patch colors, head grid, tensor, masses, summaries, consistency and
    notes; nothing of the scene (cameras, images, cloud), no means over queries, no query index.
    Use it to add queries to a recording that ``log_run`` made: pass a result of the same run
    (same images and predictions) whose rows hold the new queries, and the first unused index.

    Args:
        rec: the recording stream. result: a capture of the run with the new queries' rows.
        images: the model input of the run. options: as for log_run.
        first_index: the index of the first new query (>= 0): entity names ``q{first_index + j}``.
    """
    if isinstance(first_index, bool) or not isinstance(first_index, (int, np.integer)) or first_index < 0:
        raise UserError(f"first_index must be an integer >= 0, got {first_index!r}")
    _check_images(result, images)
    focus = _resolve(options, result)
    _log_queries(rec, result, images, options, focus, build_scene(result, images, options), int(first_index))


def log_run(rec: rr.RecordingStream, result: CaptureResult, images: LoadedImages, options: RecordingOptions) -> None:
    """Log one capture run into ``rec`` (timelines: see the module docstring; entity paths: entities.py).

    The scene (cameras, images, point cloud), then every query (``log_queries`` with first
    index 0), then the means over queries (when there are several) and the query index.

    Args:
        rec: the recording stream; its sinks are the caller's business.
        result: capture(...) of the run; ``result.rows.probs[kind]`` is ``[L, Q, H, S, P]``.
        images: the model input of the run, ``images.tensor [S, 3, H, W]`` in [0, 1].
        options: RecordingOptions (kinds must have been captured).
    """
    _check_images(result, images)
    focus = _resolve(options, result)
    scene = build_scene(result, images, options)
    _log_scene(rec, result, scene.rgb, scene.pm, options)
    logged = _log_queries(rec, result, images, options, focus, scene, 0)
    if len(result.rows.queries) > 1:
        log_query_means(rec, result, logged.summaries, logged.consistency, options)
    rec.log(Paths.query_index, rr.TextDocument(_index_text(result), media_type=rr.MediaType.MARKDOWN), static=True)
