"""Does a head look at the same 3D point in the other views? A check with no ground truth.

VGGT's own predictions are the reference: the query's 3D point comes from its point map and
is projected into every other view with its predicted cameras. Then, per block, head and view,
the global attention row of the query is compared with that projection.

Where the point lands in each view and which (query, view) pairs are excluded (own view, no
point, low confidence, behind the camera, outside the image, occluded) is ``analysis.visibility``:
its docstring gives the projection and the exclusions. Per block, head and valid pair:

- Peak: the argmax of the row over the PATCH tokens of view s (special tokens ignored; ties go
  to the first patch in row-major order).
- ``peak_dist_patches``: Euclidean distance between the peak patch (row, col) and the projected
  patch (row, col), in patches: 0 when the peak is the projected patch (with ties: the mean
  over the tied patches, see below).
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
- Null (what a head unrelated to the geometry scores), per valid pair: the exact expectation for
  a head UNIFORM over the patches of view s, with the same window clipping and exclusions:
  ``share_null = window cells / (gh * gw)`` (the window as clipped at the border) and
  ``peak_dist_null`` = the mean over all patches of view s of their distance (in patches) to the
  projected patch. It is also the mean of the permutation null (the head's map shuffled over the
  view's patches), so under the null hypothesis a gain has mean 0.
- Gains (larger is better; a uniform head scores exactly 0): ``share_gain = share_near -
  share_null``, ``peak_gain = peak_dist_null - peak_dist_patches``. For the gains the peak of a
  row with ties is all its tied patches: ``peak_dist_patches`` is the mean distance over the
  patches that share the maximum (a uniform row: every patch, hence exactly the null).
- Positional control (``control_*``): the same measures around the query's own (row, col) in
  view s instead of the projection. RoPE gives every frame the same positions, so a head that
  follows position rather than geometry scores high here. Descriptive only: the gains use the null.
- Beyond position (``beyond_position_gain``): is there more attention near the correspondence
  than position alone explains? Measured on the symmetric difference of the two windows: A = the
  patches of the correspondence window outside the position window, B = the reverse. The patches
  shared by both windows say nothing either way and are left out. Per valid pair,
  ``beyond_position_gain = m * (share(A) / |A| - share(B) / |B|)`` with ``share`` the fraction of
  the view's patch mass and ``m = (|A| + |B|) / 2``: the mean attention per patch on A minus that
  on B (each against the uniform 1 / (gh * gw), which cancels), scaled to a share. Null 0: a
  uniform head scores exactly 0 even where the windows clip at the border (|A| != |B|), and so
  does any head whose mass lies only in the shared patches (a head on the query's own (row, col)
  when the correspondence is within ``radius`` of it); a head that follows position scores < 0
  wherever its mass reaches B. Where nothing clips (|A| = |B|) it equals ``share_gain`` minus the
  positional control's gain. Pairs where A or B is empty (identical windows; one window inside the
  other at the border) and pairs with no control (camera and register queries) are NaN.
- Peak beyond position (``peak_beyond_position_gain``): the distance (patches) from the query's
  own (row, col) to the projected patch minus the peak's distance (ties: the mean over the tied
  patches). Null 0: a head that peaks on the query's own (row, col) scores exactly 0; positive
  means the peak is closer to the correspondence than position alone would put it. NaN where
  there is no control.
- Findings: ``significance.finding_p`` counts a head as a correspondence head only where its gain
  beats both the uniform null and position (``share_gain`` with ``beyond_position_gain``,
  ``peak_gain`` with ``peak_beyond_position_gain``).
- ``score [L, H]``: the mean of ``share_near`` over all valid (query, view) pairs;
  ``null_score``, ``gain`` (= score - null_score), ``peak_gain`` and ``control_score`` the same
  means of share_null, share_gain, peak_gain and control_share_near (NaN where no pair is valid);
  ``beyond_position_gain_score`` and ``peak_beyond_position_gain_score`` the means of those gains
  over their own pairs. ``unit_gains()`` gives the per-query means ``[L, Q, H]`` (the units of a single-scene interval).

Excluded pairs are NaN in every ``[L, Q, H, S]`` array and are counted by ``counts()``.

Reference: by default VGGT's own geometry (``reference = "model"``): then a head can only agree
with what the model predicts (a wrong camera or point map makes a right head look wrong). With a
``reference.Geometry`` of true cameras and depth (``reference = "truth"``) the query point,
projection and occlusion come from the truth.
Confidence scales differ between models (VGGT's are ``1 + exp(x) >= 1``, so the default
``min_conf = 0`` excludes nothing; VGGT's demo drops the least confident half,
``np.quantile(world_points_conf, 0.5)``). Only global attention looks at other views: frame
attention is refused.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vggt_attn_rerun.analysis.reference import Geometry
from vggt_attn_rerun.analysis.visibility import STATUS_NAMES, VALID, Visibility, query_visibility
from vggt_attn_rerun.core.images import FrameTransform
from vggt_attn_rerun.core.rows import AttentionRows
from vggt_attn_rerun.core.tokens import Query, TokenLayout
from vggt_attn_rerun.errors import UserError

# The status codes that read Consistency.status come with it.
__all__ = ["STATUS_NAMES", "VALID", "Consistency", "geometric_consistency"]


@dataclass
class Consistency(Visibility):
    """Geometric consistency of the captured global attention rows (see the module docstring).

    Shapes: L blocks, Q queries, H heads, S views. ``[L, Q, H, S]`` arrays are float64 and NaN
    where ``status != VALID``.

    Attributes:
        (inherited) the Visibility of the queries: their points, projections and ``status``.
        blocks, queries, radius: what was measured.
        peak_patch: ``[L, Q, H, S, 2]`` int (row, col) of each view's attention peak (all views).
        peak_dist_patches, peak_dist_pixels, mass_near, share_near: ``[L, Q, H, S]``.
        control_peak_dist_patches, control_mass_near, control_share_near: ``[L, Q, H, S]``, the
            positional control around the query's own (row, col).
        share_null, peak_dist_null: ``[Q, S]`` the uniform-head expectations (NaN where not valid).
        share_gain, peak_gain: ``[L, Q, H, S]`` gains against them (larger is better).
        beyond_position_gain: ``[L, Q, H, S]`` attention near the correspondence beyond position
            (NaN also where either side of the windows' symmetric difference is empty or there is no control).
        score, null_score, gain, control_score: ``[L, H]`` means of share_near, share_null,
            share_gain, control_share_near over valid pairs.
        peak_dist_score, peak_null_score, peak_gain_score: ``[L, H]`` means of peak_dist_patches,
            peak_dist_null and peak_gain over valid pairs.
        beyond_position_gain_score: ``[L, H]`` mean of beyond_position_gain over its pairs.
        peak_beyond_position_gain: ``[L, Q, H, S]`` the peak's distance gain over the query's own
            (row, col) (NaN where there is no control); peak_beyond_position_gain_score its ``[L, H]`` mean.
        reference: "model" (VGGT's predictions) or "truth" (given cameras and depth).
    """

    blocks: tuple[int, ...]
    queries: tuple[Query, ...]
    radius: int
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
    share_null: np.ndarray
    share_gain: np.ndarray
    peak_dist_null: np.ndarray
    peak_gain: np.ndarray
    null_score: np.ndarray
    gain: np.ndarray
    peak_gain_score: np.ndarray
    peak_dist_score: np.ndarray
    peak_null_score: np.ndarray
    beyond_position_gain: np.ndarray
    beyond_position_gain_score: np.ndarray
    peak_beyond_position_gain: np.ndarray
    peak_beyond_position_gain_score: np.ndarray
    reference: str = "model"

    def unit_gains(self) -> dict[str, np.ndarray]:
        """Per query, the mean gain over its valid views: ``{"correspondence", "peak_dist",
        "correspondence_beyond_position", "peak_dist_beyond_position"}`` -> ``[L, Q, H]``."""
        return {
            "correspondence": mean_over_views(self.share_gain),
            "peak_dist": mean_over_views(self.peak_gain),
            "correspondence_beyond_position": mean_over_views(self.beyond_position_gain),
            "peak_dist_beyond_position": mean_over_views(self.peak_beyond_position_gain),
        }


def mean_over_views(values: np.ndarray) -> np.ndarray:
    """``[..., S]`` -> ``[...]``: the mean over the finite entries of the last axis (NaN where none)."""
    ok = np.isfinite(values)
    count = ok.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(ok, values, 0.0).sum(-1) / np.maximum(count, 1), np.nan)


def tie_weights(patch_probs: np.ndarray) -> np.ndarray:
    """``[..., N]`` -> ``[..., N]``: 1/k on the k patches that share the row's maximum, 0 elsewhere."""
    ties = patch_probs == patch_probs.max(-1, keepdims=True)
    return ties / ties.sum(-1, keepdims=True)


def patch_distances(target: np.ndarray, gh: int, gw: int) -> np.ndarray:
    """``[Q, S, gh * gw]`` Euclidean distance in patches from every patch to a ``[Q, S, 2]`` (row, col)."""
    rows, cols = np.divmod(np.arange(gh * gw), gw)
    t = np.asarray(target, np.float64)
    return np.hypot(rows - t[..., 0, None], cols - t[..., 1, None])


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


def _check_request(rows: AttentionRows, kind: str, radius: int) -> int:
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
    return int(radius)


@dataclass
class _PeaksAndMasses:
    """Per block, query, head and view (``[L, Q, H, S]``): where the row peaks and how its patch mass falls."""

    peak_patch: np.ndarray  # [L, Q, H, S, 2] int (row, col)
    view_mass: np.ndarray  # all patch mass on view s
    mass_near: np.ndarray  # within the window around the projection
    control_mass: np.ndarray  # within the window around the query's own (row, col)
    near_only_mass: np.ndarray  # in the projection's window but not the control's
    control_only_mass: np.ndarray  # in the control's window but not the projection's
    tie_dist: np.ndarray  # mean distance (patches) from the tied peak patches to the target


def _peaks_and_masses(
    probs: torch.Tensor, lay: TokenLayout, near_windows: np.ndarray, control_windows: np.ndarray, dist: np.ndarray
) -> _PeaksAndMasses:
    """Measure ``[L, Q, H, S, P]`` rows against ``[Q, S, gh, gw]`` windows, one (block, query) at a
    time: the float64 copy is one query's rows of one block, never a multiple of all the rows."""
    num_blocks, num_queries, num_heads, num_views = probs.shape[:4]
    shape = (num_blocks, num_queries, num_heads, num_views)
    near = near_windows.reshape(num_queries, num_views, -1)
    control = control_windows.reshape(num_queries, num_views, -1)
    near_only, control_only = (near & ~control).astype(np.float64), (control & ~near).astype(np.float64)
    near, control = near.astype(np.float64), control.astype(np.float64)
    out = _PeaksAndMasses(np.empty(shape + (2,), np.int64), *(np.empty(shape) for _ in range(6)))
    for block, q in itertools.product(range(num_blocks), range(num_queries)):
        patch_probs = probs[block, q, ..., lay.patch_start :].to("cpu", torch.float64).numpy()  # [H, S, gh*gw]
        peak = patch_probs.argmax(-1)
        out.peak_patch[block, q] = np.stack([peak // lay.grid_w, peak % lay.grid_w], -1)
        out.view_mass[block, q] = patch_probs.sum(-1)
        out.mass_near[block, q] = np.einsum("hsn,sn->hs", patch_probs, near[q])
        out.control_mass[block, q] = np.einsum("hsn,sn->hs", patch_probs, control[q])
        out.near_only_mass[block, q] = np.einsum("hsn,sn->hs", patch_probs, near_only[q])
        out.control_only_mass[block, q] = np.einsum("hsn,sn->hs", patch_probs, control_only[q])
        out.tie_dist[block, q] = np.einsum("hsn,sn->hs", tie_weights(patch_probs), dist[q])
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
    geometry: Geometry | None = None,
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
        geometry: the reference cameras and depth (``reference.Geometry``; None: the model's own).
            A truth geometry needs depth.

    Returns:
        Consistency (``[L, Q, H, S]`` arrays, ``[Q, S]`` status, ``[L, H]`` scores, nulls and gains).
    """
    radius = _check_request(rows, kind, radius)
    lay = rows.layout
    gh, gw = lay.grid_h, lay.grid_w
    queries = tuple(rows.queries)
    seen = query_visibility(lay, queries, predictions, min_conf, occlusion_margin, points, transforms, geometry)
    valid = seen.valid
    # The positional control needs the query's own patch: camera and register queries have none.
    control_ok = valid & (seen.query_patch[:, None, 0] >= 0)
    query_patch_per_view = np.broadcast_to(seen.query_patch[:, None], seen.projected_patch.shape)

    # Where each head's row peaks in each view, and how much of its mass lands near the projection.
    near_windows = _window_masks(seen.projected_patch, valid, gh, gw, radius)
    control_windows = _window_masks(query_patch_per_view, control_ok, gh, gw, radius)
    dist = patch_distances(np.where(valid[..., None], seen.projected_patch, 0), gh, gw)  # [Q, S, N]
    measured = _peaks_and_masses(rows.probs[kind], lay, near_windows, control_windows, dist)
    share_near = _share(measured.mass_near, measured.view_mass, valid)
    control_share_near = _share(measured.control_mass, measured.view_mass, control_ok)

    # The uniform head's expectations, with the same clipped windows and the same exclusions.
    share_null = np.where(valid, near_windows.sum((-2, -1)) / (gh * gw), np.nan)
    peak_dist_null = np.where(valid, dist.mean(-1), np.nan)
    share_gain = share_near - _per_pair(share_null)
    peak_dist = np.where(_per_pair(valid), measured.tie_dist, np.nan)
    peak_gain = _per_pair(peak_dist_null) - peak_dist
    # Beyond position: per-patch attention on either side of the windows' symmetric difference.
    near_only_cells = (near_windows & ~control_windows).sum((-2, -1))  # [Q, S]
    control_only_cells = (control_windows & ~near_windows).sum((-2, -1))
    sides = control_ok & (near_only_cells > 0) & (control_only_cells > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        density_diff = _share(measured.near_only_mass, measured.view_mass, sides) / _per_pair(near_only_cells) - _share(
            measured.control_only_mass, measured.view_mass, sides
        ) / _per_pair(control_only_cells)
    beyond_position_gain = _per_pair((near_only_cells + control_only_cells) / 2) * density_diff
    # Where a head that follows position would peak: the query's own patch, this far from the projection.
    own_index = np.maximum(seen.query_patch[:, 0], 0) * gw + np.maximum(seen.query_patch[:, 1], 0)  # [Q]
    position_dist = np.where(control_ok, np.take_along_axis(dist, own_index[:, None, None], -1)[..., 0], np.nan)
    peak_beyond_position_gain = _per_pair(position_dist) - np.where(_per_pair(control_ok), peak_dist, np.nan)
    # NaN where the view got no mass: the null is averaged over the same pairs as the score.
    null_per_pair = np.where(np.isfinite(share_near), _per_pair(share_null), np.nan)

    return Consistency(
        **vars(seen),
        blocks=tuple(rows.blocks),
        queries=queries,
        radius=radius,
        peak_patch=measured.peak_patch,
        peak_dist_patches=peak_dist,
        peak_dist_pixels=_pixel_distance(measured.peak_patch, seen.projected_xy, valid, lay.patch_size),
        mass_near=np.where(_per_pair(valid), measured.mass_near, np.nan),
        share_near=share_near,
        control_peak_dist_patches=_patch_distance(measured.peak_patch, query_patch_per_view, control_ok),
        control_mass_near=np.where(_per_pair(control_ok), measured.control_mass, np.nan),
        control_share_near=control_share_near,
        score=_mean_lh(share_near),
        control_score=_mean_lh(control_share_near),
        share_null=share_null,
        share_gain=share_gain,
        peak_dist_null=peak_dist_null,
        peak_gain=peak_gain,
        null_score=_mean_lh(null_per_pair),
        gain=_mean_lh(share_gain),
        peak_gain_score=_mean_lh(peak_gain),
        peak_dist_score=_mean_lh(peak_dist),
        peak_null_score=_mean_lh(np.broadcast_to(_per_pair(peak_dist_null), peak_dist.shape)),
        beyond_position_gain=beyond_position_gain,
        beyond_position_gain_score=_mean_lh(beyond_position_gain),
        peak_beyond_position_gain=peak_beyond_position_gain,
        peak_beyond_position_gain_score=_mean_lh(peak_beyond_position_gain),
        reference=geometry.reference if geometry is not None else "model",
    )


def _mean_lh(values: np.ndarray) -> np.ndarray:
    """``[L, Q, H, S]`` -> ``[L, H]`` mean over the finite entries (NaN where there are none)."""
    ok = np.isfinite(values)
    total = np.where(ok, values, 0.0).sum(axis=(1, 3))
    count = ok.sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
