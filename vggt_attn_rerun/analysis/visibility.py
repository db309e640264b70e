"""Where each query's 3D point lands in every view, and which (query, view) pairs can be compared.

VGGT's own predictions are the reference (definitions in model input pixels, continuous
convention of tokens.py: pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``):

- Query point X: the mean of ``world_points`` over the ``patch_size x patch_size`` pixels of the
  query patch in its frame, or a point the caller gives. Query confidence: the mean of
  ``world_points_conf`` over the same pixels (not checked for given points).
- Projection into view s: ``x_cam = R_s X + t_s`` with VGGT's camera-from-world extrinsics and
  intrinsics (``geometry.pose_encoding_to_cameras``), ``u = fx x/z + cx``, ``v = fy y/z + cy``.
  VGGT's intrinsics sample pixel ``j`` at ``u = j`` (its unprojection convention), so the
  continuous position is ``(u + 0.5, v + 0.5)``; the projected patch is the patch that covers
  it, the projected pixel the pixel that covers it.

Exclusions: each (query, view) pair gets one status code (the first that applies, in this order):

- ``own_view``: the query's own frame (not a cross-view comparison);
- ``no_point``: no 3D point (a camera/register query without a given point, or a non-finite point);
- ``low_confidence``: the query's point confidence is below ``min_conf`` (applies to all views);
- ``behind_camera``: the point's depth in view s is ``z <= 0``;
- ``outside_image``: the projection falls outside view s's image (or outside the part of it
  covered by the photo when frame transforms are given: white padding is excluded);
- ``occluded``: the point is farther than VGGT's predicted depth at the projected pixel by more
  than ``occlusion_margin`` (relative): ``z > depth * (1 + margin)``: something nearer hides it.

The point is the mean over a patch and the occlusion test looks at one pixel, so points on depth
edges are unreliable.

With a ``reference.Geometry`` of true cameras and depth (``reference = "truth"``) the same holds
with the truth in place of the predictions: the query point is the mean of the true depth
unprojected over the query patch (no confidence), the projection uses the true cameras and the
occlusion test the true depth.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vggt_attn_rerun.analysis.reference import Geometry, model_geometry, patch_points
from vggt_attn_rerun.analysis.scene import continuous_intrinsics
from vggt_attn_rerun.core.images import FrameTransform
from vggt_attn_rerun.core.tokens import Query, TokenLayout
from vggt_attn_rerun.errors import UserError

VALID = 0
OWN_VIEW = 1
NO_POINT = 2
LOW_CONFIDENCE = 3
BEHIND_CAMERA = 4
OUTSIDE_IMAGE = 5
OCCLUDED = 6
#: status code -> name (index = code)
STATUS_NAMES = (
    "valid",
    "own_view",
    "no_point",
    "low_confidence",
    "behind_camera",
    "outside_image",
    "occluded",
)
#: status name -> why a pair with that status is excluded, in words (the recording's notes)
STATUS_MEANING = {
    "own_view": "the query's own view",
    "no_point": "no 3D point (special token or non-finite point)",
    "low_confidence": "the query point's confidence is below the cut",
    "behind_camera": "the point is behind this camera",
    "outside_image": "the projection falls outside the image",
    "occluded": "occluded: VGGT's depth at the projected pixel is nearer",
}


def _as_numpy(x: object, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise UserError(f"prediction {name!r} is not a numeric array ({e})") from None


def prediction_array(
    predictions: Mapping[str, object], name: str, shape: tuple[int, ...], needed_by: str = "geometric consistency"
) -> np.ndarray:
    """``predictions[name]`` as float64 numpy, without its batch axis of 1, checked against ``shape``.

    Args:
        predictions: VGGT's output (tensors or arrays), e.g. ``pose_enc [1, S, 9]``,
            ``depth [1, S, H, W, 1]``.
        name: the key to read. shape: the expected shape without the batch axis (e.g.
            ``(S, 9)``, ``(S, H, W)``); a trailing axis of 1 (depth) is dropped to match.
        needed_by: what needs the prediction, for the error message.

    Raises:
        UserError: the key is missing, not numeric, or of another shape (batch size > 1).
    """
    if name not in predictions:
        raise UserError(f"predictions lack {name!r}: {needed_by} needs {name} from VGGT's output")
    a = _as_numpy(predictions[name], name)
    if a.ndim > len(shape) and a.shape[-1] == 1 and shape[-1] != 1:  # depth [..., H, W, 1]
        a = a[..., 0]
    if a.ndim == len(shape) + 1 and a.shape[0] == 1:  # the batch axis
        a = a[0]
    if a.shape != shape:
        raise UserError(f"prediction {name!r} has shape {list(a.shape)}, expected {list(shape)} (batch size 1)")
    return a


def query_patches(queries: Sequence[Query], lay: TokenLayout) -> np.ndarray:
    """``[Q, 2]`` int64 (row, col) of each query's patch in its frame; ``(-1, -1)`` for camera and
    register tokens (which have no patch)."""
    patches = np.full((len(queries), 2), -1, np.int64)
    for i, query in enumerate(queries):
        rc = query.patch(lay)
        if rc is not None:
            patches[i] = rc
    return patches


def _query_points(
    predictions: Mapping[str, object],
    queries: Sequence[Query],
    patches: np.ndarray,
    lay: TokenLayout,
    given: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """``([Q, 3] world points, [Q] confidences)``: the means over each query patch's pixels.

    Given points replace the prediction (their confidence is NaN: not measured); camera and
    register queries get NaN points unless given.
    """
    n, ps = len(queries), lay.patch_size
    conf = np.full(n, np.nan)
    if given is not None:
        points = np.asarray(given, dtype=np.float64)
        if points.shape != (n, 3):
            raise UserError(f"points must have shape [{n}, 3] (one per query), got {list(points.shape)}")
        return points, conf
    h_img, w_img = lay.image_size
    world_points = prediction_array(predictions, "world_points", (lay.num_frames, h_img, w_img, 3))
    world_conf = prediction_array(predictions, "world_points_conf", (lay.num_frames, h_img, w_img))
    points = np.full((n, 3), np.nan)
    for i, query in enumerate(queries):
        row, col = patches[i]
        if row < 0:
            continue
        pixels = (query.frame, slice(row * ps, (row + 1) * ps), slice(col * ps, (col + 1) * ps))
        points[i] = world_points[pixels].reshape(-1, 3).mean(0)
        conf[i] = world_conf[pixels].mean()
    return points, conf


def _image_boxes(transforms: Sequence[FrameTransform] | None, lay: TokenLayout) -> np.ndarray:
    """``[S, 4]`` (x0, y0, x1, y1) per view: the part of the model image that shows the photo."""
    h_img, w_img = lay.image_size
    if transforms is None:
        return np.array([(0.0, 0.0, float(w_img), float(h_img))] * lay.num_frames)
    if len(transforms) != lay.num_frames:
        raise UserError(f"got {len(transforms)} frame transforms for {lay.num_frames} views")
    return np.array([t.valid_model_box() for t in transforms], dtype=np.float64)


@dataclass
class _Projection:
    """The query points seen from every view: ``[Q, S]`` unless said."""

    xy: np.ndarray  # [Q, S, 2] continuous pixels; NaN without a point or behind the camera
    depth: np.ndarray  # z in camera s (NaN without a point)
    has_point: np.ndarray
    in_front: np.ndarray  # has a point with z > 0
    inside: np.ndarray  # in front and inside the view's image box
    view_depth: np.ndarray  # the predicted depth at the projected pixel (NaN when not inside)
    occluded: np.ndarray  # inside, but farther than the predicted depth there (by the margin)
    patch: np.ndarray  # [Q, S, 2] int (row, col) of the patch under the projection (-1: not inside)


def _project(
    points: np.ndarray,
    extrinsics: np.ndarray,
    intrinsics: np.ndarray,
    depth: np.ndarray,
    boxes: np.ndarray,
    patch_size: int,
    occlusion_margin: float,
) -> _Projection:
    """Project ``[Q, 3]`` world points into every view (``[S, 3, 4]``, ``[S, 3, 3]`` cameras, ``[S, H, W]`` depth)."""
    num_views = extrinsics.shape[0]
    cam = np.einsum("sij,qj->qsi", extrinsics[:, :, :3], points) + extrinsics[None, :, :, 3]  # [Q, S, 3]
    z = cam[..., 2]
    k = continuous_intrinsics(intrinsics)  # VGGT samples pixel j at u = j: +0.5 is its centre
    fx, fy, cx, cy = k[:, 0, 0], k[:, 1, 1], k[:, 0, 2], k[:, 1, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        x = fx * cam[..., 0] / z + cx
        y = fy * cam[..., 1] / z + cy
    has_point = np.isfinite(points).all(-1)[:, None] & np.ones((1, num_views), bool)
    in_front = has_point & (z > 0)
    x = np.where(in_front, x, np.nan)
    y = np.where(in_front, y, np.nan)
    with np.errstate(invalid="ignore"):
        inside = in_front & (x >= boxes[:, 0]) & (y >= boxes[:, 1]) & (x < boxes[:, 2]) & (y < boxes[:, 3])
    px = np.where(inside, np.floor(np.nan_to_num(x)), 0).astype(np.int64)
    py = np.where(inside, np.floor(np.nan_to_num(y)), 0).astype(np.int64)
    view_depth = np.where(inside, depth[np.arange(num_views)[None, :], py, px], np.nan)
    with np.errstate(invalid="ignore"):
        farther = z > view_depth * (1 + occlusion_margin)
        occluded = inside & np.isfinite(view_depth) & (view_depth > 0) & farther
    return _Projection(
        xy=np.stack([x, y], -1),
        depth=np.where(has_point, z, np.nan),
        has_point=has_point,
        in_front=in_front,
        inside=inside,
        view_depth=view_depth,
        occluded=occluded,
        patch=np.where(inside[..., None], np.stack([py // patch_size, px // patch_size], -1), -1),
    )


def _exclusions(proj: _Projection, query_frames: np.ndarray, query_conf: np.ndarray, min_conf: float) -> np.ndarray:
    """``[Q, S]`` int8 status codes: VALID, or the first reason (module docstring order) to exclude the pair."""
    num_views = proj.has_point.shape[1]
    own_view = query_frames[:, None] == np.arange(num_views)[None, :]
    low_conf = (query_conf < min_conf)[:, None] & np.ones((1, num_views), bool)  # NaN (not measured) is never low
    status = np.full(proj.has_point.shape, VALID, np.int8)
    for mask, code in (  # later entries take precedence
        (proj.occluded, OCCLUDED),
        (proj.in_front & ~proj.inside, OUTSIDE_IMAGE),
        (proj.has_point & ~proj.in_front, BEHIND_CAMERA),
        (proj.has_point & low_conf, LOW_CONFIDENCE),
        (~proj.has_point, NO_POINT),
        (own_view, OWN_VIEW),
    ):
        status[mask] = code
    return status


@dataclass
class Visibility:
    """The query points seen from every view (Q queries, S views).

    Attributes:
        query_patch: ``[Q, 2]`` int (row, col) of each query's patch (-1: camera or register token).
        points: ``[Q, 3]`` the query points in VGGT's world frame (NaN: none).
        query_conf: ``[Q]`` mean point confidence of the query patch (NaN: not measured).
        projected_xy: ``[Q, S, 2]`` projected (x, y), continuous pixels (NaN: no point or behind the camera).
        projected_depth: ``[Q, S]`` the point's depth z in camera s (NaN: no point).
        view_depth: ``[Q, S]`` VGGT's predicted depth at the projected pixel (NaN: not in the image).
        projected_patch: ``[Q, S, 2]`` int (row, col) of the projected patch (-1: not in the image).
        status: ``[Q, S]`` int8 status codes (STATUS_NAMES).
    """

    query_patch: np.ndarray
    points: np.ndarray
    query_conf: np.ndarray
    projected_xy: np.ndarray
    projected_depth: np.ndarray
    view_depth: np.ndarray
    projected_patch: np.ndarray
    status: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """``[Q, S]`` bool: the pairs that can be measured."""
        return self.status == VALID

    def counts(self) -> dict[str, int]:
        """How many (query, view) pairs got each status, by name (all names present)."""
        return {name: int((self.status == code).sum()) for code, name in enumerate(STATUS_NAMES)}

    @property
    def num_excluded(self) -> int:
        """Pairs of a query with ANOTHER view that were excluded (own views are not counted)."""
        return int(((self.status != VALID) & (self.status != OWN_VIEW)).sum())


def query_visibility(
    layout: TokenLayout,
    queries: Sequence[Query],
    predictions: Mapping[str, object],
    min_conf: float = 0.0,
    occlusion_margin: float = 0.05,
    points: np.ndarray | None = None,
    transforms: Sequence[FrameTransform] | None = None,
    geometry: Geometry | None = None,
) -> Visibility:
    """Project each query's 3D point into every view and give each (query, view) pair its status.

    Args: as ``consistency.geometric_consistency`` (``predictions`` needs ``pose_enc`` and
    ``depth``, and ``world_points`` and ``world_points_conf`` unless ``points`` are given);
    ``geometry``: the reference (None: the model's own, ``reference.model_geometry``).
    """
    if not occlusion_margin >= 0:
        raise UserError(f"occlusion_margin must be >= 0, got {occlusion_margin}")
    h_img, w_img = layout.image_size
    if geometry is None:
        prediction_array(predictions, "depth", (layout.num_frames, h_img, w_img))  # required: the occlusion test
        geometry = model_geometry(predictions, layout, "geometric consistency")
    patches = query_patches(queries, layout)
    frames = np.array([q.frame for q in queries], np.int64)
    if geometry.reference == "model" or points is not None:
        query_points, query_conf = _query_points(predictions, queries, patches, layout, points)
    else:
        query_points = patch_points(geometry, frames, patches, layout.patch_size)
        query_conf = np.full(len(queries), np.nan)  # the truth has no confidence
    depth = geometry.depth if geometry.depth is not None else np.full((layout.num_frames, h_img, w_img), np.nan)
    boxes = _image_boxes(transforms, layout)
    proj = _project(query_points, geometry.extrinsics, geometry.intrinsics, depth, boxes, layout.patch_size,
                    occlusion_margin)  # fmt: skip
    status = _exclusions(proj, frames, query_conf, min_conf)
    return Visibility(
        query_patch=patches,
        points=query_points,
        query_conf=query_conf,
        projected_xy=proj.xy,
        projected_depth=proj.depth,
        view_depth=proj.view_depth,
        projected_patch=proj.patch,
        status=status,
    )
