"""Log one VGGT attention run into a Rerun recording.

On the ``block`` timeline you scrub through blocks: the views and the 3D scene show the focus head
(the head mean unless you pick one) and the head grid shows every head at that block. On the
``head`` timeline you scrub through the heads of the focus block (the last captured unless you pick
one), and the TensorView holds every ``[block, head, view, y, x]`` map whichever timeline is active.

Entity paths (``s`` a frame, ``i`` a query, ``kind`` "frame" or "global", ``h`` a head)::

    world                                       ViewCoordinates RDF: VGGT's first camera, OpenCV axes
    world/frames/{s}                            Transform3D, camera-from-world (ChildFromParent)
    world/frames/{s}/image                      Pinhole + the model-resolution input image (JPEG)
    world/frames/{s}/image/attention            Transform3D scale [patch, patch, 1]: patch grid -> pixels
    world/frames/{s}/image/attention/q{i}/{kind}  SegmentationImage [gh, gw] u8 + AnnotationContext
    world/frames/{s}/image/queries/q{i}         Points2D marker at the query patch centre (+ /patch box)
    world/points                                Points3D point map, confidence-filtered, image colors
    world/queries/q{i}                          Points3D: the query's predicted 3D point
    world/attention/q{i}/{kind}                 Points3D, one per patch (positions static, colors per time)
    heads/q{i}/image                            the grid view's image (head grid backdrop)
    heads/q{i}/{kind}/{h}                       SegmentationImage of head h on the grid view (block only)
    queries/q{i}/info                           TextDocument: the query, scales, quantization
    queries/q{i}/{kind}                         AnyValues: vmax per view, captured blocks
    queries/q{i}/{kind}/maps                    Tensor u8 [block, head, view, y, x] (all maps, static)
    queries/q{i}/{kind}/mass/{view_s,camera,registers}  Scalars: attention mass per target
    queries/q{i}/{kind}/summary/{metric}        Scalars, block timeline: one series per head + "head mean"
    queries/q{i}/{kind}/matrix/{metric}         Image [L*cell, H*cell, 3]: block x head matrix (static)
    queries/q{i}/{kind}/matrix/legend           TextDocument: rows = blocks, columns = heads, color ranges
    queries/q{i}/global/consistency/{score,control_score}  Image: block x head consistency matrices
    queries/q{i}/global/consistency/peak_dist   Scalars, block timeline: peak distance (pixels, head
                                                mean), one series per valid view
    world/frames/{s}/image/queries/q{i}/projected  Points2D (magenta): the query's 3D point projected
                                                into view s (+ /cross, /window); valid views only
    queries/mean/{kind}/summary|matrix/...      the same averaged over the run's queries (Q > 1), and
    queries/mean/global/consistency/{score,control_score}  (means over all valid query-view pairs)
    queries/index                               TextDocument: every query (name, token, frame, patch)

Summaries (``metric`` in summaries.METRICS: own_view_mass, other_views_mass, camera_mass,
register_mass, entropy, top_k_mass; definitions in summaries.py) are computed from the full
rows; the "head mean" series is the mean of the heads' values. One entity per metric with
H + 1 series (not one entity per series: 17x fewer chunks, 15x faster to log for VGGT).
Matrix images come from ``summaries.block_head_matrix``: block l is the l-th row of cells
(top = first captured block), head h the h-th column, each cell ``options.matrix_cell``
pixels; summary matrices map 0..1 onto the colormap (all metrics are fractions), consistency
matrices 0..max(score, control score) of that query; the range is also in the entity's
``vmin``/``vmax`` and in the legend. Geometric consistency (consistency.py) is logged for
global attention only; excluded views (own view, no point, behind the camera, outside the
image, occluded, low confidence) get no projected marker, and the query's notes list each
view's status and the counts.

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

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
import rerun as rr
import torch
from torch import nn

from . import colormap
from .capture import CaptureResult, capture, check_kinds
from .consistency import STATUS_NAMES, VALID, Consistency, geometric_consistency
from .errors import UserError
from .geometry import pose_encoding_to_cameras, unproject_depth
from .images import LoadedImages, expand_image_paths, images_from_tensor, load_images
from .summaries import METRICS, Summary, block_head_matrix, summarize
from .tokens import Query, TokenLayout, parse_query

APPLICATION_ID = "vggt_attn_rerun"
POINT_SOURCES = ("world_points", "depth")
MAP_DIMS = ("block", "head", "view", "y", "x")
QUERY_COLOR = (0, 255, 255)  # cyan: stands out against every perceptual colormap here
_MIN_VMAX = 1e-12  # a view no key of which got attention (frame attention elsewhere) stays 0
# Overlay alpha = min(255, ALPHA_GAIN * 255 * sqrt(v / 255)): transparent at 0 so the photo shows,
# opaque from v = 100 (39% of vmax) so that mid values stand out on textured photos.
ALPHA_GAIN = 1.6


class Paths:
    """The entity path scheme (see the module docstring); blueprints build on the same names."""

    @staticmethod
    def frame(s: int) -> str:
        return f"world/frames/{s}"

    @staticmethod
    def image(s: int) -> str:
        return f"world/frames/{s}/image"

    @staticmethod
    def overlay_root(s: int) -> str:
        return f"world/frames/{s}/image/attention"

    @staticmethod
    def overlay(s: int, q: int, kind: str) -> str:
        return f"world/frames/{s}/image/attention/q{q}/{kind}"

    @staticmethod
    def marker(s: int, q: int) -> str:
        return f"world/frames/{s}/image/queries/q{q}"

    cloud = "world/points"

    @staticmethod
    def query_point(q: int) -> str:
        return f"world/queries/q{q}"

    @staticmethod
    def patch_points(q: int, kind: str) -> str:
        return f"world/attention/q{q}/{kind}"

    @staticmethod
    def heads_root(q: int) -> str:
        return f"heads/q{q}"

    @staticmethod
    def head(q: int, kind: str, h: int) -> str:
        return f"heads/q{q}/{kind}/{h}"

    @staticmethod
    def info(q: int) -> str:
        return f"queries/q{q}/info"

    @staticmethod
    def scales(q: int, kind: str) -> str:
        return f"queries/q{q}/{kind}"

    @staticmethod
    def maps(q: int, kind: str) -> str:
        return f"queries/q{q}/{kind}/maps"

    @staticmethod
    def mass(q: int, kind: str, series: str) -> str:
        return f"queries/q{q}/{kind}/mass/{series}"

    # Summaries and consistency: ``q`` is a query index, or MEAN for the mean over the run's queries.
    @staticmethod
    def query_root(q: int | str) -> str:
        return f"queries/{_query_name(q)}"

    @staticmethod
    def summary(q: int | str, kind: str, metric: str) -> str:
        return f"queries/{_query_name(q)}/{kind}/summary/{metric}"

    @staticmethod
    def matrix(q: int | str, kind: str, metric: str) -> str:
        return f"queries/{_query_name(q)}/{kind}/matrix/{metric}"

    @staticmethod
    def matrix_legend(q: int | str, kind: str) -> str:
        return f"queries/{_query_name(q)}/{kind}/matrix/legend"

    @staticmethod
    def consistency(q: int | str, name: str) -> str:
        """``score`` / ``control_score`` (block x head matrices) or ``peak_dist`` (series)."""
        return f"queries/{_query_name(q)}/global/consistency/{name}"

    @staticmethod
    def projected(s: int, q: int) -> str:
        return f"world/frames/{s}/image/queries/q{q}/projected"

    query_index = "queries/index"


#: the query name of the means over the run's queries (``queries/mean/...``)
MEAN = "mean"
#: the block x head matrices of the consistency subtree
CONSISTENCY_MATRICES = ("score", "control_score")
PROJECTED_COLOR = (255, 0, 255)  # magenta: the query's 3D point seen from another view


def _query_name(q: int | str) -> str:
    return q if isinstance(q, str) else f"q{q}"


def mass_series(num_frames: int) -> tuple[str, ...]:
    """Names of the mass series: ``view_0..view_{S-1}`` (patch keys of a view), camera, registers."""
    return tuple(f"view_{s}" for s in range(num_frames)) + ("camera", "registers")


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


@dataclass
class RecordingOptions:
    """What to log and how. Checked on construction (UserError); run-dependent checks in log_run.

    Attributes:
        kinds: attention kinds to log ("frame", "global").
        focus_head: head shown in the main views on the block timeline; None = head mean.
        focus_block: block whose heads the head timeline walks through; None = last captured.
        grid_view: view shown in the head grid; None = the query's own frame.
        points: point map source: "world_points" (point head) or "depth" (depth unprojected
            with the predicted cameras).
        conf_threshold: keep points with confidence >= this; None = use conf_percentile.
        conf_percentile: keep points at or above this percentile of confidence (0-100).
        max_points: at most this many cloud points (deterministic subsample).
        per_view_normalize: scale each view's maps by its own vmax instead of one absolute
            scale shared by all views (then colors are not comparable across views).
        jpeg_quality: 1-100, for the logged input images.
        colormap: one of colormap.COLORMAPS.
        top_k: k of the ``top_k_mass`` summary (summaries.summarize).
        consistency_radius: Chebyshev radius in patches of the consistency windows
            (consistency.geometric_consistency).
        matrix_cell: pixels per (block, head) cell of the block x head matrix images.
    """

    kinds: Sequence[str] = ("global",)
    focus_head: int | None = None
    focus_block: int | None = None
    grid_view: int | None = None
    points: str = "world_points"
    conf_threshold: float | None = None
    conf_percentile: float = 50.0
    max_points: int = 200_000
    per_view_normalize: bool = False
    jpeg_quality: int = 90
    colormap: str = "inferno"
    top_k: int = 10
    consistency_radius: int = 1
    matrix_cell: int = 8

    def __post_init__(self) -> None:
        self.kinds = check_kinds((self.kinds,) if isinstance(self.kinds, str) else tuple(self.kinds))
        if self.points not in POINT_SOURCES:
            raise UserError(f"unknown point source {self.points!r}: valid are {', '.join(POINT_SOURCES)}")
        for name in ("focus_head", "focus_block", "grid_view"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 0):
                raise UserError(f"{name} must be an index >= 0 or None, got {value!r}")
        if self.conf_threshold is not None and not np.isfinite(self.conf_threshold):
            raise UserError(f"conf_threshold must be a finite number or None, got {self.conf_threshold!r}")
        if not 0.0 <= self.conf_percentile <= 100.0:
            raise UserError(f"conf_percentile must be in [0, 100], got {self.conf_percentile!r}")
        if int(self.max_points) < 1:
            raise UserError(f"max_points must be >= 1, got {self.max_points!r}")
        if not 1 <= int(self.jpeg_quality) <= 100:
            raise UserError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality!r}")
        self.colormap = colormap.check_colormap(self.colormap)
        for name, low in (("top_k", 1), ("consistency_radius", 0), ("matrix_cell", 1)):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise UserError(f"{name} must be an integer >= {low}, got {value!r}")


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
        raise UserError(
            f"attention kind {missing[0]!r} was not captured: captured kinds are {list(rows.kinds)}"
        )
    if options.focus_head is not None and options.focus_head >= rows.num_heads:
        raise UserError(
            f"focus_head {options.focus_head} does not exist: valid heads are 0..{rows.num_heads - 1}"
        )
    block = rows.blocks[-1] if options.focus_block is None else options.focus_block
    if options.grid_view is not None and options.grid_view >= lay.num_frames:
        raise UserError(
            f"grid_view {options.grid_view} does not exist: valid views are 0..{lay.num_frames - 1}"
        )
    grid = tuple(q.frame if options.grid_view is None else options.grid_view for q in rows.queries)
    return _Focus(tuple(options.kinds), options.focus_head, rows.block_index(block), grid)


# --------------------------------------------------------------------------------------------
# Numbers: scales, quantization, point maps (plain numpy, no Rerun)
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


@dataclass
class PointMap:
    """Per-pixel 3D points of the run and which of them pass the confidence filter.

    Attributes:
        points: ``[S, H, W, 3]`` world points (float32). conf: ``[S, H, W]``.
        keep: ``[S, H, W]`` bool, finite and confident. threshold: the confidence cut used.
    """

    points: np.ndarray
    conf: np.ndarray
    keep: np.ndarray
    threshold: float


def cameras(result: CaptureResult) -> tuple[np.ndarray, np.ndarray]:
    """Predicted cameras: extrinsics ``[S, 3, 4]`` camera-from-world, intrinsics ``[S, 3, 3]`` (float64)."""
    pose = result.predictions["pose_enc"].detach().reshape(-1, 9)[: result.layout.num_frames]
    extr, intr = pose_encoding_to_cameras(pose.double().cpu(), result.layout.image_size)
    return extr.numpy(), intr.numpy()


def point_map(result: CaptureResult, options: RecordingOptions) -> PointMap:
    """The point map chosen by ``options.points``, with the confidence filter applied."""
    pred, s = result.predictions, result.layout.num_frames
    h, w = result.layout.image_size

    def arr(key: str) -> np.ndarray:
        if key not in pred:
            other = "world_points" if key.startswith("depth") else "depth"
            raise UserError(f"the model's predictions have no {key!r}: try points={other!r}")
        return pred[key].detach().float().cpu().numpy()

    if options.points == "depth":
        extr, intr = cameras(result)
        pts = unproject_depth(arr("depth").reshape(s, h, w), extr, intr)
        conf = arr("depth_conf").reshape(s, h, w)
    else:
        pts = arr("world_points").reshape(s, h, w, 3)
        conf = arr("world_points_conf").reshape(s, h, w)
    finite = np.isfinite(pts).all(-1) & np.isfinite(conf)
    if options.conf_threshold is not None:
        thr = float(options.conf_threshold)
    else:
        thr = float(np.percentile(conf[finite], options.conf_percentile)) if finite.any() else np.inf
    return PointMap(pts, conf, finite & (conf >= thr), thr)


def subsample(count: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of ``count`` items, the same on every run."""
    if count <= max_points:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=max_points, replace=False))


def patch_centroids(pm: PointMap, layout: TokenLayout) -> tuple[np.ndarray, np.ndarray]:
    """Mean 3D point of each patch ``[S, gh, gw, 3]`` and whether it is kept ``[S, gh, gw]``.

    A patch is kept when its mean confidence passes the cloud's cut and its centroid is finite,
    so 3D attention points never float where the point cloud has nothing.
    """
    s, gh, gw, ps = layout.num_frames, layout.grid_h, layout.grid_w, layout.patch_size
    pts = np.where(np.isfinite(pm.points), pm.points, np.nan).reshape(s, gh, ps, gw, ps, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN patches are expected: dropped below
        centroids = np.nanmean(pts, axis=(2, 4))
    conf = pm.conf.reshape(s, gh, ps, gw, ps).mean(axis=(2, 4))
    return centroids.astype(np.float32), np.isfinite(centroids).all(-1) & (conf >= pm.threshold)


def patch_radii(centroids: np.ndarray, result: CaptureResult) -> np.ndarray:
    """Half the footprint of each patch at its depth, ``[S, gh, gw]``: ``0.5 * patch * z / f``."""
    extr, intr = cameras(result)
    z = np.einsum("shwj,sj->shw", centroids.astype(np.float64), extr[:, 2, :3]) + extr[:, 2, 3][:, None, None]
    focal = 0.5 * (intr[:, 0, 0] + intr[:, 1, 1])
    r = 0.5 * result.layout.patch_size * np.abs(z) / focal[:, None, None]
    return np.where(np.isfinite(r), r, 0.0).astype(np.float32)


def images_u8(images: LoadedImages) -> np.ndarray:
    """``[S, 3, H, W]`` float in [0, 1] -> ``[S, H, W, 3]`` uint8."""
    t = images.tensor.detach().float().cpu().clamp(0, 1)
    return (t.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()


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
    return rr.components.ImageFormat(
        width=layout.grid_w, height=layout.grid_h, color_model="L", channel_datatype="U8"
    )


def _send_maps(
    rec: rr.RecordingStream, path: str, timeline: str, times: Sequence[int], maps: np.ndarray
) -> None:
    """maps ``[T, gh, gw]`` u8, one row per time on one timeline."""
    rec.send_columns(
        path,
        indexes=[rr.TimeColumn(timeline, sequence=np.asarray(times, np.int64))],
        columns=rr.SegmentationImage.columns(buffer=np.ascontiguousarray(maps).reshape(len(times), -1)),
    )


def _send_series(
    rec: rr.RecordingStream, path: str, timeline: str, times: Sequence[int], values: np.ndarray
) -> None:
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


def _cloud(pm: PointMap, options: RecordingOptions) -> tuple[np.ndarray, np.ndarray, float]:
    """The logged cloud: flat pixel indices, positions, and the scene scale (median point distance)."""
    flat = np.flatnonzero(pm.keep.reshape(-1))
    pick = flat[subsample(flat.size, int(options.max_points))]
    cloud = pm.points.reshape(-1, 3)[pick]
    scale = float(np.median(np.linalg.norm(cloud, axis=1))) if cloud.size else 1.0
    return pick, cloud, (scale if np.isfinite(scale) and scale > 0 else 1.0)


def camera_is_valid(extrinsics: np.ndarray, intrinsics: np.ndarray) -> bool:
    """Finite ``[3, 4]`` extrinsics and finite ``[3, 3]`` intrinsics with positive focal lengths."""
    focal = np.diag(intrinsics)[:2]
    return bool(np.isfinite(extrinsics).all() and np.isfinite(intrinsics).all() and (focal > 0).all())


def _log_scene(rec: rr.RecordingStream, result: CaptureResult, rgb: np.ndarray, pm: PointMap,
               options: RecordingOptions) -> None:  # fmt: skip
    """Cameras, images and the point cloud (all static)."""
    lay = result.layout
    h, w = lay.image_size
    extr, intr = cameras(result)
    rec.log("world", rr.ViewCoordinates.RDF, static=True)

    pick, cloud, scale = _cloud(pm, options)
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
        rec.log(
            Paths.image(s), rr.Image(rgb[s]).compress(jpeg_quality=int(options.jpeg_quality)), static=True
        )
        rec.log(
            Paths.overlay_root(s), rr.Transform3D(scale=[lay.patch_size, lay.patch_size, 1.0]), static=True
        )


def _query_point(pm: PointMap, lay: TokenLayout, q: Query) -> np.ndarray | None:
    """Mean of the point map over the query patch ``[3]``, or None for special tokens."""
    rc = q.patch(lay)
    if rc is None:
        return None
    ps = lay.patch_size
    block = pm.points[q.frame, rc[0] * ps : (rc[0] + 1) * ps, rc[1] * ps : (rc[1] + 1) * ps].reshape(-1, 3)
    block = block[np.isfinite(block).all(-1)]
    return block.mean(0) if len(block) else None


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
    marker = rr.Points2D(
        [centre], radii=max(2.0, 0.2 * ps), colors=[QUERY_COLOR], labels=[name], draw_order=30.0
    )
    box = rr.Boxes2D(mins=[[col * ps, row * ps]], sizes=[[ps, ps]], colors=[QUERY_COLOR], draw_order=29.0)
    rec.log(Paths.marker(q.frame, i), marker, static=True)
    rec.log(f"{Paths.marker(q.frame, i)}/patch", box, static=True)
    if grid_view == q.frame:
        # No label here: in the small head views it would hide the patch.
        dot = rr.Points2D([centre], radii=max(2.0, 0.2 * ps), colors=[QUERY_COLOR], draw_order=30.0)
        rec.log(f"{Paths.heads_root(i)}/query", dot, static=True)
    point = _query_point(pm, lay, q)
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
    scale = (
        "per view (colors not comparable across views)" if per_view else "one absolute scale for all views"
    )
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
    by_block = quantize(
        _focus_heads(patches.astype(np.float64), focus.head), _per_view(vmax)
    )  # [L, S, gh, gw]
    by_head = all_u8[lf]  # [H, S, gh, gw]: every head at the focus block

    rec.log(Paths.scales(i, kind), rr.AnyValues(vmax=vmax, blocks=np.asarray(blocks)), static=True)
    rec.log(
        Paths.maps(i, kind), rr.Tensor(all_u8, dim_names=list(MAP_DIMS), value_range=(0, 255)), static=True
    )

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
# Summaries and geometric consistency: Scalars series and block x head matrices
# --------------------------------------------------------------------------------------------

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
    rec.send_columns(
        path,
        indexes=[rr.TimeColumn("block", sequence=np.asarray(blocks, np.int64))],
        columns=rr.Scalars.columns(scalars=values.reshape(-1)).partition(lengths=[values.shape[1]] * len(values)),
    )


def _log_matrix(rec: rr.RecordingStream, path: str, values: np.ndarray, lo: float, hi: float,
                options: RecordingOptions) -> None:  # fmt: skip
    """``[L, H]`` as a static RGB image (summaries.block_head_matrix) with its color range."""
    rgb = block_head_matrix(values, colormap.lut(options.colormap), int(options.matrix_cell), lo, hi)
    rec.log(path, rr.Image(rgb), rr.AnyValues(vmin=float(lo), vmax=float(hi)), static=True)


def _log_summaries(rec: rr.RecordingStream, q: int | str, kind: str, values: dict[str, np.ndarray],
                   blocks: Sequence[int], options: RecordingOptions) -> None:  # fmt: skip
    """values: metric -> ``[L, H]``. Series: heads then the head mean per row; matrices on 0..1."""
    for metric, v in values.items():
        path = Paths.summary(q, kind, metric)
        rec.log(path, _head_series_style(v.shape[1]), static=True)
        _send_batches(rec, path, blocks, np.concatenate([v, v.mean(axis=1, keepdims=True)], axis=1))
        _log_matrix(rec, Paths.matrix(q, kind, metric), v, 0.0, 1.0, options)


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


_STATUS_TEXT = {
    "own_view": "the query's own view",
    "no_point": "no 3D point (special token or non-finite point)",
    "low_confidence": "the query point's confidence is below the cut",
    "behind_camera": "the point is behind this camera",
    "outside_image": "the projection falls outside the image",
    "occluded": "occluded: VGGT's depth at the projected pixel is nearer",
}


def _log_query_consistency(rec: rr.RecordingStream, i: int, j: int, cons: Consistency, lay: TokenLayout,
                           options: RecordingOptions) -> tuple[list[str], float]:  # fmt: skip
    """Projected markers, score matrices and peak distances of query j of ``cons``, logged as query i.

    Returns the lines for the query's notes and the top of the score color range.
    """
    ps, gh, gw, r = lay.patch_size, lay.grid_h, lay.grid_w, cons.radius
    status = cons.status[j]
    valid = np.flatnonzero(status == VALID)
    size = max(2.0, 0.3 * ps)
    for s in valid:
        x, y = (float(v) for v in cons.projected_xy[j, s])
        pr, pc = (int(v) for v in cons.projected_patch[j, s])
        path = Paths.projected(int(s), i)
        dot = rr.Points2D([[x, y]], radii=max(1.5, 0.1 * ps), colors=[PROJECTED_COLOR], labels=[f"q{i}"],
                          draw_order=31.0)  # fmt: skip
        cross = [[[x - size, y - size], [x + size, y + size]], [[x - size, y + size], [x + size, y - size]]]
        r0, r1, c0, c1 = max(0, pr - r), min(gh - 1, pr + r), max(0, pc - r), min(gw - 1, pc + r)
        window = rr.Boxes2D(mins=[[c0 * ps, r0 * ps]], sizes=[[(c1 - c0 + 1) * ps, (r1 - r0 + 1) * ps]],
                            colors=[PROJECTED_COLOR], draw_order=29.0)  # fmt: skip
        rec.log(path, dot, static=True)
        rec.log(f"{path}/cross", rr.LineStrips2D(cross, colors=[PROJECTED_COLOR], draw_order=31.0), static=True)
        rec.log(f"{path}/window", window, static=True)

    score = _mean_over_views(cons.share_near[:, j])  # [L, H]
    control = _mean_over_views(cons.control_share_near[:, j])
    top = _shared_range(score, control)
    _log_matrix(rec, Paths.consistency(i, "score"), score, 0.0, top, options)
    _log_matrix(rec, Paths.consistency(i, "control_score"), control, 0.0, top, options)
    if valid.size:
        path = Paths.consistency(i, "peak_dist")
        names = [f"view {s}" for s in valid]
        turbo = colormap.lut("turbo")
        colors = [tuple(int(c) for c in turbo[int(255 * (s + 0.5) / lay.num_frames)]) for s in valid]
        rec.log(path, rr.SeriesLines(names=names, colors=colors), static=True)
        rec.log(path, rr.AnyValues(views=valid.astype(np.int64), unit="model pixels"), static=True)
        dist = cons.peak_dist_pixels[:, j][:, :, valid].mean(axis=1)  # [L, V]: head mean
        _send_batches(rec, path, cons.blocks, dist)

    counts = {name: int((status == code).sum()) for code, name in enumerate(STATUS_NAMES)}
    conf = cons.query_conf[j]
    lines = [
        "",
        "## Geometric consistency (global attention)",
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
            lines.append(f"- view {s}: excluded, {name}: {_STATUS_TEXT[name]}")
    shown = ", ".join(f"{name} {n}" for name, n in counts.items() if n)
    lines += ["", f"Counts: {shown}.", f"Score color range: 0 .. {top:.4g} (score and control share it)."]
    return lines, top


def _consistency(result: CaptureResult, images: LoadedImages, options: RecordingOptions) -> tuple[
        Consistency | None, str]:  # fmt: skip
    """geometric_consistency of the run's global rows, or None and why not."""
    try:
        cons = geometric_consistency(result.rows, result.predictions, radius=int(options.consistency_radius),
                                     transforms=images.transforms)  # fmt: skip
    except UserError as e:
        return None, str(e)
    return cons, ""


# --------------------------------------------------------------------------------------------
# Logging a run
# --------------------------------------------------------------------------------------------


@dataclass
class _Scene:
    """What the per-query logging takes from the scene."""

    rgb: np.ndarray  # [S, H, W, 3] u8
    pm: PointMap
    scale: float
    centroids: np.ndarray  # [S * gh * gw, 3]
    kept: np.ndarray  # [S * gh * gw] bool
    radius: np.ndarray  # [kept.sum()]


def _scene(result: CaptureResult, images: LoadedImages, options: RecordingOptions) -> _Scene:
    rgb = images_u8(images)
    pm = point_map(result, options)
    _, _, scale = _cloud(pm, options)
    centroids, kept = patch_centroids(pm, result.layout)
    radius = patch_radii(centroids, result).reshape(-1)[kept.reshape(-1)]
    return _Scene(rgb, pm, scale, centroids.reshape(-1, 3), kept.reshape(-1), radius)


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
                 focus: _Focus, scene: _Scene, first_index: int) -> _Logged:  # fmt: skip
    rows, lay = result.rows, result.layout
    blocks = list(rows.blocks)
    summaries = {kind: summarize(rows, kind, top_k=int(options.top_k)) for kind in focus.kinds}
    cons, why_not = _consistency(result, images, options) if "global" in focus.kinds else (None, "")
    for j, q in enumerate(rows.queries):
        i = first_index + j
        _log_query(rec, i, q, lay, scene.pm, scene.rgb, focus.grid_views[j], scene.scale, int(options.jpeg_quality))
        vmax, notes = {}, []
        for kind in focus.kinds:
            vmax[kind] = _log_query_kind(rec, result, j, i, kind, focus, options, scene.centroids, scene.kept,
                                         scene.radius)  # fmt: skip
            values = {m: getattr(summaries[kind], m)[:, j] for m in METRICS}  # [L, H] each
            _log_summaries(rec, i, kind, values, blocks, options)
            top = None
            if kind == "global":
                if cons is not None:
                    notes, top = _log_query_consistency(rec, i, j, cons, lay, options)
                else:
                    notes = ["", "## Geometric consistency", "", f"Not computed: {why_not}"]
            legend = _legend_text(i, kind, blocks, rows.num_heads, options, top)
            rec.log(Paths.matrix_legend(i, kind), rr.TextDocument(legend, media_type=rr.MediaType.MARKDOWN),
                    static=True)  # fmt: skip
        text = "\n".join([_info_text(i, j, q, result, focus, vmax, options), *notes])
        rec.log(Paths.info(i), rr.TextDocument(text, media_type=rr.MediaType.MARKDOWN), static=True)
    return _Logged(summaries, cons)


def _log_query_means(rec: rr.RecordingStream, result: CaptureResult, logged: _Logged,
                     options: RecordingOptions) -> None:  # fmt: skip
    """``queries/mean/...``: summaries and consistency scores averaged over the run's queries."""
    rows = result.rows
    for kind, summary in logged.summaries.items():
        mean = summary.mean_over_queries()
        _log_summaries(rec, MEAN, kind, {m: getattr(mean, m)[:, 0] for m in METRICS}, rows.blocks, options)
        top = None
        if kind == "global" and logged.consistency is not None:
            cons = logged.consistency
            top = _shared_range(cons.score, cons.control_score)
            _log_matrix(rec, Paths.consistency(MEAN, "score"), cons.score, 0.0, top, options)
            _log_matrix(rec, Paths.consistency(MEAN, "control_score"), cons.control_score, 0.0, top, options)
        legend = _legend_text(MEAN, kind, rows.blocks, rows.num_heads, options, top)
        legend += f"\n\nMeans over the {len(rows.queries)} queries q0..q{len(rows.queries) - 1} of the run"
        if top is not None:
            legend += "; the consistency scores are means over all valid (query, view) pairs"
        rec.log(Paths.matrix_legend(MEAN, kind), rr.TextDocument(legend + ".", media_type=rr.MediaType.MARKDOWN),
                static=True)  # fmt: skip


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
    _log_queries(rec, result, images, options, focus, _scene(result, images, options), int(first_index))


def log_run(
    rec: rr.RecordingStream, result: CaptureResult, images: LoadedImages, options: RecordingOptions
) -> None:
    """Log one capture run into ``rec`` (entity paths and timelines: see the module docstring).

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
    scene = _scene(result, images, options)
    _log_scene(rec, result, scene.rgb, scene.pm, options)
    logged = _log_queries(rec, result, images, options, focus, scene, 0)
    if len(result.rows.queries) > 1:
        _log_query_means(rec, result, logged, options)
    rec.log(Paths.query_index, rr.TextDocument(_index_text(result), media_type=rr.MediaType.MARKDOWN), static=True)


# --------------------------------------------------------------------------------------------
# The notebook API
# --------------------------------------------------------------------------------------------

ImagesLike = LoadedImages | torch.Tensor | str | os.PathLike | Sequence[str | os.PathLike]
QueriesLike = Sequence[Query | str] | Callable[[TokenLayout], Sequence[Query]]


def as_loaded_images(images: ImagesLike) -> LoadedImages:
    """LoadedImages from LoadedImages, a tensor ``[S, 3, H, W]``, or image files / folders / globs."""
    if isinstance(images, LoadedImages):
        return images
    if isinstance(images, torch.Tensor):
        return images_from_tensor(images)
    items = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    return load_images(expand_image_paths(items))


def _query_factory(queries: QueriesLike, images: LoadedImages) -> Callable[[TokenLayout], list[Query]]:
    """Queries may be Query objects or strings (tokens.QUERY_SYNTAX; pixels of the original photos)."""
    if callable(queries):
        return lambda layout: list(queries(layout))
    pixel_maps = images.transforms if images.paths is not None else None
    return lambda layout: [
        q if isinstance(q, Query) else parse_query(str(q), layout, pixel_maps) for q in queries
    ]


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def query_grid(layout: TokenLayout, frame: int, rows: int, cols: int) -> list[Query]:
    """``rows x cols`` patch queries evenly spread over the patch grid of one frame, row-major.

    Grid row k (of R) is patch row ``floor((k + 0.5) * grid_h / R)``, the centre of the k-th of
    R equal bands; the same for columns. UserError when the grid has more rows or columns than
    the frame has patches (queries would repeat).
    """
    layout.check_frame(frame)
    if rows < 1 or cols < 1:
        raise UserError(f"a query grid needs at least 1 row and 1 column, got {rows}x{cols}")
    if rows > layout.grid_h or cols > layout.grid_w:
        raise UserError(
            f"a {rows}x{cols} grid does not fit the {layout.grid_h}x{layout.grid_w} patches of frame {frame} "
            f"(rows x columns): use at most {layout.grid_h}x{layout.grid_w}"
        )
    rr_ = [int((k + 0.5) * layout.grid_h / rows) for k in range(rows)]
    cc = [int((k + 0.5) * layout.grid_w / cols) for k in range(cols)]
    return [Query.from_patch(layout, frame, r, c) for r in rr_ for c in cc]


def capture_run(
    model: nn.Module,
    images: ImagesLike,
    queries: QueriesLike,
    *,
    blocks: Sequence[int] | None = None,
    options: RecordingOptions | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> CaptureResult:
    """The capture part of record_attention: ONE forward pass for all queries, nothing logged."""
    options = options if options is not None else RecordingOptions()
    loaded = as_loaded_images(images)
    tensor = loaded.tensor.to(_model_device(model))
    return capture(model, tensor, _query_factory(queries, loaded), blocks=blocks, kinds=options.kinds,
                   autocast_dtype=autocast_dtype)  # fmt: skip


def record_attention(
    model: nn.Module,
    images: ImagesLike,
    queries: QueriesLike,
    *,
    blocks: Sequence[int] | None = None,
    options: RecordingOptions | None = None,
    recording: rr.RecordingStream | None = None,
    autocast_dtype: torch.dtype | None = None,
    application_id: str = APPLICATION_ID,
    send_blueprint: bool = True,
) -> tuple[CaptureResult, rr.RecordingStream]:
    """Run the model once, capture the queries' attention, and log it all into a recording.

    Args:
        model: VGGT (or ``testing.tiny_vggt()``) in eval mode.
        images: LoadedImages, a tensor ``[S, 3, H, W]`` in [0, 1], or image files/folders/globs.
        queries: Query objects or query strings (``"0:120,80"``, ``"1:p3,4"``, ``"0:camera"``;
            pixels refer to the original photos), or a function of the TokenLayout.
        blocks: block indices to capture (default all); options: RecordingOptions().
        recording: log into this stream; None creates ``rr.RecordingStream(application_id)``
            with no sink: data is buffered until the caller sets one, e.g. ``rec.save(path)``,
            ``rec.spawn()`` or ``rec.connect_grpc(url)``, which then receives everything.
        send_blueprint: send ``blueprint.default_blueprint_for(result, options)`` into the stream
            (active and default), so that every sink and saved .rrd carries the layout. With
            False, pass it yourself: ``rec.save(path, default_blueprint=default_blueprint_for(...))``.

    Returns:
        (CaptureResult, the RecordingStream).
    """
    options = options if options is not None else RecordingOptions()
    loaded = as_loaded_images(images)
    result = capture_run(model, loaded, queries, blocks=blocks, options=options, autocast_dtype=autocast_dtype)
    rec = recording if recording is not None else rr.RecordingStream(application_id)
    if send_blueprint:
        from .blueprint import default_blueprint_for  # blueprint.py imports Paths from here

        rec.send_blueprint(default_blueprint_for(result, options), make_active=True, make_default=True)
    log_run(rec, result, loaded, options)
    return result, rec
