"""Effects of an intervention (analysis.effects) against hand computations on constructed predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vggt_attn_rerun.analysis.effects import (
    Geometry,
    baseline,
    direction_angles,
    effect,
    geometry,
    rotation_angles,
)
from vggt_attn_rerun.core.tokens import Query, TokenLayout

LAYOUT = TokenLayout(num_frames=2, grid_h=2, grid_w=2, patch_size=2, num_registers=1)


def _rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])


def _extrinsics(rotations, centres) -> np.ndarray:
    out = []
    for r, c in zip(rotations, centres, strict=True):
        out.append(np.concatenate([r, (-r @ np.asarray(c, float))[:, None]], axis=1))
    return np.stack(out)


def _scene(depth_scale: float = 1.0, shift=(0.0, 0.0, 0.0), rotations=None, centres=None) -> Geometry:
    rng = np.random.default_rng(0)
    depth = 2.0 + rng.random((2, 4, 4))
    points = rng.normal(size=(2, 4, 4, 3)) + np.array([0, 0, 3.0])
    rotations = rotations if rotations is not None else [np.eye(3), _rot_z(10)]
    centres = centres if centres is not None else [(0, 0, 0), (1.0, 0, 0)]
    return Geometry(
        depth=depth * depth_scale,
        depth_conf=np.ones((2, 4, 4)),
        points=points + np.asarray(shift),
        points_conf=np.ones((2, 4, 4)),
        extrinsics=_extrinsics(rotations, centres),
    )


def test_a_no_op_scores_zero_on_every_effect():
    base = baseline(_scene(), LAYOUT, [Query(0, 3)])
    e = effect(base, _scene(), LAYOUT, [Query(0, 3)])
    assert (e.depth, e.points, e.rotation_deg, e.translation_deg) == (0.0, 0.0, 0.0, 0.0)
    assert e.query.tolist() == [0.0]


def test_depth_effect_of_depths_ten_percent_larger_is_one_tenth():
    e = effect(baseline(_scene(), LAYOUT), _scene(depth_scale=1.1), LAYOUT)
    assert e.depth == pytest.approx(0.1)


def test_point_effect_is_the_shift_over_the_median_point_distance():
    before = _scene()
    scale = np.median(np.linalg.norm(before.points.reshape(-1, 3), axis=1))
    e = effect(baseline(before, LAYOUT, conf_percentile=0.0), _scene(shift=(0, 0.5, 0)), LAYOUT)
    assert e.points == pytest.approx(0.5 / scale)


def test_rotation_effect_of_a_known_extra_rotation():
    after = _scene(rotations=[np.eye(3), _rot_z(30) @ _rot_z(10)])
    assert rotation_angles(_scene().extrinsics, after.extrinsics) == pytest.approx([0.0, 30.0])
    assert effect(baseline(_scene(), LAYOUT), after, LAYOUT).rotation_deg == pytest.approx(15.0)


def test_translation_direction_effect_ignores_scale_and_the_camera_at_the_origin():
    after = _scene(centres=[(0, 0, 0), (3.0, 3.0, 0)])  # 45 degrees away, three times as far
    angles = direction_angles(_scene().extrinsics, after.extrinsics)
    assert np.isnan(angles[0]) and angles[1] == pytest.approx(45.0)
    assert effect(baseline(_scene(), LAYOUT), after, LAYOUT).translation_deg == pytest.approx(45.0)


def test_query_effect_is_the_shift_of_its_patch_point_and_nan_for_a_special_token():
    before = _scene()
    after = _scene()
    after.points[1, 2:4, 0:2] += np.array([0.0, 0.0, 2.0])  # patch (1, 0) of frame 1 only
    queries = [Query(1, LAYOUT.patch_start + 2), Query(0, LAYOUT.patch_start), Query(0, 0)]
    base = baseline(before, LAYOUT, queries, conf_percentile=0.0)
    e = effect(base, after, LAYOUT, queries)
    assert e.query[0] == pytest.approx(2.0 / base.scale)
    assert e.query[1] == 0.0 and np.isnan(e.query[2])


def test_unconfident_pixels_do_not_count():
    before = _scene()
    before.depth_conf[0] = 0.0  # frame 0 below the median confidence
    after = _scene()
    after.depth[0] *= 5.0  # a large change where the baseline is not confident
    after.depth[1] *= 1.2
    e = effect(baseline(before, LAYOUT, conf_percentile=50.0), after, LAYOUT)
    assert e.depth == pytest.approx(0.2)


def test_geometry_reads_vggt_predictions():
    s, h, w = 2, 4, 4
    pose = torch.zeros(1, s, 9)
    pose[..., 6] = 1.0  # identity rotation
    pose[..., 7:] = 1.0
    pose[0, 1, 0] = -1.0  # camera 1 centred at x = 1
    pred = {
        "pose_enc": pose,
        "depth": torch.full((1, s, h, w, 1), 2.0),
        "depth_conf": torch.ones(1, s, h, w),
        "world_points": torch.zeros(1, s, h, w, 3),
        "world_points_conf": torch.ones(1, s, h, w),
    }
    g = geometry(pred, TokenLayout(s, 2, 2, 2, 1))
    assert g.depth.shape == (s, h, w) and (g.depth == 2.0).all()
    np.testing.assert_allclose(g.extrinsics[1, :, 3], [-1.0, 0, 0])
