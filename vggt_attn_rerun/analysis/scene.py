"""The run's scene in numbers (numpy, no Rerun): cameras, point map, logged cloud, patch centroids.

What viz/log_run.py shows of the scene and where it places the 3D attention points: the predicted
cameras, VGGT's point map with the confidence filter, the (subsampled) cloud, each patch's mean
3D point and footprint radius, the query's 3D point, and the input images as u8.

Sizes in the 3D view follow the scene's own extent (``scene_sizes``), never fixed world units:
VGGT-1B's scenes span a few units, a random-weight model's a few hundredths, and the picture
must read the same on both. What cannot be drawn (degenerate cameras or points) is said in
``Scene.warnings``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from vggt_attn_rerun.core.capture import CaptureResult
from vggt_attn_rerun.core.geometry import pose_encoding_to_cameras, unproject_depth
from vggt_attn_rerun.core.images import LoadedImages
from vggt_attn_rerun.core.tokens import Query, TokenLayout
from vggt_attn_rerun.errors import UserError


class PointMapChoice(Protocol):
    """Which point map to log and how to filter it (``viz.options.RecordingOptions`` is one)."""

    points: str  # "world_points" (point head) or "depth" (depth unprojected with the predicted cameras)
    conf_threshold: float | None  # keep points with confidence >= this; None: use conf_percentile
    conf_percentile: float  # 0-100
    max_points: int


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


def continuous_intrinsics(intrinsics: np.ndarray) -> np.ndarray:
    """``[..., 3, 3]`` VGGT intrinsics -> the same camera in continuous pixels (a copy, float64).

    VGGT samples pixel ``j`` at ``u = j`` (its unprojection convention); tokens.py, Rerun's 2D
    views and this package put pixel ``j``'s centre at ``j + 0.5``: the principal point moves
    by half a pixel, ``(cx + 0.5, cy + 0.5)``.
    """
    k = np.array(intrinsics, np.float64)
    k[..., :2, 2] += 0.5
    return k


def point_map(result: CaptureResult, options: PointMapChoice) -> PointMap:
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
    # Compared in float64: a threshold beyond float32 (1e300) keeps nothing, with no overflow warning.
    return PointMap(pts, conf, finite & (conf >= np.float64(thr)), thr)


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
    return centroids.astype(np.float32), np.isfinite(centroids).all(-1) & (conf >= np.float64(pm.threshold))


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


def logged_cloud(pm: PointMap, options: PointMapChoice) -> tuple[np.ndarray, np.ndarray]:
    """The logged cloud: flat pixel indices and positions (at most ``options.max_points``)."""
    flat = np.flatnonzero(pm.keep.reshape(-1))
    pick = flat[subsample(flat.size, int(options.max_points))]
    return pick, pm.points.reshape(-1, 3)[pick]


#: the extent is the diagonal of the box between these percentiles of the points, per axis:
#: a few stray points (an untrained model's, or sky at infinity) do not set the scale
EXTENT_PERCENTILES = (2.0, 98.0)
#: 3D sizes as fractions of the extent: the camera frusta's image plane distance, and the bounds
#: of a patch point's radius around the nominal ``0.5 * extent / max(grid_h, grid_w)``
CAMERA_PLANE, POINT_BOUNDS = 0.08, (0.25, 1.0)
#: the query's 3D point as a fraction of the extent; the peak boxes' half-size in units of the
#: patch point radius (a hot point's radius is 3.35 of them: viz/log_maps.py)
QUERY_FRACTION, PEAK_GAIN = 0.04, 3.4


def scene_extent(points: np.ndarray) -> float:
    """Robust size of a point set ``[N, 3]``: the diagonal of the box between the
    EXTENT_PERCENTILES of each axis (0 when there are no finite points)."""
    pts = np.asarray(points, np.float64).reshape(-1, 3)
    pts = pts[np.isfinite(pts).all(-1)]
    if not len(pts):
        return 0.0
    low, high = np.percentile(pts, EXTENT_PERCENTILES, axis=0)
    return float(np.linalg.norm(high - low))


@dataclass(frozen=True)
class SceneSizes:
    """3D sizes of one scene, all proportional to its extent (world units).

    Attributes:
        extent: ``scene_extent`` of the kept points (1.0 when they have none: see Scene.warnings).
        point: radius of a cold 3D attention point: the median half-footprint of a patch
            (``patch_radii``), kept within POINT_BOUNDS x ``0.5 * extent / max(grid_h, grid_w)``
            so that a degenerate camera cannot make it vanish or fill the view.
        query: radius of the query's 3D point (QUERY_FRACTION x extent).
        peak: half-size of the boxes around the hottest 3D points (PEAK_GAIN x point).
        camera: image plane distance of the camera frusta (CAMERA_PLANE x extent).
    """

    extent: float
    point: float
    query: float
    peak: float
    camera: float


def scene_sizes(extent: float, footprints: np.ndarray, layout: TokenLayout) -> SceneSizes:
    """SceneSizes from the extent and the patches' half-footprints ``[n]`` (see SceneSizes)."""
    extent = extent if np.isfinite(extent) and extent > 0 else 1.0
    nominal = 0.5 * extent / max(layout.grid_h, layout.grid_w)
    good = footprints[np.isfinite(footprints) & (footprints > 0)]
    median = float(np.median(good)) if good.size else nominal
    point = float(np.clip(median, POINT_BOUNDS[0] * nominal, POINT_BOUNDS[1] * nominal))
    return SceneSizes(extent, point, QUERY_FRACTION * extent, PEAK_GAIN * point, CAMERA_PLANE * extent)


def camera_is_valid(extrinsics: np.ndarray, intrinsics: np.ndarray) -> bool:
    """Finite ``[3, 4]`` extrinsics and finite ``[3, 3]`` intrinsics with positive focal lengths."""
    focal = np.diag(intrinsics)[:2]
    return bool(np.isfinite(extrinsics).all() and np.isfinite(intrinsics).all() and (focal > 0).all())


def query_point(pm: PointMap, lay: TokenLayout, q: Query) -> np.ndarray | None:
    """Mean of the point map over the query patch ``[3]``, or None for special tokens."""
    rc = q.patch(lay)
    if rc is None:
        return None
    ps = lay.patch_size
    block = pm.points[q.frame, rc[0] * ps : (rc[0] + 1) * ps, rc[1] * ps : (rc[1] + 1) * ps].reshape(-1, 3)
    block = block[np.isfinite(block).all(-1)]
    return block.mean(0) if len(block) else None


def scene_warnings(pm: PointMap, extent: float, valid_cameras: np.ndarray) -> list[str]:
    """What the 3D view cannot show, one line each (empty for a sound scene).

    ``valid_cameras``: ``[S]`` bool, ``camera_is_valid`` of each view.
    """
    out = []
    bad = [int(s) for s in np.flatnonzero(~np.asarray(valid_cameras, bool))]
    if bad:
        views = ", ".join(map(str, bad))
        out.append(
            f"Degenerate camera in view {views} (non-finite or zero focal length): not drawn in 3D; "
            "the photo and its attention are in the 2D views. The model's camera prediction is unusable "
            "(an untrained model's often is)."
        )
    if not pm.keep.any():
        out.append(
            "Degenerate point map: no finite, confident point. The 3D view has no cloud and no attention "
            "points; the 2D views are unaffected."
        )
    elif not extent > 0:
        out.append(
            "Degenerate point map: every kept point is at the same place. 3D positions mean nothing; "
            "sizes use a unit scene."
        )
    return out


@dataclass
class Scene:
    """What the per-query logging takes from the scene."""

    rgb: np.ndarray  # [S, H, W, 3] u8
    pm: PointMap
    sizes: SceneSizes
    centroids: np.ndarray  # [S * gh * gw, 3]
    kept: np.ndarray  # [S * gh * gw] bool
    valid_cameras: np.ndarray  # [S] bool
    warnings: list[str]  # what the 3D view cannot show (scene_warnings)


def build_scene(result: CaptureResult, images: LoadedImages, options: PointMapChoice) -> Scene:
    """The scene of a run as the per-query logging needs it: u8 images, point map, sizes, kept patches."""
    rgb = images_u8(images)
    pm = point_map(result, options)
    extent = scene_extent(pm.points[pm.keep])
    centroids, kept = patch_centroids(pm, result.layout)
    footprints = patch_radii(centroids, result).reshape(-1)[kept.reshape(-1)]
    extr, intr = cameras(result)
    valid = np.array([camera_is_valid(e, k) for e, k in zip(extr, intr, strict=True)], bool)
    sizes = scene_sizes(extent, footprints, result.layout)
    return Scene(rgb, pm, sizes, centroids.reshape(-1, 3), kept.reshape(-1), valid, scene_warnings(pm, extent, valid))
