"""Does a head's attention peak lie on the query's epipolar line? A geometry check with no depth.

The reference cameras are VGGT's predicted ones (``geometry.pose_encoding_to_cameras``:
camera-from-world ``[R | t]`` and intrinsics ``K``), or true cameras (``reference.Geometry``).
For a query patch in view a and another view b, the query's 3D point, whatever its depth,
projects somewhere on the epipolar line ``l = F x`` in view b, with

    R = R_b R_a^T,  t = t_b - R t_a,  E = [t]_x R,  F = K_b^-T E K_a^-1,  x_b^T F x_a = 0.

So a head that matches points across views puts its peak in view b near that line, and no depth
or point map is needed (unlike ``consistency.py``, which uses VGGT's point map).

Definitions (pixels are model input pixels in the continuous convention of tokens.py; VGGT's
intrinsics sample pixel ``j`` at ``u = j``, so a continuous position ``x`` is ``u + 0.5``):

- Query position ``x_a``: the centre of the query patch. Peak ``x_b``: the centre of the patch
  with the largest probability among the PATCH tokens of view b (``peak_xy``: ties go to the
  first in row-major order; the distances below average over all tied patches).
- ``sampson``: the Sampson distance ``sqrt((x_b^T F x_a)^2 / ((F x_a)_1^2 + (F x_a)_2^2 +
  (F^T x_b)_1^2 + (F^T x_b)_2^2))`` in pixels, the first-order geometric distance of the pair
  (x_a, x_b) to the epipolar constraint, symmetric in the two views. For a pure sideways
  baseline with equal intrinsics (horizontal epipolar lines) it is ``|y_b - y_a| / sqrt(2)``.
- ``line_dist``: the distance of ``x_b`` to the line ``F x_a`` in view b, in pixels.
- Null (``null [Q, S]``): the exact expectation of ``sampson`` for a head uniform over the
  patches of view b: the mean Sampson distance of every patch centre of view b. It is informative
  for any camera motion with a baseline (sideways, forward, orbiting): a line never covers the
  whole image. ``gain = null - sampson`` (larger is better; a uniform row, whose peak is all its
  tied patches, scores exactly 0).
- Positional control (``control``): the same Sampson distance for the query's own (row, col) in
  view b, the peak a head that follows RoPE position alone would have.
  ``beyond_position_gain = control - sampson``: null 0 (a head that peaks on the query's own
  (row, col) scores exactly 0). A finding (``significance.finding_p``) must beat both the uniform
  null and this control. Under sideways or forward motion the query's own position lies on its
  epipolar line (control about 0), so there no head can be told from a positional one by this
  score: the test finds nothing, rightly; rotating cameras separate them.
- ``score`` / ``null_score`` / ``gain_score`` / ``control_score`` /
  ``beyond_position_gain_score``: ``[L, H]`` means of ``sampson`` / the null / the gain / the
  control / the gain over the control over the valid (query, view) pairs. Lower
  distances are closer to the epipolar line.

A (query, view) pair is excluded (NaN) and counted by ``counts()`` when: ``own_view`` (the
query's own frame), ``no_patch`` (a camera or register query has no position), or
``no_baseline`` (the two camera centres coincide, e.g. a camera rotating in place: F vanishes
and every point is on the line).
Limits: a point on the line is not a match (the whole line is consistent with some depth), so
this complements the point-based score of consistency.py; it is only as right as VGGT's cameras.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from vggt_attn_rerun.analysis.consistency import mean_over_views, tie_weights
from vggt_attn_rerun.analysis.reference import Geometry
from vggt_attn_rerun.analysis.scene import continuous_intrinsics
from vggt_attn_rerun.analysis.visibility import prediction_array, query_patches
from vggt_attn_rerun.core.geometry import pose_encoding_to_cameras
from vggt_attn_rerun.core.rows import AttentionRows
from vggt_attn_rerun.core.tokens import Query
from vggt_attn_rerun.errors import UserError

VALID = 0
OWN_VIEW = 1
NO_PATCH = 2
NO_BASELINE = 3
#: status code -> name (index = code)
STATUS_NAMES = ("valid", "own_view", "no_patch", "no_baseline")
#: camera centres closer than this (in VGGT's world units, where the scene is about 1 across) coincide
MIN_BASELINE = 1e-6


@dataclass
class Epipolar:
    """Epipolar distances of the captured global attention peaks (see the module docstring).

    Shapes: L blocks, Q queries, H heads, S views; ``[L, Q, H, S]`` arrays are float64, NaN where
    ``status != VALID``.

    Attributes:
        blocks, queries: what was measured.
        fundamental: ``[S, S, 3, 3]``: ``fundamental[a, b]`` maps a continuous pixel of view a to
            its epipolar line in view b (zero on the diagonal).
        query_xy: ``[Q, 2]`` the query patch centres (NaN for special tokens).
        status: ``[Q, S]`` int8 status codes (STATUS_NAMES).
        peak_xy: ``[L, Q, H, S, 2]`` the peak patch centre in every view.
        sampson, line_dist: ``[L, Q, H, S]`` in pixels.
        control: ``[Q, S]`` the Sampson distance of the query's own (row, col) in each view.
        null: ``[Q, S]`` the uniform head's expected Sampson distance. gain: ``[L, Q, H, S]`` null - sampson.
        beyond_position_gain: ``[L, Q, H, S]`` control - sampson.
        score, control_score, null_score, gain_score, beyond_position_gain_score: ``[L, H]`` means
            over the valid pairs.
        reference: "model" or "truth" (the cameras used).
    """

    blocks: tuple[int, ...]
    queries: tuple[Query, ...]
    fundamental: np.ndarray
    query_xy: np.ndarray
    status: np.ndarray
    peak_xy: np.ndarray
    sampson: np.ndarray
    line_dist: np.ndarray
    control: np.ndarray
    score: np.ndarray
    control_score: np.ndarray
    null: np.ndarray
    gain: np.ndarray
    null_score: np.ndarray
    gain_score: np.ndarray
    beyond_position_gain: np.ndarray
    beyond_position_gain_score: np.ndarray
    reference: str = "model"

    def unit_gains(self) -> dict[str, np.ndarray]:
        """Per query, the mean over its valid views (the units of a single-scene interval):
        ``{"epipolar", "epipolar_beyond_position"}`` -> ``[L, Q, H]``."""
        return {
            "epipolar": mean_over_views(self.gain),
            "epipolar_beyond_position": mean_over_views(self.beyond_position_gain),
        }

    @property
    def valid(self) -> np.ndarray:
        """``[Q, S]`` bool: the pairs that were measured."""
        return self.status == VALID

    def counts(self) -> dict[str, int]:
        """How many (query, view) pairs got each status, by name (all names present)."""
        return {name: int((self.status == code).sum()) for code, name in enumerate(STATUS_NAMES)}


def _skew(t: np.ndarray) -> np.ndarray:
    """``[..., 3]`` -> ``[..., 3, 3]`` cross-product matrices: ``skew(t) @ v == cross(t, v)``."""
    z = np.zeros(t.shape[:-1])
    x, y, w = t[..., 0], t[..., 1], t[..., 2]
    return np.stack([np.stack([z, -w, y], -1), np.stack([w, z, -x], -1), np.stack([-y, x, z], -1)], -2)


def fundamental_matrices(extrinsics: np.ndarray, intrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All pairwise fundamental matrices of S cameras, for continuous pixel coordinates.

    Args:
        extrinsics: ``[S, 3, 4]`` camera-from-world ``[R | t]``.
        intrinsics: ``[S, 3, 3]`` in VGGT's index convention (pixel j sampled at ``u = j``).

    Returns:
        ``F [S, S, 3, 3]`` with ``x_b^T F[a, b] x_a = 0`` for continuous pixels of one 3D point in
        views a and b, and ``baseline [S, S]``, the distance between the camera centres.
    """
    ext = np.asarray(extrinsics, np.float64)
    k = continuous_intrinsics(intrinsics)
    rot, t = ext[:, :, :3], ext[:, :, 3]
    rel = np.einsum("bij,akj->abik", rot, rot)  # R_b R_a^T
    trans = t[None, :] - np.einsum("abij,aj->abi", rel, t)  # t_b - R t_a
    essential = _skew(trans) @ rel
    k_inv = np.linalg.inv(k)
    f = np.einsum("bji,abjk,akl->abil", k_inv, essential, k_inv)  # K_b^-T E K_a^-1
    centres = -np.einsum("sji,sj->si", rot, t)  # -R^T t
    baseline = np.linalg.norm(centres[:, None] - centres[None, :], axis=-1)
    return f, baseline


def sampson_distance(f: np.ndarray, xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """Sampson distance in pixels of point pairs under fundamental matrices (broadcasting).

    Args:
        f: ``[..., 3, 3]`` with ``x_b^T f x_a = 0`` for a true match.
        xa, xb: ``[..., 2]`` pixels in view a and view b.

    Returns:
        ``[...]`` ``sqrt((x_b^T f x_a)^2 / (|(f x_a)_12|^2 + |(f^T x_b)_12|^2))`` (NaN where the
        denominator is 0).
    """
    ha = np.concatenate([xa, np.ones(xa.shape[:-1] + (1,))], -1)
    hb = np.concatenate([xb, np.ones(xb.shape[:-1] + (1,))], -1)
    fa = np.einsum("...ij,...j->...i", f, ha)
    ftb = np.einsum("...ji,...j->...i", f, hb)
    num = np.einsum("...i,...i->...", hb, fa) ** 2
    den = fa[..., 0] ** 2 + fa[..., 1] ** 2 + ftb[..., 0] ** 2 + ftb[..., 1] ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, np.sqrt(num / np.where(den > 0, den, 1.0)), np.nan)


def line_distance(f: np.ndarray, xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """Distance in pixels of ``xb`` to the epipolar line ``f x_a`` (broadcasting as sampson_distance)."""
    ha = np.concatenate([xa, np.ones(xa.shape[:-1] + (1,))], -1)
    hb = np.concatenate([xb, np.ones(xb.shape[:-1] + (1,))], -1)
    line = np.einsum("...ij,...j->...i", f, ha)
    norm = np.hypot(line[..., 0], line[..., 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, np.abs(np.einsum("...i,...i->...", hb, line)) / np.where(norm > 0, norm, 1), np.nan)


def attention_peaks(rows: AttentionRows, kind: str = "global") -> np.ndarray:
    """``[L, Q, H, S, 2]`` int (row, col) of the largest patch probability of each row in each view."""
    lay = rows.layout
    probs = rows.probs[kind]
    out = np.empty(tuple(probs.shape[:4]) + (2,), np.int64)
    for li in range(probs.shape[0]):
        arg = probs[li, ..., lay.patch_start :].argmax(-1).cpu().numpy()
        out[li] = np.stack([arg // lay.grid_w, arg % lay.grid_w], -1)
    return out


def _mean_lh(values: np.ndarray) -> np.ndarray:
    """``[L, Q, H, S]`` -> ``[L, H]`` mean over the finite entries (NaN where there are none)."""
    ok = np.isfinite(values)
    count = ok.sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(ok, values, 0.0).sum(axis=(1, 3)) / np.maximum(count, 1), np.nan)


def epipolar_consistency(
    rows: AttentionRows,
    predictions: Mapping[str, object],
    kind: str = "global",
    peak_patch: np.ndarray | None = None,
    geometry: Geometry | None = None,
) -> Epipolar:
    """Sampson distance of each head's attention peak in each other view to the query's epipolar line.

    Args:
        rows: captured rows with global attention (``rows.probs["global"]`` ``[L, Q, H, S, P]``).
        predictions: VGGT's output with ``pose_enc [1, S, 9]`` (tensor or array, batch axis optional).
        kind: must be "global" (frame attention never looks at other views).
        peak_patch: optional ``[L, Q, H, S, 2]`` peaks to measure instead of the rows' own (then
            ties are not averaged: a uniform row does not score 0).
        geometry: the reference cameras (None: VGGT's predicted ones).

    Returns:
        Epipolar (``[L, Q, H, S]`` distances and gains, ``[Q, S]`` status and null, ``[L, H]`` scores).
    """
    if kind != "global":
        raise UserError(f"the epipolar score needs global attention, got {kind!r}: frame attention stays in its view")
    if kind not in rows.probs:
        raise UserError(f"attention kind {kind!r} was not captured: captured kinds are {list(rows.probs)}")
    lay = rows.layout
    s_, ps = lay.num_frames, lay.patch_size
    queries = tuple(rows.queries)
    if geometry is None:
        pose_enc = prediction_array(predictions, "pose_enc", (s_, 9), "the epipolar score")
        extr, intr = (t.numpy() for t in pose_encoding_to_cameras(torch.from_numpy(pose_enc), lay.image_size))
        reference = "model"
    else:
        extr, intr, reference = geometry.extrinsics, geometry.intrinsics, geometry.reference
    fund, baseline = fundamental_matrices(extr, intr)

    frames = np.array([q.frame for q in queries], np.int64)
    qpatch = query_patches(queries, lay)
    has_patch = qpatch[:, 0] >= 0
    query_xy = np.where(has_patch[:, None], (qpatch[:, ::-1] + 0.5) * ps, np.nan)  # (x, y)
    status = np.full((len(queries), s_), VALID, np.int8)
    status[baseline[frames] < MIN_BASELINE] = NO_BASELINE
    status[~has_patch] = NO_PATCH
    status[frames[:, None] == np.arange(s_)[None, :]] = OWN_VIEW
    valid = status == VALID

    f_qs = fund[frames]  # [Q, S, 3, 3]: from the query's view to view s
    peaks = attention_peaks(rows, kind) if peak_patch is None else np.asarray(peak_patch)
    peak_xy = (peaks[..., ::-1] + 0.5) * ps  # [L, Q, H, S, 2] (x, y)
    # Every patch centre of a view, and each pair's Sampson / line distance to it: [Q, S, N].
    rows_, cols_ = np.divmod(np.arange(lay.grid_h * lay.grid_w), lay.grid_w)
    centres = np.stack([(cols_ + 0.5) * ps, (rows_ + 0.5) * ps], -1).astype(np.float64)  # [N, 2]
    xa = np.where(valid[..., None], query_xy[:, None, :], 0.0)[:, :, None, :]  # [Q, S, 1, 2]
    all_sampson = sampson_distance(f_qs[:, :, None], np.broadcast_to(xa, xa.shape[:2] + centres.shape), centres)
    all_line = line_distance(f_qs[:, :, None], np.broadcast_to(xa, xa.shape[:2] + centres.shape), centres)
    all_sampson = np.where(valid[..., None], all_sampson, 0.0)
    all_line = np.where(valid[..., None], all_line, 0.0)
    if peak_patch is None:
        sampson, line = _tied_distances(rows, kind, all_sampson, all_line)
    else:  # the given peaks, one patch each
        flat = peaks[..., 0] * lay.grid_w + peaks[..., 1]  # [L, Q, H, S]
        q_i, s_i = np.arange(len(queries))[None, :, None, None], np.arange(s_)[None, None, None, :]
        sampson, line = all_sampson[q_i, s_i, flat], all_line[q_i, s_i, flat]
    v4 = valid[None, :, None, :]
    sampson = np.where(v4, sampson, np.nan)
    line = np.where(v4, line, np.nan)
    null = np.where(valid, all_sampson.mean(-1), np.nan)
    gain = null[None, :, None, :] - sampson
    own_xy = np.broadcast_to(query_xy[:, None, :], (len(queries), s_, 2))
    control = np.where(valid, sampson_distance(f_qs, own_xy, own_xy), np.nan)
    control4 = np.broadcast_to(control[None, :, None, :], sampson.shape)
    beyond_position_gain = control4 - sampson
    return Epipolar(
        blocks=tuple(rows.blocks),
        queries=queries,
        fundamental=fund,
        query_xy=query_xy,
        status=status,
        peak_xy=peak_xy,
        sampson=sampson,
        line_dist=line,
        control=control,
        score=_mean_lh(sampson),
        control_score=_mean_lh(control4),
        null=null,
        gain=gain,
        null_score=_mean_lh(np.broadcast_to(null[None, :, None, :], sampson.shape)),
        gain_score=_mean_lh(gain),
        beyond_position_gain=beyond_position_gain,
        beyond_position_gain_score=_mean_lh(beyond_position_gain),
        reference=reference,
    )


def _tied_distances(
    rows: AttentionRows, kind: str, all_sampson: np.ndarray, all_line: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``[L, Q, H, S]`` Sampson and line distances of each row's peak: the mean over its tied patches."""
    lay = rows.layout
    probs = rows.probs[kind]
    shape = tuple(probs.shape[:4])
    sampson, line = np.empty(shape), np.empty(shape)
    for li in range(shape[0]):
        w = tie_weights(probs[li, ..., lay.patch_start :].to("cpu", torch.float64).numpy())  # [Q, H, S, N]
        sampson[li] = np.einsum("qhsn,qsn->qhs", w, all_sampson)
        line[li] = np.einsum("qhsn,qsn->qhs", w, all_line)
    return sampson, line
