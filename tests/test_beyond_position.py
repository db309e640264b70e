"""The correspondence gain beyond position: what a head spends near the true correspondence and not
near the query's own (row, col), against what it spends near its own (row, col) and not near the
correspondence. Scenes are hand-built cameras with exact geometry; windows clip at the border.
"""

import numpy as np
import pytest
import torch

from vggt_attn_rerun.analysis.consistency import geometric_consistency
from vggt_attn_rerun.analysis.reference import Geometry
from vggt_attn_rerun.core.rows import AttentionRows
from vggt_attn_rerun.core.tokens import Query, TokenLayout

LAY = TokenLayout(3, 4, 6)  # 3 views of a 4 x 6 patch grid
F_PX = 42.0
# Cameras sliding sideways in front of a wall: the query at patch (r, c) lands at (r, c - 1) in
# view 1 and (r, c - 2) in view 2 (the wall's disparity is one patch per step).
CENTRES = [(0, 0, 0), (2 / 3, 0, 0), (4 / 3, 0, 0)]


def _sideways(lay=LAY, wall=2.0):
    h, w = lay.image_size
    k = np.array([[F_PX, 0, w / 2 - 0.5], [0, F_PX, h / 2 - 0.5], [0, 0, 1.0]])
    extr = np.stack([np.concatenate([np.eye(3), -np.asarray(c, float)[:, None]], 1) for c in CENTRES])
    depth = np.full((len(CENTRES), h, w), wall)
    return Geometry(extr, np.stack([k] * len(CENTRES)), depth, "truth")


def _rows(probs, queries):
    return AttentionRows(LAY, tuple(queries), (0,), probs.shape[2], {"global": probs})


def _peaked(queries, patches_per_query):
    """``[1, Q, 1, S, T]`` rows, each view's mass on one patch ``patches_per_query[q][s]`` (row, col)."""
    p = torch.zeros(1, len(queries), 1, LAY.num_frames, LAY.tokens_per_frame)
    for q, patches in enumerate(patches_per_query):
        for s, (r, c) in enumerate(patches):
            p[0, q, 0, s, LAY.patch_to_local(r, c)] = 1.0
    return p / p.sum(-1, keepdim=True).sum(-2, keepdim=True)


QUERIES = [Query.from_patch(LAY, 0, 0, 5), Query.from_patch(LAY, 0, 3, 4), Query.from_patch(LAY, 0, 1, 3)]


@pytest.mark.parametrize("radius", [0, 1, 2])
def test_a_uniform_head_gains_exactly_zero_beyond_position_where_windows_clip(radius):
    probs = torch.full((1, 3, 2, LAY.num_frames, LAY.tokens_per_frame), 1.0 / LAY.num_tokens)
    c = geometric_consistency(_rows(probs, QUERIES), {}, radius=radius, geometry=_sideways())
    measured = np.isfinite(c.beyond_position_gain)
    assert measured.sum() >= 4
    # The two sides of the symmetric difference differ in size where a window clips at the border.
    near = c.share_null[c.valid]
    assert radius == 0 or (near < (2 * radius + 1) ** 2 / (LAY.grid_h * LAY.grid_w)).any()
    np.testing.assert_allclose(c.beyond_position_gain[measured], 0, atol=1e-12)
    np.testing.assert_allclose(c.beyond_position_gain_score, 0, atol=1e-12)


def test_a_head_on_the_query_position_gains_on_correspondence_but_zero_beyond_position():
    # Radius 2: the correspondence (one or two patches away) lies in the query's own window, so a
    # head on the query's own (row, col) has mass near the correspondence.
    rows = _rows(_peaked(QUERIES, [[q.patch(LAY)] * 3 for q in QUERIES]), QUERIES)
    c = geometric_consistency(rows, {}, radius=2, geometry=_sideways())
    assert c.gain[0, 0] > 0.1
    measured = np.isfinite(c.beyond_position_gain)
    assert measured.sum() >= 3
    np.testing.assert_allclose(c.beyond_position_gain[measured], 0, atol=1e-12)


def test_a_head_on_the_query_position_gains_negative_beyond_position_when_windows_part():
    rows = _rows(_peaked(QUERIES[2:], [[(1, 3)] * 3]), QUERIES[2:])
    c = geometric_consistency(rows, {}, radius=0, geometry=_sideways())
    assert c.beyond_position_gain_score[0, 0] == pytest.approx(-1.0)


@pytest.mark.parametrize("radius", [0, 1])
def test_a_head_on_the_true_correspondence_gains_beyond_position(radius):
    probe = geometric_consistency(_rows(_peaked(QUERIES, [[(0, 0)] * 3] * 3), QUERIES), {}, radius=radius,
                                  geometry=_sideways())  # fmt: skip
    assert probe.valid[:, 1:].all()
    targets = [[tuple(probe.projected_patch[q, s]) if s else (0, 0) for s in range(3)] for q in range(3)]
    c = geometric_consistency(_rows(_peaked(QUERIES, targets), QUERIES), {}, radius=radius, geometry=_sideways())
    # Where the correspondence lies outside the query's own window the head gains; where it lies
    # inside, its mass is in the shared patches and the pair cannot tell it from position: 0.
    own = np.array([q.patch(LAY) for q in QUERIES])[:, None]
    apart = np.abs(probe.projected_patch - own).max(-1) > radius  # [Q, S]
    measured = np.isfinite(c.beyond_position_gain[0, :, 0])
    assert (apart & measured).sum() >= 2
    assert (c.beyond_position_gain[0, :, 0][apart & measured] > 0.5).all()
    np.testing.assert_allclose(c.beyond_position_gain[0, :, 0][~apart & measured], 0, atol=1e-12)
    assert c.beyond_position_gain_score[0, 0] > 0


def test_pairs_whose_windows_are_the_same_patches_are_not_measured():
    # The query's own view: excluded from every measure; with a wall at infinity every
    # correspondence is the query's own (row, col), so no pair has a symmetric difference.
    c = geometric_consistency(_rows(_peaked(QUERIES, [[(0, 0)] * 3] * 3), QUERIES), {}, radius=1,
                              geometry=_sideways(wall=1e9))  # fmt: skip
    assert c.valid[:, 1:].all()
    assert np.isnan(c.beyond_position_gain).all()
    assert np.isnan(c.beyond_position_gain_score).all()
