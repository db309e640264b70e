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
from vggt_attn_rerun.core.tokens import Query
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
        raise UserError(
            f"prediction {name!r} has shape {list(a.shape)}, expected {list(shape)} (batch size 1)"
        )
    return a


def _window_masks(centers: np.ndarray, ok: np.ndarray, gh: int, gw: int, radius: int) -> np.ndarray:
    """``[Q, S, gh, gw]`` bool: patches within Chebyshev ``radius`` of each (row, col) centre where ok."""
    rr = np.arange(gh)[:, None]
    cc = np.arange(gw)[None, :]
    dr = np.abs(rr[None, None] - centers[..., 0, None, None])
    dc = np.abs(cc[None, None] - centers[..., 1, None, None])
    return (np.maximum(dr, dc) <= radius) & ok[..., None, None]


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
    radius = int(radius)
    lay = rows.layout
    s_, gh, gw, ps = lay.num_frames, lay.grid_h, lay.grid_w, lay.patch_size
    h_img, w_img = lay.image_size
    queries = tuple(rows.queries)
    q_ = len(queries)

    pose_enc = _prediction(predictions, "pose_enc", (s_, 9))
    depth = _prediction(predictions, "depth", (s_, h_img, w_img))
    extr, intr = (t.numpy() for t in pose_encoding_to_cameras(torch.from_numpy(pose_enc), (h_img, w_img)))

    # -- the query points ---------------------------------------------------------------------
    qpatch = np.full((q_, 2), -1, np.int64)
    for i, qq in enumerate(queries):
        rc = qq.patch(lay)
        if rc is not None:
            qpatch[i] = rc
    conf = np.full(q_, np.nan)
    if points is not None:
        pts = np.asarray(points, dtype=np.float64)
        if pts.shape != (q_, 3):
            raise UserError(f"points must have shape [{q_}, 3] (one per query), got {list(pts.shape)}")
    else:
        wp = _prediction(predictions, "world_points", (s_, h_img, w_img, 3))
        wc = _prediction(predictions, "world_points_conf", (s_, h_img, w_img))
        pts = np.full((q_, 3), np.nan)
        for i, qq in enumerate(queries):
            if qpatch[i, 0] < 0:
                continue
            r, c = qpatch[i]
            win = (qq.frame, slice(r * ps, (r + 1) * ps), slice(c * ps, (c + 1) * ps))
            pts[i] = wp[win].reshape(-1, 3).mean(0)
            conf[i] = wc[win].mean()

    # -- projection and status ----------------------------------------------------------------
    cam = np.einsum("sij,qj->qsi", extr[:, :, :3], pts) + extr[None, :, :, 3]  # [Q, S, 3]
    z = cam[..., 2]
    fx, fy, cx, cy = intr[:, 0, 0], intr[:, 1, 1], intr[:, 0, 2], intr[:, 1, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        x = fx * cam[..., 0] / z + cx + 0.5  # continuous convention
        y = fy * cam[..., 1] / z + cy + 0.5
    has_point = np.isfinite(pts).all(-1)[:, None] & np.ones((1, s_), bool)
    front = has_point & (z > 0)
    x = np.where(front, x, np.nan)
    y = np.where(front, y, np.nan)
    box = np.array([(0.0, 0.0, float(w_img), float(h_img))] * s_)
    if transforms is not None:
        if len(transforms) != s_:
            raise UserError(f"got {len(transforms)} frame transforms for {s_} views")
        box = np.array([t.valid_model_box() for t in transforms], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        inside = front & (x >= box[:, 0]) & (y >= box[:, 1]) & (x < box[:, 2]) & (y < box[:, 3])
    px = np.where(inside, np.floor(np.nan_to_num(x)), 0).astype(np.int64)
    py = np.where(inside, np.floor(np.nan_to_num(y)), 0).astype(np.int64)
    view_depth = np.where(inside, depth[np.arange(s_)[None, :], py, px], np.nan)
    with np.errstate(invalid="ignore"):
        occluded = (
            inside & np.isfinite(view_depth) & (view_depth > 0) & (z > view_depth * (1 + occlusion_margin))
        )
    proj_patch = np.where(inside[..., None], np.stack([py // ps, px // ps], -1), -1)

    status = np.full((q_, s_), VALID, np.int8)
    frames = np.array([qq.frame for qq in queries], np.int64)
    own = frames[:, None] == np.arange(s_)[None, :]
    low = (conf < min_conf)[:, None] & np.ones((1, s_), bool)  # NaN conf (not measured) is never low
    for mask, code in (
        (occluded, OCCLUDED),
        (has_point & ~inside & (z > 0), OUTSIDE_IMAGE),
        (has_point & ~(z > 0), BEHIND_CAMERA),
        (has_point & low, LOW_CONFIDENCE),
        (~has_point, NO_POINT),
        (own, OWN_VIEW),
    ):  # later entries take precedence
        status[mask] = code
    valid = status == VALID
    ctrl_ok = valid & (qpatch[:, None, 0] >= 0)

    # -- attention measures, one block at a time ----------------------------------------------
    near = _window_masks(proj_patch, valid, gh, gw, radius)  # [Q, S, gh, gw]
    ctrl = _window_masks(np.broadcast_to(qpatch[:, None], (q_, s_, 2)), ctrl_ok, gh, gw, radius)
    probs = rows.probs[kind]
    l_, h_ = probs.shape[0], probs.shape[2]
    shape = (l_, q_, h_, s_)
    peak_patch = np.empty(shape + (2,), np.int64)
    mass_near, ctrl_mass, view_mass = (np.empty(shape) for _ in range(3))
    for li in range(l_):
        pat = probs[li, ..., lay.patch_start :].to("cpu", torch.float64).numpy()  # [Q, H, S, gh*gw]
        arg = pat.argmax(-1)
        peak_patch[li] = np.stack([arg // gw, arg % gw], -1)
        view_mass[li] = pat.sum(-1)
        mass_near[li] = np.einsum("qhsn,qsn->qhs", pat, near.reshape(q_, s_, -1).astype(np.float64))
        ctrl_mass[li] = np.einsum("qhsn,qsn->qhs", pat, ctrl.reshape(q_, s_, -1).astype(np.float64))

    v4 = valid[None, :, None, :]
    c4 = ctrl_ok[None, :, None, :]
    pr = np.where(valid, proj_patch[..., 0], 0)[None, :, None, :]
    pc = np.where(valid, proj_patch[..., 1], 0)[None, :, None, :]
    peak_r, peak_c = peak_patch[..., 0], peak_patch[..., 1]
    dist_patches = np.where(v4, np.hypot(peak_r - pr, peak_c - pc), np.nan)
    with np.errstate(invalid="ignore"):
        dist_pixels = np.where(
            v4,
            np.hypot((peak_c + 0.5) * ps - x[None, :, None, :], (peak_r + 0.5) * ps - y[None, :, None, :]),
            np.nan,
        )
        share = np.where(v4 & (view_mass > 0), mass_near / np.where(view_mass > 0, view_mass, 1), np.nan)
        ctrl_share = np.where(c4 & (view_mass > 0), ctrl_mass / np.where(view_mass > 0, view_mass, 1), np.nan)
    qr, qc = qpatch[None, :, None, None, 0], qpatch[None, :, None, None, 1]
    ctrl_dist = np.where(c4, np.hypot(peak_r - qr, peak_c - qc), np.nan)

    return Consistency(
        blocks=tuple(rows.blocks),
        queries=queries,
        radius=radius,
        points=pts,
        query_conf=conf,
        projected_xy=np.stack([x, y], -1),
        projected_depth=np.where(has_point, z, np.nan),
        view_depth=view_depth,
        projected_patch=proj_patch,
        status=status,
        peak_patch=peak_patch,
        peak_dist_patches=dist_patches,
        peak_dist_pixels=dist_pixels,
        mass_near=np.where(v4, mass_near, np.nan),
        share_near=share,
        control_peak_dist_patches=ctrl_dist,
        control_mass_near=np.where(c4, ctrl_mass, np.nan),
        control_share_near=ctrl_share,
        score=_mean_lh(share),
        control_score=_mean_lh(ctrl_share),
    )


def _mean_lh(values: np.ndarray) -> np.ndarray:
    """``[L, Q, H, S]`` -> ``[L, H]`` mean over the finite entries (NaN where there are none)."""
    ok = np.isfinite(values)
    total = np.where(ok, values, 0.0).sum(axis=(1, 3))
    count = ok.sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
