"""Log one VGGT attention run into a Rerun recording.

On the ``block`` timeline you scrub through blocks: the views and the 3D scene show the focus head
(the head mean unless you pick one) and the head grid shows every head at that block. On the
``head`` timeline you scrub through the heads of the focus block (the last captured unless you pick
one), and the TensorView holds every ``[block, head, view, y, x]`` map whichever timeline is active.

Entity paths: paths.py (``Paths``, and the table of every path). Summaries, block x head
matrices and geometric consistency: log_summaries.py. The scene's numbers (cameras, point map,
patch centroids): analysis/scene.py. One call from images to recording (``record_attention``): api/record.py.

Rows of the overlays, 3D patch colors and mass series carry ONE timeline each: ``block`` rows
(one per captured block, focus head) and ``head`` rows (one per head, focus block); a row with
only one timeline is invisible on the other. Summary and peak-distance series are on ``block``
only. Everything else is static. The tensor's block axis indexes the captured blocks in order
(see ``queries/q{i}/{kind}:blocks``).

Many queries: each query keeps its own entities (``q{i}``); ``log_added_queries`` adds more to a
recording later (interactive queries). The default layout shows at most blueprint.MANY_QUERIES
queries' dashboards (then only q0, the query means and a query picker): see blueprint.py for
switching the shown query.

How the attention is drawn (2D overlays, 3D heat, rays, colour scales): log_maps.py; the numbers
(scales, quantization, masses, ray targets): analysis/maps.py. Mass series: ``view_s`` is the
probability on view s's patches, ``camera``/``registers`` on all frames' special tokens; they
sum to 1. Summaries and consistency are computed by analysis.maps.analyze_run (pass one to
``log_run`` to reuse it) and logged by log_summaries.py.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import rerun as rr

from vggt_attn_rerun.analysis.maps import SCALE_MEANING, RunAnalysis, analyze_run
from vggt_attn_rerun.analysis.reference import cameras_geometry
from vggt_attn_rerun.analysis.scene import (
    PointMap,
    Scene,
    build_scene,
    cameras,
    continuous_intrinsics,
    logged_cloud,
    query_point,
)
from vggt_attn_rerun.core.capture import CaptureResult
from vggt_attn_rerun.core.images import LoadedImages
from vggt_attn_rerun.core.tokens import Query, TokenLayout
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.viz.log_maps import KindTarget, log_colorbar, log_query_kind
from vggt_attn_rerun.viz.log_summaries import log_query_means, log_query_summaries
from vggt_attn_rerun.viz.options import RecordingOptions
from vggt_attn_rerun.viz.paths import Paths

QUERY_COLOR = (0, 255, 255)  # cyan: stands out against every perceptual colormap here


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
# The scene and the queries' markers (static)
# --------------------------------------------------------------------------------------------


def _log_scene(rec: rr.RecordingStream, result: CaptureResult, scene: Scene, options: RecordingOptions) -> None:
    """Cameras, images and the point cloud (all static)."""
    lay = result.layout
    h, w = lay.image_size
    extr, intr = cameras(result)
    rgb = scene.rgb
    rec.log(Paths.world, rr.ViewCoordinates.RDF, static=True)

    pick, cloud = logged_cloud(scene.pm, options)
    rec.log(Paths.cloud, rr.Points3D(cloud, colors=rgb.reshape(-1, 3)[pick], radii=-1.5), static=True)

    for s in range(lay.num_frames):
        if scene.valid_cameras[s]:
            # Rerun stores the camera-from-world matrix as given; the relation tells it the direction.
            transform = rr.Transform3D(
                translation=extr[s, :, 3], mat3x3=extr[s, :, :3], relation=rr.TransformRelation.ChildFromParent
            )
            rec.log(Paths.frame(s), transform, static=True)
            # Rerun puts pixel j's centre at j + 0.5, VGGT at j: the principal point moves by half a pixel.
            k = continuous_intrinsics(intr[s])
            pinhole = rr.Pinhole(image_from_camera=k, resolution=[w, h], image_plane_distance=scene.sizes.camera)
            rec.log(Paths.image(s), pinhole, static=True)
        # else: one non-finite camera makes the viewer refuse every view that contains it: keep
        # the photo, drop the camera; scene.warnings says so and the 3D view leaves the frame out.
        rec.log(Paths.image(s), rr.Image(rgb[s]).compress(jpeg_quality=int(options.jpeg_quality)), static=True)
        rec.log(Paths.overlay_root(s), rr.Transform3D(scale=[lay.patch_size, lay.patch_size, 1.0]), static=True)
    log_colorbar(rec, options)
    for line in scene.warnings:
        warnings.warn(line, stacklevel=3)
    rec.log(Paths.notes, rr.TextDocument(notes_text(result, scene), media_type=rr.MediaType.MARKDOWN), static=True)


def notes_text(result: CaptureResult, scene: Scene) -> str:
    """The run's notes (``Paths.notes``): the model's label and what the 3D view cannot show."""
    lines = []
    if result.model_label is not None:
        lines += [f"**{result.model_label.title}**. {result.model_label.note}", ""]
    lines += [f"⚠ {w}" for w in scene.warnings]
    if not scene.warnings:
        lines.append(f"Scene extent {scene.sizes.extent:.3g} (world units): the 3D sizes follow it.")
    return "\n".join(lines)


def _log_query(rec: rr.RecordingStream, i: int, q: Query, lay: TokenLayout, pm: PointMap, rgb: np.ndarray,
               grid_view: int, radius: float, jpeg_quality: int) -> None:  # fmt: skip
    """Marker, 3D point and the head grid's backdrop of query i (all static)."""
    name = f"q{i}"
    backdrop = rr.Image(rgb[grid_view]).compress(jpeg_quality=jpeg_quality)
    rec.log(Paths.heads_backdrop(i), backdrop, static=True)
    centre = q.model_pixel(lay)
    if centre is None:
        return
    ps, (row, col) = lay.patch_size, q.patch(lay)
    marker = rr.Points2D([centre], radii=max(2.0, 0.2 * ps), colors=[QUERY_COLOR], labels=[name], draw_order=30.0)
    box = rr.Boxes2D(mins=[[col * ps, row * ps]], sizes=[[ps, ps]], colors=[QUERY_COLOR], draw_order=29.0)
    rec.log(Paths.marker(q.frame, i), marker, static=True)
    rec.log(Paths.marker_patch(q.frame, i), box, static=True)
    if grid_view == q.frame:
        # No label here: in the small head views it would hide the patch.
        dot = rr.Points2D([centre], radii=max(2.0, 0.2 * ps), colors=[QUERY_COLOR], draw_order=30.0)
        rec.log(Paths.heads_marker(i), dot, static=True)
    point = query_point(pm, lay, q)
    if point is not None:
        dot = rr.Points3D([point], radii=radius, colors=[QUERY_COLOR], labels=[name])
        rec.log(Paths.query_point(i), dot, static=True)


def _info_text(i: int, j: int, q: Query, result: CaptureResult, focus: _Focus, vmax: dict[str, np.ndarray],
               options: RecordingOptions) -> str:  # fmt: skip
    """Notes of query i (``j``: its index in ``result.rows.queries``); ``vmax``: kind -> ``[L, H, S]``."""
    lay, rows = result.layout, result.rows
    rc, centre = q.patch(lay), q.model_pixel(lay)
    where = (
        f"frame {q.frame}, patch row {rc[0]}, col {rc[1]} (centre x={centre[0]:g}, y={centre[1]:g} model pixels)"
        if rc is not None
        else f"frame {q.frame}, special token `{lay.special_names[q.local]}` (no pixel: no marker)"
    )
    head = "head mean" if focus.head is None else f"head {focus.head}"
    gamma = "" if options.gamma == 1 else f" ** {options.gamma:g}"
    clip = "max" if options.clip_percentile >= 100 else f"{options.clip_percentile:g}th percentile"
    label = [f"**{result.model_label.title}**: {result.model_label.note}", ""] if result.model_label else []
    lines = [*label, *([options.note, ""] if options.note else []),
        f"# Query q{i}: {q.label or q.name(lay)}",
        "",
        f"- token: {where}; global index {q.token(lay)}",
        f"- captured blocks: {list(rows.blocks)}; heads: {rows.num_heads}",
        f"- `block` timeline: views show the {head}; head grid: every head of view {focus.grid_views[j]}",
        f"- `head` timeline: views show each head at block {rows.blocks[focus.block_index]}",
        "",
        f"Maps are u8: `u8 = round(255 * clip(p / vmax, 0, 1){gamma})`, p = raw probability on a patch key,",
        f"vmax = the {clip} of the scale's patch probabilities, the query's own key left out.",
        f"Scale `{options.scale}`: {SCALE_MEANING[options.scale]}.",
        f"The scale of the map on screen: `{Paths.scale_note(i, '{kind}')}`.",
        "",
    ]  # fmt: skip
    for kind, vm in vmax.items():
        lines.append(
            f"- {kind}: vmax from {vm.min():.4g} to {vm.max():.4g} over the maps "
            f"(uniform attention would be {1 / lay.num_tokens:.3g})"
        )
    return "\n".join(lines)


def _check_images(result: CaptureResult, images: LoadedImages) -> None:
    lay = result.layout
    if tuple(images.tensor.shape[-2:]) != lay.image_size or images.tensor.shape[-4] != lay.num_frames:
        raise UserError(
            f"images are {list(images.tensor.shape)} but the run saw {lay.num_frames} frames of "
            f"{lay.image_size[0]}x{lay.image_size[1]}: pass the same images to log_run"
        )


def _log_each_query(rec: rr.RecordingStream, result: CaptureResult, options: RecordingOptions, focus: _Focus,
                 scene: Scene, analysis: RunAnalysis, first_index: int) -> None:  # fmt: skip
    """Everything of each query in ``result.rows.queries``, as ``q{first_index + j}``: the scene is logged."""
    rows, lay = result.rows, result.layout
    for j, q in enumerate(rows.queries):
        i = first_index + j
        quality = int(options.jpeg_quality)
        _log_query(rec, i, q, lay, scene.pm, scene.rgb, focus.grid_views[j], scene.sizes.query, quality)
        origin = query_point(scene.pm, lay, q)
        vmax, notes = {}, []
        for kind in focus.kinds:
            target = KindTarget(j, i, kind, focus.head, focus.block_index, focus.grid_views[j], origin)
            vmax[kind] = log_query_kind(rec, result, target, scene, options)
            kind_notes = log_query_summaries(rec, result, j, i, kind, analysis.summaries[kind], analysis.consistency,
                                             analysis.why_not, options)  # fmt: skip
            if kind == "global":
                notes = kind_notes
        text = "\n".join([_info_text(i, j, q, result, focus, vmax, options), *notes])
        rec.log(Paths.info(i), rr.TextDocument(text, media_type=rr.MediaType.MARKDOWN), static=True)


def _analysis(result: CaptureResult, images: LoadedImages, options: RecordingOptions,
              analysis: RunAnalysis | None) -> RunAnalysis:  # fmt: skip
    if analysis is not None:
        return analysis
    geometry = cameras_geometry(options.cameras, images) if options.cameras else None
    return analyze_run(result, options.kinds, int(options.top_k), int(options.consistency_radius), images.transforms,
                       geometry)  # fmt: skip


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


def log_added_queries(rec: rr.RecordingStream, result: CaptureResult, images: LoadedImages, options: RecordingOptions,
                first_index: int, analysis: RunAnalysis | None = None) -> None:  # fmt: skip
    """Log ONLY the per-query data of ``result.rows.queries``, as queries ``q{first_index + j}``.

    Markers, 2D overlays, 3D heat and rays, head grid, tensor, masses, summaries, consistency and
    notes; nothing of the scene (cameras, images, cloud), no means over queries, no query index.
    Use it to add queries to a recording that ``log_run`` made: pass a result of the same run
    (same images and predictions) whose rows hold the new queries, and the first unused index.

    Args:
        rec: the recording stream. result: a capture of the run with the new queries' rows.
        images: the model input of the run. options: as for log_run.
        first_index: the index of the first new query (>= 0): entity names ``q{first_index + j}``.
        analysis: ``analysis.maps.analyze_run`` of ``result`` (None: computed here).
    """
    if isinstance(first_index, bool) or not isinstance(first_index, (int, np.integer)) or first_index < 0:
        raise UserError(f"first_index must be an integer >= 0, got {first_index!r}")
    _check_images(result, images)
    focus = _resolve(options, result)
    scene = build_scene(result, images, options)
    _log_each_query(rec, result, options, focus, scene, _analysis(result, images, options, analysis), int(first_index))


def log_run(rec: rr.RecordingStream, result: CaptureResult, images: LoadedImages, options: RecordingOptions,
            analysis: RunAnalysis | None = None) -> None:  # fmt: skip
    """Log one capture run into ``rec`` (timelines: see the module docstring; entity paths: paths.py).

    The scene (cameras, images, point cloud), then every query (what ``log_added_queries`` logs,
    from index 0), then the means over queries (when there are several) and the query index.

    Args:
        rec: the recording stream; its sinks are the caller's business.
        result: capture(...) of the run; ``result.rows.probs[kind]`` is ``[L, Q, H, S, P]``.
        images: the model input of the run, ``images.tensor [S, 3, H, W]`` in [0, 1].
        options: RecordingOptions (kinds must have been captured).
        analysis: summaries and consistency, ``analysis.maps.analyze_run(result, ...)``; None:
            computed here with the options' top_k and consistency radius.
    """
    _check_images(result, images)
    focus = _resolve(options, result)
    scene = build_scene(result, images, options)
    _log_scene(rec, result, scene, options)
    analysis = _analysis(result, images, options, analysis)
    _log_each_query(rec, result, options, focus, scene, analysis, 0)
    if len(result.rows.queries) > 1:
        log_query_means(rec, result, analysis.summaries, analysis.consistency, options)
    rec.log(Paths.query_index, rr.TextDocument(_index_text(result), media_type=rr.MediaType.MARKDOWN), static=True)
