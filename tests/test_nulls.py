"""Every score against its null: a uniform head gains exactly 0, informative epipolar nulls, q-values.

Scenes are hand-built cameras with exact geometry (analysis.reference.Geometry), so every
expectation is known; windows that clip at the image border are included on purpose.
"""

import math

import numpy as np
import pytest
import torch

from vggt_attn_rerun.analysis.consistency import geometric_consistency
from vggt_attn_rerun.analysis.epipolar import epipolar_consistency
from vggt_attn_rerun.analysis.reference import Geometry, truth_geometry
from vggt_attn_rerun.analysis.significance import bh_qvalues, cell_tests, finding_p, one_sided_p, t_quantile
from vggt_attn_rerun.core.images import FrameTransform
from vggt_attn_rerun.core.rows import AttentionRows
from vggt_attn_rerun.core.tokens import Query, TokenLayout

LAY = TokenLayout(3, 4, 6)  # 56 x 84 pixels
F_PX = 42.0


def _k(lay, f=F_PX):
    h, w = lay.image_size
    return np.array([[f, 0, w / 2 - 0.5], [0, f, h / 2 - 0.5], [0, 0, 1.0]])  # index convention


def _rot_y(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _geometry(lay, rotations, centres, wall=2.0):
    """Cameras at world ``centres`` with camera-from-world ``rotations``, depth of a wall at z = wall."""
    extr = np.stack([np.concatenate([r, -(r @ np.asarray(c, float))[:, None]], 1) for r, c in
                     zip(rotations, centres, strict=True)])  # fmt: skip
    intr = np.stack([_k(lay)] * len(rotations))
    h, w = lay.image_size
    depth = np.empty((len(rotations), h, w))
    v, u = np.mgrid[0:h, 0:w].astype(float)
    for s, (r, c) in enumerate(zip(rotations, centres, strict=True)):
        rays = np.stack([(u - intr[s, 0, 2]) / F_PX, (v - intr[s, 1, 2]) / F_PX, np.ones_like(u)], -1) @ r  # world dirs
        depth[s] = (wall - c[2]) / rays[..., 2]  # rays have z_cam = 1: the ray parameter is z_cam
    return Geometry(extr, intr, depth, "truth")


def _rows(lay, probs, queries):
    return AttentionRows(lay, tuple(queries), tuple(range(probs.shape[0])), probs.shape[2], {"global": probs})


def _uniform(lay, q, h=2):
    return torch.full((1, q, h, lay.num_frames, lay.tokens_per_frame), 1.0 / lay.num_tokens)


SIDEWAYS = ([np.eye(3)] * 3, [(0, 0, 0), (2 / 3, 0, 0), (4 / 3, 0, 0)])


@pytest.mark.parametrize("radius", [0, 1, 2])
def test_a_uniform_head_gains_exactly_zero_where_windows_clip_at_the_border(radius):
    geo = _geometry(LAY, *SIDEWAYS)
    queries = [Query.from_patch(LAY, 0, 0, 5), Query.from_patch(LAY, 0, 3, 4), Query.from_patch(LAY, 0, 1, 3)]
    c = geometric_consistency(_rows(LAY, _uniform(LAY, 3), queries), {}, radius=radius, geometry=geo)
    assert c.valid.sum() >= 4
    clipped = c.share_null[c.valid] < (2 * radius + 1) ** 2 / (LAY.grid_h * LAY.grid_w)
    assert radius == 0 or clipped.any()  # the case the null must get right
    np.testing.assert_allclose(c.gain, 0, atol=1e-12)
    np.testing.assert_allclose(c.peak_gain_score, 0, atol=1e-12)
    np.testing.assert_allclose(c.score, c.null_score, atol=1e-12)
    assert c.reference == "truth"


def test_a_uniform_head_gains_exactly_zero_on_the_epipolar_score():
    geo = _geometry(LAY, *SIDEWAYS)
    queries = [Query.from_patch(LAY, 0, 0, 0), Query.from_patch(LAY, 0, 3, 5)]
    e = epipolar_consistency(_rows(LAY, _uniform(LAY, 2), queries), {}, geometry=geo)
    np.testing.assert_allclose(e.gain_score, 0, atol=1e-12)
    np.testing.assert_allclose(e.score, e.null_score, atol=1e-12)


def test_a_head_on_the_projection_gains_the_whole_distance_null():
    geo = _geometry(LAY, *SIDEWAYS)
    q = Query.from_patch(LAY, 0, 1, 3)  # lands on (1, 2) in view 1 and (1, 1) in view 2
    p = torch.zeros(1, 1, 1, 3, LAY.tokens_per_frame)
    p[0, 0, 0, 1, LAY.patch_to_local(1, 2)] = 0.5
    p[0, 0, 0, 2, LAY.patch_to_local(1, 1)] = 0.5
    c = geometric_consistency(_rows(LAY, p, [q]), {}, radius=0, geometry=geo)
    np.testing.assert_allclose(c.peak_gain[0, 0, 0, 1:], c.peak_dist_null[0, 1:])
    assert c.gain[0, 0] == pytest.approx(1 - 1 / 24)


def _orbit(n, angle, radius=2.0):
    rots, centres = [], []
    for i in range(n):
        a = angle * i
        centres.append((radius * math.sin(a), 0.0, 2.0 - radius * math.cos(a)))  # around (0, 0, 2)
        rots.append(_rot_y(a))  # looks at the centre
    return rots, centres


CAMERAS = {
    "sideways": SIDEWAYS,
    "forward": ([np.eye(3)] * 3, [(0, 0, 0), (0, 0, 0.4), (0, 0, 0.8)]),
    "orbit": _orbit(3, 0.25),
}


@pytest.mark.parametrize("motion", CAMERAS)
def test_the_epipolar_null_is_informative_for_every_camera_motion(motion):
    lay = TokenLayout(3, 8, 12)
    geo = _geometry(lay, *CAMERAS[motion], wall=4.0)
    q = Query.from_patch(lay, 0, 2, 3)  # off the image centre: forward motion has its epipole there
    # Head 0 peaks on the patch of the query's true projection in every other view; head 1 is uniform.
    c = geometric_consistency(_rows(lay, _uniform(lay, 1, 1), [q]), {}, radius=0, geometry=geo)
    assert c.valid[0, 1:].all()
    p = _uniform(lay, 1, 2)
    p[0, 0, 0] = 0
    for s in (1, 2):
        p[0, 0, 0, s, lay.patch_to_local(*c.projected_patch[0, s])] = 0.5
    e = epipolar_consistency(_rows(lay, p, [q]), {}, geometry=geo)
    assert (e.null[0, 1:] > 8).all()  # pixels: a line never covers the image
    assert (e.gain[0, 0, 0, 1:] > 0.6 * e.null[0, 1:]).all()
    np.testing.assert_allclose(e.gain[0, 0, 1, 1:], 0, atol=1e-9)


def test_the_positional_control_is_degenerate_for_a_sideways_camera_but_the_null_is_not():
    lay = TokenLayout(3, 8, 12)
    e = epipolar_consistency(_rows(lay, _uniform(lay, 1), [Query.from_patch(lay, 0, 2, 3)]), {},
                             geometry=_geometry(lay, *SIDEWAYS))  # fmt: skip
    np.testing.assert_allclose(e.control[0, 1:], 0, atol=1e-9)
    assert (e.null[0, 1:] > 8).all()


def test_truth_intrinsics_follow_the_resize_and_crop_of_the_model_input():
    # A 200 x 120 photo scaled by 0.7 and centre-cropped: model = photo * 0.7 + (0, -7).
    t = FrameTransform(200, 120, 0.7, 0.7, 0.0, -7.0, 140, 70)
    k = np.array([[150.0, 0, 99.5], [0, 160.0, 59.5], [0, 0, 1]])
    extr = np.concatenate([np.eye(3), np.zeros((3, 1))], 1)[None]
    geo = truth_geometry(extr, k[None], None, [t])
    point = np.array([0.3, -0.2, 2.0])
    u, v = (k @ point)[:2] / point[2]  # photo pixel (index convention)
    want = t.original_to_model(u + 0.5, v + 0.5)  # model position, continuous
    um, vm = (geo.intrinsics[0] @ point)[:2] / point[2]
    np.testing.assert_allclose([um + 0.5, vm + 0.5], want, atol=1e-9)


def test_truth_depth_is_sampled_at_each_model_pixel_centre():
    t = FrameTransform(4, 4, 0.5, 0.5, 0.0, 0.0, 2, 2)
    depth = np.arange(16, dtype=float).reshape(4, 4) + 1
    extr = np.concatenate([np.eye(3), np.zeros((3, 1))], 1)[None]
    geo = truth_geometry(extr, _k(TokenLayout(1, 1, 1))[None], [depth], [t])
    np.testing.assert_array_equal(geo.depth[0], [[6, 8], [14, 16]])  # photo pixels (1, 1), (1, 3), ...


def test_one_sided_p_matches_the_t_quantile():
    df = 9
    t = t_quantile(0.95, df)
    x = np.array([-1.0, 1.0] * 5)
    x = x - x.mean()
    x = x + t * x.std(ddof=1) / math.sqrt(10)  # t statistic exactly t(0.95, 9)
    assert one_sided_p(x[None])[0] == pytest.approx(0.05, abs=1e-9)
    assert one_sided_p(np.zeros((1, 5)))[0] == 1.0
    assert np.isnan(one_sided_p(np.array([[0.3]]))[0])


def test_bh_qvalues_equal_the_step_up_rule():
    p = np.array([0.01, 0.04, 0.03, 0.2, np.nan])
    q = bh_qvalues(p)
    m = 4
    ranked = {0.01: 1, 0.03: 2, 0.04: 3, 0.2: 4}
    want = [min(p[j] * m / ranked[p[j]] for j in range(4) if p[j] >= p[i]) for i in range(4)]
    np.testing.assert_allclose(q[:4], want)
    assert np.isnan(q[4])


def _on_own_position(lay, queries, geo):
    """One head that peaks on each query's own (row, col) in every view."""
    p = torch.zeros(1, len(queries), 1, lay.num_frames, lay.tokens_per_frame)
    for i, q in enumerate(queries):
        p[0, i, 0, :, lay.patch_to_local(*q.patch(lay))] = 1.0 / lay.num_frames
    return _rows(lay, p, queries)


@pytest.mark.parametrize("motion", CAMERAS)
def test_a_head_on_the_query_position_gains_exactly_zero_against_position(motion):
    lay = TokenLayout(3, 8, 12)
    geo = _geometry(lay, *CAMERAS[motion], wall=4.0)
    queries = [Query.from_patch(lay, 0, 2, 3), Query.from_patch(lay, 0, 6, 9)]
    rows = _on_own_position(lay, queries, geo)
    c = geometric_consistency(rows, {}, radius=0, geometry=geo)
    e = epipolar_consistency(rows, {}, geometry=geo)
    assert np.isfinite(c.peak_beyond_position_gain).sum() >= 2 and np.isfinite(e.beyond_position_gain).sum() >= 2
    np.testing.assert_allclose(c.peak_beyond_position_gain_score, 0, atol=1e-12)
    np.testing.assert_allclose(e.beyond_position_gain_score, 0, atol=1e-9)


def test_a_head_on_the_projection_gains_its_distance_from_the_query_position_against_position():
    geo = _geometry(LAY, *SIDEWAYS)
    q = Query.from_patch(LAY, 0, 1, 3)  # lands on (1, 2) in view 1 and (1, 1) in view 2: 1 and 2 patches off
    p = torch.zeros(1, 1, 1, 3, LAY.tokens_per_frame)
    p[0, 0, 0, 1, LAY.patch_to_local(1, 2)] = 0.5
    p[0, 0, 0, 2, LAY.patch_to_local(1, 1)] = 0.5
    c = geometric_consistency(_rows(LAY, p, [q]), {}, radius=0, geometry=geo)
    np.testing.assert_allclose(c.peak_beyond_position_gain[0, 0, 0, 1:], [1.0, 2.0])


def test_under_rotation_a_head_on_the_epipolar_line_gains_against_position():
    lay = TokenLayout(3, 8, 12)
    geo = _geometry(lay, *CAMERAS["orbit"], wall=4.0)
    q = Query.from_patch(lay, 0, 2, 3)
    c = geometric_consistency(_rows(lay, _uniform(lay, 1, 1), [q]), {}, radius=0, geometry=geo)
    p = torch.zeros(1, 1, 1, 3, lay.tokens_per_frame)
    for s in (1, 2):
        p[0, 0, 0, s, lay.patch_to_local(*c.projected_patch[0, s])] = 0.5
    e = epipolar_consistency(_rows(lay, p, [q]), {}, geometry=geo)
    assert (e.control[0, 1:] > 2).all()  # the query's own position is off its epipolar line
    # The peak is the projection's patch centre, within half a patch of the line: closer than position.
    assert (e.beyond_position_gain[0, 0, 0, 1:] > 0).all()
    np.testing.assert_allclose(e.beyond_position_gain[0, 0, 0, 1:], e.control[0, 1:] - e.sampson[0, 0, 0, 1:])


def test_a_finding_needs_the_gain_to_beat_both_the_null_and_position():
    rng = np.random.default_rng(0)
    beats_null = 1.0 + 0.1 * rng.standard_normal((3, 12))
    follows_position = 0.1 * rng.standard_normal((3, 12)) - 0.5
    p = finding_p(beats_null, np.stack([beats_null[0], follows_position[1], follows_position[2]]))
    np.testing.assert_allclose(p[0], one_sided_p(beats_null[:1])[0])
    assert p[0] < 1e-6 and p[1] > 0.5 and p[2] > 0.5
    np.testing.assert_array_equal(p, np.maximum(one_sided_p(beats_null), one_sided_p(
        np.stack([beats_null[0], follows_position[1], follows_position[2]]))))  # fmt: skip
    tests = cell_tests(beats_null, np.stack([beats_null[0], follows_position[1], follows_position[2]]))
    assert (tests["q"] <= 0.05).tolist() == [True, False, False]
