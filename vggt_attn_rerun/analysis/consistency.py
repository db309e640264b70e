"""Does a head look at the same 3D point in the other views? A check with no ground truth.

VGGT's own predictions are the reference: the query's 3D point comes from its point map and
is projected into every other view with its predicted cameras. Then, per block, head and view,
the global attention row of the query is compared with that projection.

Definitions (pixels are model input pixels in the continuous convention of tokens.py: pixel
``(i, j)`` covers ``[j, j+1) x [i, i+1)``; patch ``(row, col)`` covers ``[col, col+1) x
[row, row+1)`` times ``patch_size``):

- Query point X: the mean of ``world_points`` over the ``patch_size x patch_size`` pixels of the
  query patch in its frame, or a point the caller gives. Query confidence: the mean of
  ``world_points_conf`` over the same pixels (not checked for given points).
- Projection into view s: ``x_cam = R_s X + t_s`` with VGGT's camera-from-world extrinsics and
  intrinsics (``geometry.pose_encoding_to_cameras``), ``u = fx x/z + cx``, ``v = fy y/z + cy``.
  VGGT's intrinsics sample pixel ``j`` at ``u = j`` (its unprojection convention), so the
  continuous position is ``(u + 0.5, v + 0.5)``; the projected patch is the patch that covers
  it, the projected pixel the pixel that covers it.
- Peak: the argmax of the row over the PATCH tokens of view s (special tokens ignored; ties go
  to the first patch in row-major order).
- ``peak_dist_patches``: Euclidean distance between the peak patch (row, col) and the projected
  patch (row, col), in patches: 0 when the peak is the projected patch.
- ``peak_dist_pixels``: Euclidean distance between the centre of the peak patch and the exact
  projected position, in model pixels (at most ``patch_size / sqrt(2)`` when the peak is right).
- ``mass_near``: the raw probability on the patches of view s within Chebyshev distance
  ``radius`` of the projected patch (``max(|dr|, |dc|) <= radius``: a (2r+1) x (2r+1) square of
  patches clipped at the image border; radius 0 = the projected patch only). Chebyshev because
  the window is then a square of whole patches, the shape of the patch grid.
- ``share_near``: ``mass_near`` divided by the row's total patch mass on view s: the fraction of
  what the head spends on view s that lands near the correspondence. It does not depend on how
  much the head looks at view s at all (``summaries.view_mass`` measures that). A head that is
  uniform over the patches of view s has ``share_near = window cells / (gh * gw)``.
- Positional control (``control_*``): the same measures around the query's own (row, col) in
  view s instead of the projection. RoPE gives every frame the same positions, so a head that
  follows position rather than geometry scores high here; compare ``score`` with
  ``control_score``.
- ``score [L, H]``: the mean of ``share_near`` over all valid (query, view) pairs;
  ``control_score`` the same for the control (NaN where no pair is valid).

Exclusions: each (query, view) pair gets one status code (the first that applies, in this order);
excluded pairs are NaN in every ``[L, Q, H, S]`` array and are counted by ``counts()``:

- ``own_view``: the query's own frame (not a cross-view comparison);
- ``no_point``: no 3D point (a camera/register query without a given point, or a non-finite point);
- ``low_confidence``: the query's point confidence is below ``min_conf`` (applies to all views);
- ``behind_camera``: the point's depth in view s is ``z <= 0``;
- ``outside_image``: the projection falls outside view s's image (or outside the part of it
  covered by the photo when frame transforms are given: white padding is excluded);
- ``occluded``: the point is farther than VGGT's predicted depth at the projected pixel by more
  than ``occlusion_margin`` (relative): ``z > depth * (1 + margin)``: something nearer hides it.

Limits: everything is measured against VGGT's own geometry, not the truth, so a head can only
agree with what the model predicts (a wrong camera or point map makes a right head look wrong).
The point is the mean over a patch and the occlusion test looks at one pixel, so points on depth
edges are unreliable. Confidence scales differ between models (VGGT's are ``1 + exp(x) >= 1``,
so the default ``min_conf = 0`` excludes nothing; VGGT's demo drops the least confident half,
``np.quantile(world_points_conf, 0.5)``). Only global attention looks at other views: frame
attention is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vggt_attn_rerun.core.geometry import pose_encoding_to_cameras
from vggt_attn_rerun.core.images import FrameTransform
from vggt_attn_rerun.core.rows import AttentionRows
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


@dataclass
class Consistency:
    """Geometric consistency of the captured global attention rows (see the module docstring).

    Shapes: L blocks, Q queries, H heads, S views. ``[L, Q, H, S]`` arrays are float64 and NaN
    where ``status != VALID``.

    Attributes:
        blocks, queries, radius: what was measured.
        points: ``[Q, 3]`` the query points in VGGT's world frame (NaN: none).
        query_conf: ``[Q]`` mean point confidence of the query patch (NaN: not measured).
        projected_xy: ``[Q, S, 2]`` projected (x, y) in model pixels, continuous convention
            (NaN: no point or behind the camera).
        projected_depth: ``[Q, S]`` the point's depth z in camera s (NaN: no point).
        view_depth: ``[Q, S]`` VGGT's predicted depth at the projected pixel (NaN: not in the image).
        projected_patch: ``[Q, S, 2]`` int (row, col) of the projected patch (-1: not in the image).
        status: ``[Q, S]`` int8 status codes (STATUS_NAMES).
        peak_patch: ``[L, Q, H, S, 2]`` int (row, col) of each view's attention peak (all views).
        peak_dist_patches, peak_dist_pixels, mass_near, share_near: ``[L, Q, H, S]``.
        control_peak_dist_patches, control_mass_near, control_share_near: ``[L, Q, H, S]``, the
            positional control around the query's own (row, col).
        score, control_score: ``[L, H]`` means of share_near / control_share_near over valid pairs.
    """

    blocks: tuple[int, ...]
    queries: tuple[Query, ...]
    radius: int
    points: np.ndarray
    query_conf: np.ndarray
    projected_xy: np.ndarray
    projected_depth: np.ndarray
    view_depth: np.ndarray
    projected_patch: np.ndarray
    status: np.ndarray
    peak_patch: np.ndarray
    peak_dist_patches: np.ndarray
    peak_dist_pixels: np.ndarray
    mass_near: np.ndarray
    share_near: np.ndarray
    control_peak_dist_patches: np.ndarray
    control_mass_near: np.ndarray
    control_share_near: np.ndarray
    score: np.ndarray
    control_score: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """``[Q, S]`` bool: the pairs that were measured."""
        return self.status == VALID

    def counts(self) -> dict[str, int]:
        """How many (query, view) pairs got each status, by name (all names present)."""
        return {name: int((self.status == code).sum()) for code, name in enumerate(STATUS_NAMES)}

    @property
    def num_excluded(self) -> int:
        """Pairs of a query with ANOTHER view that were excluded (own views are not counted)."""
        return int(((self.status != VALID) & (self.status != OWN_VIEW)).sum())


def _as_numpy(x: object, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise UserError(f"prediction {name!r} is not a numeric array ({e})") from None


def _prediction(predictions: Mapping[str, object], name: str, shape: tuple[int, ...]) -> np.ndarray:
    """``predictions[name]`` without its batch axis of 1, checked against ``shape``."""
    if name not in predictions:
        raise UserError(f"predictions lack {name!r}: geometric consistency needs {name} from VGGT's output")
    a = _as_numpy(predictions[name], name)
    if a.ndim > len(shape) and a.shape[-1] == 1 and shape[-1] != 1:  # depth [..., H, W, 1]
        a = a[..., 0]
    if a.ndim == len(shape) + 1 and a.shape[0] == 1:  # the batch axis
        a = a[0]
    if a.shape != shape:
        raise UserError(f"prediction {name!r} has shape {list(a.shape)}, expected {list(shape)} (batch size 1)")
    return a


def _window_masks(centers: np.ndarray, ok: np.ndarray, gh: int, gw: int, radius: int) -> np.ndarray:
    """``[Q, S, gh, gw]`` bool: patches within Chebyshev ``radius`` of each (row, col) centre where ok."""
    rows = np.arange(gh)[:, None]
    cols = np.arange(gw)[None, :]
    d_row = np.abs(rows[None, None] - centers[..., 0, None, None])
    d_col = np.abs(cols[None, None] - centers[..., 1, None, None])
    return (np.maximum(d_row, d_col) <= radius) & ok[..., None, None]


def _per_pair(a: np.ndarray) -> np.ndarray:
    """``[Q, S, ...]`` -> ``[1, Q, 1, S, ...]``: a per-(query, view) array against ``[L, Q, H, S]``."""
    return a[None, :, None]


def _check_request(rows: AttentionRows, kind: str, radius: int, occlusion_margin: float) -> int:
    """The radius as an int, after refusing what cannot be measured."""
    if kind != "global":
        raise UserError(
            f"geometric consistency needs global attention, got {kind!r}: frame attention only attends "
            "the query's own view"
        )
    if kind not in rows.probs:
        raise UserError(f"attention kind {kind!r} was not captured: captured kinds are {list(rows.probs)}")
    if int(radius) != radius or radius < 0:
        raise UserError(f"radius must be an integer >= 0 (patches), got {radius}")
    if not occlusion_margin >= 0:
        raise UserError(f"occlusion_margin must be >= 0, got {occlusion_margin}")
    return int(radius)


def _query_patches(queries: Sequence[Query], lay: TokenLayout) -> np.ndarray:
    """``[Q, 2]`` int (row, col) of each query's patch; -1 for camera and register tokens."""
    patches = np.full((len(queries), 2), -1, np.int64)
    for i, query in enumerate(queries):
        rc = query.patch(lay)
        if rc is not None:
            patches[i] = rc
    return patches


def _query_points(
    predictions: Mapping[str, object],
    queries: Sequence[Query],
    query_patches: np.ndarray,
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
    world_points = _prediction(predictions, "world_points", (lay.num_frames, h_img, w_img, 3))
    world_conf = _prediction(predictions, "world_points_conf", (lay.num_frames, h_img, w_img))
    points = np.full((n, 3), np.nan)
    for i, query in enumerate(queries):
        row, col = query_patches[i]
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
    fx, fy, cx, cy = intrinsics[:, 0, 0], intrinsics[:, 1, 1], intrinsics[:, 0, 2], intrinsics[:, 1, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        x = fx * cam[..., 0] / z + cx + 0.5  # VGGT samples pixel j at u = j: +0.5 is its centre
        y = fy * cam[..., 1] / z + cy + 0.5
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
class _PeaksAndMasses:
    """Per block, query, head and view (``[L, Q, H, S]``): where the row peaks and how its patch mass falls."""

    peak_patch: np.ndarray  # [L, Q, H, S, 2] int (row, col)
    view_mass: np.ndarray  # all patch mass on view s
    mass_near: np.ndarray  # within the window around the projection
    control_mass: np.ndarray  # within the window around the query's own (row, col)


def _peaks_and_masses(
    probs: torch.Tensor, lay: TokenLayout, near_windows: np.ndarray, control_windows: np.ndarray
) -> _PeaksAndMasses:
    """Measure ``[L, Q, H, S, P]`` rows against ``[Q, S, gh, gw]`` windows, one block at a time (memory)."""
    num_blocks, num_queries, num_heads, num_views = probs.shape[:4]
    shape = (num_blocks, num_queries, num_heads, num_views)
    near = near_windows.reshape(num_queries, num_views, -1).astype(np.float64)
    control = control_windows.reshape(num_queries, num_views, -1).astype(np.float64)
    out = _PeaksAndMasses(np.empty(shape + (2,), np.int64), np.empty(shape), np.empty(shape), np.empty(shape))
    for block in range(num_blocks):
        patch_probs = probs[block, ..., lay.patch_start :].to("cpu", torch.float64).numpy()  # [Q, H, S, gh*gw]
        peak = patch_probs.argmax(-1)
        out.peak_patch[block] = np.stack([peak // lay.grid_w, peak % lay.grid_w], -1)
        out.view_mass[block] = patch_probs.sum(-1)
        out.mass_near[block] = np.einsum("qhsn,qsn->qhs", patch_probs, near)
        out.control_mass[block] = np.einsum("qhsn,qsn->qhs", patch_probs, control)
    return out


def _patch_distance(peak_patch: np.ndarray, target: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """``[L, Q, H, S]`` distance in patches from each peak to a ``[Q, S, 2]`` target patch (NaN where not ok)."""
    target = _per_pair(np.where(ok[..., None], target, 0))
    d = np.hypot(peak_patch[..., 0] - target[..., 0], peak_patch[..., 1] - target[..., 1])
    return np.where(_per_pair(ok), d, np.nan)


def _pixel_distance(peak_patch: np.ndarray, xy: np.ndarray, ok: np.ndarray, patch_size: int) -> np.ndarray:
    """``[L, Q, H, S]`` distance in pixels from each peak patch's centre to a ``[Q, S, 2]`` position."""
    centre_x = (peak_patch[..., 1] + 0.5) * patch_size
    centre_y = (peak_patch[..., 0] + 0.5) * patch_size
    with np.errstate(invalid="ignore"):
        d = np.hypot(centre_x - _per_pair(xy[..., 0]), centre_y - _per_pair(xy[..., 1]))
    return np.where(_per_pair(ok), d, np.nan)


def _share(mass: np.ndarray, view_mass: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """``mass / view_mass`` where ``[Q, S]`` ok and the view got any mass, else NaN."""
    looked = view_mass > 0
    with np.errstate(invalid="ignore"):
        return np.where(_per_pair(ok) & looked, mass / np.where(looked, view_mass, 1), np.nan)


def geometric_consistency(
    rows: AttentionRows,
    predictions: Mapping[str, object],
    kind: str = "global",
    radius: int = 1,
    min_conf: float = 0.0,
    occlusion_margin: float = 0.05,
    points: np.ndarray | None = None,
    transforms: Sequence[FrameTransform] | None = None,
) -> Consistency:
    """Compare each head's attention in the other views with the projection of the query's 3D point.

    Args:
        rows: captured rows with global attention (``rows.probs["global"]`` ``[L, Q, H, S, P]``).
        predictions: VGGT's output (``pose_enc [1, S, 9]``, ``world_points [1, S, H, W, 3]``,
            ``world_points_conf [1, S, H, W]``, ``depth [1, S, H, W, 1]``; tensors or arrays,
            the batch axis optional).
        kind: must be "global" (frame attention never looks at other views).
        radius: Chebyshev radius in patches of the windows of mass_near (>= 0).
        min_conf: queries whose point confidence is below this are excluded (low_confidence).
        occlusion_margin: relative depth margin of the occlusion test (>= 0).
        points: optional ``[Q, 3]`` world points replacing the prediction (NaN row: no point).
        transforms: optional frame transforms: projections into white padding count as outside.

    Returns:
        Consistency (``[L, Q, H, S]`` arrays, ``[Q, S]`` status, ``[L, H]`` scores).
    """
    radius = _check_request(rows, kind, radius, occlusion_margin)
    lay = rows.layout
    queries = tuple(rows.queries)
    h_img, w_img = lay.image_size

    # Where the query's 3D point lands in every view, and which (query, view) pairs can be measured.
    pose_enc = _prediction(predictions, "pose_enc", (lay.num_frames, 9))
    depth = _prediction(predictions, "depth", (lay.num_frames, h_img, w_img))
    extrinsics, intrinsics = (t.numpy() for t in pose_encoding_to_cameras(torch.from_numpy(pose_enc), (h_img, w_img)))
    query_patches = _query_patches(queries, lay)
    query_points, query_conf = _query_points(predictions, queries, query_patches, lay, points)
    boxes = _image_boxes(transforms, lay)
    proj = _project(query_points, extrinsics, intrinsics, depth, boxes, lay.patch_size, occlusion_margin)
    status = _exclusions(proj, np.array([q.frame for q in queries], np.int64), query_conf, min_conf)
    valid = status == VALID
    # The positional control needs the query's own patch: camera and register queries have none.
    control_ok = valid & (query_patches[:, None, 0] >= 0)
    query_patch_per_view = np.broadcast_to(query_patches[:, None], proj.patch.shape)

    # Where each head's row peaks in each view, and how much of its mass lands near the projection.
    near_windows = _window_masks(proj.patch, valid, lay.grid_h, lay.grid_w, radius)
    control_windows = _window_masks(query_patch_per_view, control_ok, lay.grid_h, lay.grid_w, radius)
    measured = _peaks_and_masses(rows.probs[kind], lay, near_windows, control_windows)
    share_near = _share(measured.mass_near, measured.view_mass, valid)
    control_share_near = _share(measured.control_mass, measured.view_mass, control_ok)

    return Consistency(
        blocks=tuple(rows.blocks),
        queries=queries,
        radius=radius,
        points=query_points,
        query_conf=query_conf,
        projected_xy=proj.xy,
        projected_depth=proj.depth,
        view_depth=proj.view_depth,
        projected_patch=proj.patch,
        status=status,
        peak_patch=measured.peak_patch,
        peak_dist_patches=_patch_distance(measured.peak_patch, proj.patch, valid),
        peak_dist_pixels=_pixel_distance(measured.peak_patch, proj.xy, valid, lay.patch_size),
        mass_near=np.where(_per_pair(valid), measured.mass_near, np.nan),
        share_near=share_near,
        control_peak_dist_patches=_patch_distance(measured.peak_patch, query_patch_per_view, control_ok),
        control_mass_near=np.where(_per_pair(control_ok), measured.control_mass, np.nan),
        control_share_near=control_share_near,
        score=_mean_lh(share_near),
        control_score=_mean_lh(control_share_near),
    )


def _mean_lh(values: np.ndarray) -> np.ndarray:
    """``[L, Q, H, S]`` -> ``[L, H]`` mean over the finite entries (NaN where there are none)."""
    ok = np.isfinite(values)
    total = np.where(ok, values, 0.0).sum(axis=(1, 3))
    count = ok.sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
