"""Geometric consistency of attention with VGGT's own geometry (analysis.consistency).

The hand-built scene: 3 views of 4x6 patches (56x84 pixels), identity rotations, a wall at
z = 2, fx = fy = 42 px, cameras stepping sideways. A camera-from-world translation of
tx = -2/3 shifts the wall by fx * tx / z = -14 px: one patch to the left.
"""

import math

import numpy as np
import pytest
import torch

from vggt_attn_rerun.analysis.consistency import geometric_consistency
from vggt_attn_rerun.analysis.visibility import (
    BEHIND_CAMERA,
    LOW_CONFIDENCE,
    NO_POINT,
    OCCLUDED,
    OUTSIDE_IMAGE,
    OWN_VIEW,
    STATUS_NAMES,
    VALID,
)
from vggt_attn_rerun.core.capture import capture
from vggt_attn_rerun.core.geometry import pose_encoding_to_cameras, unproject_depth
from vggt_attn_rerun.core.images import FrameTransform
from vggt_attn_rerun.core.rows import AttentionRows
from vggt_attn_rerun.core.tokens import Query, TokenLayout
from vggt_attn_rerun.errors import UserError

LAY = TokenLayout(3, 4, 6)
H, W = LAY.image_size  # 56, 84
Q = Query.from_patch(LAY, 0, 1, 3)  # centre (49, 21) px; lands on (1, 2) in view 1, (1, 1) in view 2


def _scene(tx=(0.0, -2 / 3, -4 / 3), tz=(0.0, 0.0, 0.0), wall=2.0):
    s = len(tx)
    pe = torch.zeros(1, s, 9, dtype=torch.float64)
    pe[0, :, 0] = torch.tensor(tx, dtype=torch.float64)
    pe[0, :, 2] = torch.tensor(tz, dtype=torch.float64)
    pe[0, :, 6] = 1.0  # quaternion (0, 0, 0, 1)
    pe[0, :, 7] = 2 * math.atan(28 / 42)  # fy = 42
    pe[0, :, 8] = 2 * math.atan(42 / 42)  # fx = 42
    extr, intr = (t[0].numpy() for t in pose_encoding_to_cameras(pe, (H, W)))
    depth = (wall + np.asarray(tz))[:, None, None] * np.ones((s, H, W))  # z of the wall in each camera
    points = unproject_depth(depth, extr, intr)
    return {
        "pose_enc": pe.float(),
        "depth": torch.from_numpy(depth).float()[None, ..., None],
        "world_points": torch.from_numpy(points)[None],
        "world_points_conf": torch.ones(1, s, H, W),
    }


def _rows(probs: torch.Tensor, queries=(Q,), blocks=None) -> AttentionRows:
    blocks = tuple(range(probs.shape[0])) if blocks is None else blocks
    return AttentionRows(LAY, tuple(queries), blocks, probs.shape[2], {"global": probs})


def _zeros(l=1, q=1, h=1):  # noqa: E741
    return torch.zeros(l, q, h, LAY.num_frames, LAY.tokens_per_frame)


def _put(p, view, rc, mass=1.0, lqh=(0, 0, 0)):
    p[lqh + (view, LAY.patch_to_local(*rc))] += mass


def test_projection_lands_on_the_expected_patches():
    c = geometric_consistency(_rows(_zeros() + 1 / 87), _scene(), radius=0)
    want = [(49 - 0.5 - 42) / 42 * 2, (21 - 0.5 - 28) / 42 * 2, 2.0]  # pixel indices 42..55, 14..27
    np.testing.assert_allclose(c.points[0], want, atol=1e-5)
    np.testing.assert_array_equal(c.projected_patch[0], [[1, 3], [1, 2], [1, 1]])
    np.testing.assert_allclose(c.projected_xy[0], [[49, 21], [35, 21], [21, 21]], atol=1e-4)
    np.testing.assert_allclose(c.projected_depth[0], 2.0, atol=1e-6)
    np.testing.assert_array_equal(c.status[0], [OWN_VIEW, VALID, VALID])
    assert c.counts() == dict(zip(STATUS_NAMES, [2, 1, 0, 0, 0, 0, 0], strict=True))
    assert c.num_excluded == 0
    assert np.isnan(c.share_near[..., 0]).all()  # own view is never measured


def test_all_mass_on_the_projected_patch():
    p = _zeros(h=2)
    _put(p, 2, (1, 1), lqh=(0, 0, 0))  # head 0: the correspondence in view 2
    _put(p, 1, (1, 2), lqh=(0, 0, 0))  # ... and in view 1
    _put(p, 2, (1, 3), lqh=(0, 0, 1))  # head 1: same (row, col) as the query (RoPE's favourite)
    _put(p, 1, (1, 3), lqh=(0, 0, 1))
    p /= p.sum((-1, -2), keepdim=True)
    c = geometric_consistency(_rows(p), _scene(), radius=1)
    assert c.peak_dist_patches.shape == (1, 1, 2, 3)
    np.testing.assert_array_equal(c.peak_dist_patches[0, 0, 0, 1:], [0, 0])
    np.testing.assert_allclose(c.peak_dist_pixels[0, 0, 0, 1:], 0, atol=1e-4)
    np.testing.assert_allclose(c.mass_near[0, 0, 0, 1:], 0.5)
    np.testing.assert_allclose(c.share_near[0, 0, 0, 1:], 1.0)
    np.testing.assert_array_equal(c.peak_patch[0, 0, 0, 2], [1, 1])
    # the control window around (1, 3) does not reach (1, 1) with r = 1, but holds head 1's mass
    np.testing.assert_allclose(c.control_share_near[0, 0, :, 2], [0.0, 1.0])
    np.testing.assert_array_equal(c.control_peak_dist_patches[0, 0, 1, 1:], [0, 0])
    # head 1: peak two patches (28 px) right of the projection in view 2, one in view 1
    np.testing.assert_array_equal(c.peak_dist_patches[0, 0, 1, 1:], [1, 2])
    np.testing.assert_allclose(c.peak_dist_pixels[0, 0, 1, 1:], [14, 28], atol=1e-4)
    # in view 1, (1, 3) is within one patch of the projection (1, 2): it counts for both
    np.testing.assert_allclose(c.share_near[0, 0, 1, 1:], [1.0, 0.0])
    np.testing.assert_allclose(c.score, [[1.0, 0.5]])
    np.testing.assert_allclose(c.control_score, [[0.5, 1.0]])


def test_radius_zero_and_a_split_row():
    p = _zeros()
    _put(p, 2, (1, 1), 0.3)
    _put(p, 2, (2, 2), 0.2)  # diagonal neighbour: Chebyshev distance 1
    _put(p, 2, (3, 5), 0.1)
    _put(p, 1, (0, 0), 0.4)
    c = geometric_consistency(_rows(p), _scene(), radius=0)
    assert c.mass_near[0, 0, 0, 2] == pytest.approx(0.3)
    assert c.share_near[0, 0, 0, 2] == pytest.approx(0.5)
    c1 = geometric_consistency(_rows(p), _scene(), radius=1)
    assert c1.mass_near[0, 0, 0, 2] == pytest.approx(0.5)
    assert c1.share_near[0, 0, 0, 2] == pytest.approx(5 / 6)
    assert c1.share_near[0, 0, 0, 1] == pytest.approx(0.0)  # (0, 0) is 2 columns from (1, 2)
    assert c1.peak_dist_patches[0, 0, 0, 1] == pytest.approx(math.hypot(1, 2))
    assert c1.score[0, 0] == pytest.approx(5 / 12)


def test_a_point_behind_a_camera_is_excluded_and_counted():
    scene = _scene(tx=(0.0, -2 / 3, -4 / 3), tz=(0.0, -3.0, 0.0))  # view 1 sits beyond the wall
    c = geometric_consistency(_rows(_zeros() + 1 / 87), scene)
    np.testing.assert_array_equal(c.status[0], [OWN_VIEW, BEHIND_CAMERA, VALID])
    assert c.counts()["behind_camera"] == 1 and c.num_excluded == 1
    assert c.projected_depth[0, 1] == pytest.approx(-1.0)
    assert np.isnan(c.projected_xy[0, 1]).all() and np.isnan(c.mass_near[..., 1]).all()
    assert np.isfinite(c.mass_near[..., 2]).all()


def test_outside_the_image_is_excluded_and_counted():
    c = geometric_consistency(_rows(_zeros() + 1 / 87), _scene(tx=(0.0, -10.0, -4 / 3)))
    np.testing.assert_array_equal(c.status[0], [OWN_VIEW, OUTSIDE_IMAGE, VALID])
    np.testing.assert_array_equal(c.projected_patch[0, 1], [-1, -1])
    assert c.projected_xy[0, 1, 0] < 0
    assert c.counts()["outside_image"] == 1


def test_white_padding_counts_as_outside_when_transforms_are_given():
    # view 2's photo covers x in [28, 84) only: the projection at x = 21 falls in the padding
    pad = FrameTransform(56, 56, 1.0, 1.0, 28.0, 0.0, W, H)
    transforms = [FrameTransform.identity(W, H)] * 2 + [pad]
    c = geometric_consistency(_rows(_zeros() + 1 / 87), _scene(), transforms=transforms)
    np.testing.assert_array_equal(c.status[0], [OWN_VIEW, VALID, OUTSIDE_IMAGE])


def test_occlusion_uses_a_relative_margin():
    scene = _scene()
    scene["depth"][0, 2] = 1.0  # something at depth 1 in front of the wall in view 2
    scene["depth"][0, 1] = 1.95  # within 5 % of the point's depth 2: not hidden
    c = geometric_consistency(_rows(_zeros() + 1 / 87), scene)
    np.testing.assert_array_equal(c.status[0], [OWN_VIEW, VALID, OCCLUDED])
    np.testing.assert_allclose(c.view_depth[0, 1:], [1.95, 1.0], rtol=1e-6)
    assert c.counts()["occluded"] == 1
    c = geometric_consistency(_rows(_zeros() + 1 / 87), scene, occlusion_margin=0.01)
    np.testing.assert_array_equal(c.status[0], [OWN_VIEW, OCCLUDED, OCCLUDED])


def test_low_confidence_excludes_every_other_view():
    scene = _scene()
    scene["world_points_conf"][0, 0, 14:28, 42:56] = 0.5  # the query patch (1, 3) of frame 0
    other = Query.from_patch(LAY, 0, 0, 5)
    probs = _zeros(q=2) + 1 / 87
    c = geometric_consistency(_rows(probs, (Q, other)), scene, min_conf=0.75)
    np.testing.assert_allclose(c.query_conf, [0.5, 1.0])
    np.testing.assert_array_equal(c.status[0], [OWN_VIEW, LOW_CONFIDENCE, LOW_CONFIDENCE])
    np.testing.assert_array_equal(c.status[1], [OWN_VIEW, VALID, VALID])
    assert c.counts()["low_confidence"] == 2


def test_special_token_queries_need_a_given_point():
    cam = Query.from_special(LAY, 0, "camera")
    probs = _zeros(q=2)
    _put(probs, 2, (1, 1), lqh=(0, 1, 0))
    probs[0, 0, 0, 1, 5] = 1.0
    scene = _scene()
    c = geometric_consistency(_rows(probs, (Q, cam)), scene)
    np.testing.assert_array_equal(c.status[1], [OWN_VIEW, NO_POINT, NO_POINT])
    pts = np.stack([c.points[0], c.points[0]])  # give the camera query the wall point
    c = geometric_consistency(_rows(probs, (Q, cam)), scene, points=pts)
    np.testing.assert_array_equal(c.status[1], [OWN_VIEW, VALID, VALID])
    assert c.share_near[0, 1, 0, 2] == 1.0
    assert np.isnan(c.control_share_near[0, 1]).all()  # no (row, col) to compare with
    assert np.isnan(c.query_conf).all()  # given points are not checked
    with pytest.raises(UserError, match=r"\[2, 3\]"):
        geometric_consistency(_rows(probs, (Q, cam)), scene, points=pts[:1])


def test_refusals_name_what_is_valid():
    rows = _rows(_zeros() + 1 / 87)
    frame_rows = AttentionRows(LAY, (Q,), (0,), 1, {"frame": _zeros()})
    with pytest.raises(UserError, match="global attention"):
        geometric_consistency(frame_rows, _scene(), kind="frame")
    with pytest.raises(UserError, match="captured kinds"):
        geometric_consistency(frame_rows, _scene())
    with pytest.raises(UserError, match="radius"):
        geometric_consistency(rows, _scene(), radius=-1)
    scene = _scene()
    del scene["depth"]
    with pytest.raises(UserError, match="depth"):
        geometric_consistency(rows, scene)
    scene = _scene()
    scene["world_points"] = scene["world_points"][:, :, :28]
    with pytest.raises(UserError, match="world_points"):
        geometric_consistency(rows, scene)


def test_tiny_model_end_to_end(tiny_model, scene_images):
    res = capture(
        tiny_model,
        scene_images,
        lambda lay: [Query.from_patch(lay, 0, 1, 2), Query.from_patch(lay, 1, 2, 3)],
        blocks=[1, 3],
        kinds=["global"],
    )
    c = geometric_consistency(res.rows, res.predictions, radius=1)
    assert c.share_near.shape == (2, 2, 4, 3) and c.score.shape == (2, 4) and c.status.shape == (2, 3)
    assert c.status[0, 0] == OWN_VIEW and c.status[1, 1] == OWN_VIEW
    assert sum(c.counts().values()) == 6
    ok = np.isfinite(c.share_near)
    assert ok.any()
    assert np.all((c.share_near[ok] >= 0) & (c.share_near[ok] <= 1 + 1e-9))
    assert np.all(c.mass_near[ok] <= c.share_near[ok] + 1e-12)
    fin = np.isfinite(c.score)
    assert np.all((c.score[fin] >= 0) & (c.score[fin] <= 1))
