"""The epipolar score: Sampson distance of attention peaks to the query's epipolar line.

Hand-built cameras: 2 or 3 views of 4x6 patches (56x84 pixels), fx = fy = 42 px, principal point
at the image centre. With identity rotations and a sideways baseline the epipolar lines are the
image rows, and the Sampson distance of a pair (x_a, x_b) is |y_b - y_a| / sqrt(2).
"""

import math

import numpy as np
import pytest
import torch

from vggt_attn_rerun.analysis.epipolar import (
    NO_BASELINE,
    NO_PATCH,
    OWN_VIEW,
    VALID,
    epipolar_consistency,
    fundamental_matrices,
    line_distance,
    sampson_distance,
)
from vggt_attn_rerun.core.geometry import pose_encoding_to_cameras
from vggt_attn_rerun.core.rows import AttentionRows
from vggt_attn_rerun.core.tokens import Query, TokenLayout
from vggt_attn_rerun.errors import UserError

F_PX = 42.0


def _pose_enc(translations, angles_y=None):
    """VGGT pose encodings: camera-from-world t, rotation about y by each angle (radians)."""
    s = len(translations)
    angles = np.zeros(s) if angles_y is None else np.asarray(angles_y, float)
    pe = torch.zeros(1, s, 9, dtype=torch.float64)
    pe[0, :, :3] = torch.tensor(translations, dtype=torch.float64)
    pe[0, :, 4] = torch.from_numpy(np.sin(angles / 2))
    pe[0, :, 6] = torch.from_numpy(np.cos(angles / 2))
    pe[0, :, 7] = 2 * math.atan(28 / F_PX)
    pe[0, :, 8] = 2 * math.atan(42 / F_PX)
    return pe


def _rows(lay, probs, queries):
    return AttentionRows(lay, tuple(queries), tuple(range(probs.shape[0])), probs.shape[2], {"global": probs})


def _one_hot_peaks(lay, peaks, num_queries=1):
    """probs [1, Q, H, S, P]: head h of every query puts 0.9 on patch peaks[h][s] of view s."""
    h_ = len(peaks)
    p = torch.full((1, num_queries, h_, lay.num_frames, lay.tokens_per_frame), 0.1 / (lay.num_tokens - lay.num_frames))
    for h, per_view in enumerate(peaks):
        for s, rc in enumerate(per_view):
            p[0, :, h, s, lay.patch_to_local(*rc)] = 0.9 / lay.num_frames
    return p


def _independent_f(pe, hw, a, b):
    """Hartley-Zisserman's F = [e']x P_b P_a^+ from the projection matrices, continuous pixels."""
    extr, intr = (t[0].numpy() for t in pose_encoding_to_cameras(pe, hw))
    k = intr.copy()
    k[:, :2, 2] += 0.5
    pa, pb = k[a] @ extr[a], k[b] @ extr[b]
    centre = np.append(-extr[a][:, :3].T @ extr[a][:, 3], 1.0)
    e = pb @ centre
    ex = np.array([[0, -e[2], e[1]], [e[2], 0, -e[0]], [-e[1], e[0], 0]])
    return ex @ pb @ np.linalg.pinv(pa)


def test_a_peak_on_the_epipolar_line_of_a_sideways_baseline_has_distance_zero():
    lay = TokenLayout(2, 4, 6)
    q = Query.from_patch(lay, 0, 1, 3)  # centre (49, 21)
    probs = _one_hot_peaks(lay, [[(1, 3), (1, 0)], [(1, 3), (1, 5)]])  # row 1 in view 1: y = 21
    e = epipolar_consistency(_rows(lay, probs, [q]), {"pose_enc": _pose_enc([[0, 0, 0], [-0.5, 0, 0]])})
    np.testing.assert_array_equal(e.status, [[OWN_VIEW, VALID]])
    np.testing.assert_allclose(e.sampson[0, 0, :, 1], 0.0, atol=1e-9)
    np.testing.assert_allclose(e.line_dist[0, 0, :, 1], 0.0, atol=1e-9)
    assert np.isnan(e.sampson[..., 0]).all()  # own view is never measured


def test_a_peak_one_patch_off_the_line_has_the_known_sampson_distance():
    lay = TokenLayout(2, 4, 6)
    q = Query.from_patch(lay, 0, 1, 3)
    probs = _one_hot_peaks(lay, [[(1, 3), (2, 4)], [(1, 3), (3, 1)]])  # 14 px and 28 px below the line
    e = epipolar_consistency(_rows(lay, probs, [q]), {"pose_enc": _pose_enc([[0, 0, 0], [-0.5, 0, 0]])})
    np.testing.assert_allclose(e.sampson[0, 0, :, 1], [14 / math.sqrt(2), 28 / math.sqrt(2)], rtol=1e-9)
    np.testing.assert_allclose(e.line_dist[0, 0, :, 1], [14.0, 28.0], rtol=1e-9)
    np.testing.assert_allclose(e.score[0], [14 / math.sqrt(2), 28 / math.sqrt(2)], rtol=1e-9)
    np.testing.assert_allclose(e.peak_xy[0, 0, 0, 1], [63.0, 35.0])


def test_the_fundamental_matrix_holds_for_projections_of_one_point_under_a_general_pose():
    pe = _pose_enc([[0, 0, 0], [0.3, -0.1, 0.05], [-0.2, 0.15, 0.1]], [0.0, 0.2, -0.15])
    extr, intr = (t[0].numpy() for t in pose_encoding_to_cameras(pe, (56, 84)))
    f, baseline = fundamental_matrices(extr, intr)
    rng = np.random.default_rng(0)
    points = rng.uniform([-0.5, -0.3, 1.5], [0.5, 0.3, 3.0], (20, 3))
    xy = []
    for s in range(3):
        cam = points @ extr[s, :, :3].T + extr[s, :, 3]
        xy.append(cam[:, :2] / cam[:, 2:] * np.diag(intr[s])[:2] + intr[s, :2, 2] + 0.5)
    for a in range(3):
        for b in range(3):
            if a != b:
                np.testing.assert_allclose(sampson_distance(f[a, b], xy[a], xy[b]), 0.0, atol=1e-7)
    line = np.einsum("ij,nj->ni", f[0, 1], np.c_[xy[0], np.ones(20)])
    normal = line[:, :2] / np.hypot(line[:, 0], line[:, 1])[:, None]
    np.testing.assert_allclose(line_distance(f[0, 1], xy[0], xy[1] + 3.5 * normal), 3.5, rtol=1e-7)
    centres = [-extr[s, :, :3].T @ extr[s, :, 3] for s in range(3)]
    assert baseline[0, 1] == pytest.approx(np.linalg.norm(centres[0] - centres[1]))


def test_the_positional_control_matches_an_independent_fundamental_matrix_under_rotation():
    lay = TokenLayout(2, 4, 6)
    q = Query.from_patch(lay, 0, 2, 1)  # centre (21, 35)
    pe = _pose_enc([[0, 0, 0], [-0.4, 0.1, 0.0]], [0.0, 0.25])
    probs = _one_hot_peaks(lay, [[(2, 1), (0, 5)]])
    e = epipolar_consistency(_rows(lay, probs, [q]), {"pose_enc": pe})
    f = _independent_f(pe, lay.image_size, 0, 1)
    own, peak = np.array([21.0, 35.0]), np.array([77.0, 7.0])
    for x_b, got in ((own, e.control[0, 1]), (peak, e.sampson[0, 0, 0, 1])):
        hb, ha = np.append(x_b, 1), np.append(own, 1)
        fa, ftb = f @ ha, f.T @ hb
        want = abs(hb @ fa) / math.sqrt(fa[0] ** 2 + fa[1] ** 2 + ftb[0] ** 2 + ftb[1] ** 2)
        assert got == pytest.approx(want, rel=1e-7)
    assert e.control[0, 1] > 1.0  # the rotation moves the line away from the query's own position
    assert e.control_score[0, 0] == pytest.approx(e.control[0, 1])


def test_special_token_queries_and_coincident_cameras_are_excluded_and_counted():
    lay = TokenLayout(3, 4, 6)
    queries = [Query.from_patch(lay, 0, 1, 1), Query.from_special(lay, 1, "camera")]
    probs = _one_hot_peaks(lay, [[(0, 0)] * 3], num_queries=2)
    pe = _pose_enc([[0, 0, 0], [0, 0, 0], [-0.5, 0, 0]])  # views 0 and 1 share their centre
    e = epipolar_consistency(_rows(lay, probs, queries), {"pose_enc": pe})
    np.testing.assert_array_equal(e.status, [[OWN_VIEW, NO_BASELINE, VALID], [NO_PATCH, OWN_VIEW, NO_PATCH]])
    assert e.counts() == {"valid": 1, "own_view": 2, "no_patch": 2, "no_baseline": 1}
    assert np.isfinite(e.sampson).sum() == 1


def test_given_peaks_are_used_instead_of_the_rows_argmax():
    lay = TokenLayout(2, 4, 6)
    q = Query.from_patch(lay, 0, 1, 3)
    probs = _one_hot_peaks(lay, [[(1, 3), (1, 3)]])
    peaks = np.array([[[[[1, 3], [2, 3]]]]])  # [L, Q, H, S, 2]: one patch below the line in view 1
    e = epipolar_consistency(_rows(lay, probs, [q]), {"pose_enc": _pose_enc([[0, 0, 0], [-0.5, 0, 0]])},
                             peak_patch=peaks)  # fmt: skip
    assert e.sampson[0, 0, 0, 1] == pytest.approx(14 / math.sqrt(2))


def test_frame_attention_is_refused():
    lay = TokenLayout(2, 4, 6)
    rows = _rows(lay, _one_hot_peaks(lay, [[(0, 0), (0, 0)]]), [Query.from_patch(lay, 0, 0, 0)])
    with pytest.raises(UserError, match="global attention"):
        epipolar_consistency(rows, {"pose_enc": _pose_enc([[0, 0, 0], [-0.5, 0, 0]])}, kind="frame")


def test_missing_camera_poses_are_a_user_error_that_names_the_epipolar_score():
    lay = TokenLayout(2, 4, 6)
    rows = _rows(lay, _one_hot_peaks(lay, [[(0, 0), (0, 0)]]), [Query.from_patch(lay, 0, 0, 0)])
    with pytest.raises(UserError, match="the epipolar score needs pose_enc"):
        epipolar_consistency(rows, {})
