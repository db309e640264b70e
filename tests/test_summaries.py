"""Per-head summaries of attention rows (analysis.summaries): hand-built rows with known answers."""

import math

import numpy as np
import pytest
import torch

from vggt_attn_rerun.analysis.summaries import METRICS, block_head_matrix, summarize
from vggt_attn_rerun.core.capture import capture
from vggt_attn_rerun.core.rows import AttentionRows
from vggt_attn_rerun.core.tokens import Query, TokenLayout
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.viz.colormap import lut

LAY = TokenLayout(3, 4, 6)  # P = 1 + 4 + 24 = 29 tokens per frame, N = 87


def _rows(probs: torch.Tensor, queries, kind="global", blocks=None) -> AttentionRows:
    blocks = tuple(range(probs.shape[0])) if blocks is None else blocks
    return AttentionRows(LAY, tuple(queries), blocks, probs.shape[2], {kind: probs})


def _zeros(l=1, q=1, h=1):  # noqa: E741
    return torch.zeros(l, q, h, LAY.num_frames, LAY.tokens_per_frame)


Q0 = Query.from_patch(LAY, 0, 1, 2)


def test_all_mass_on_one_patch_of_view_2():
    p = _zeros()
    p[0, 0, 0, 2, LAY.patch_to_local(3, 4)] = 1.0
    s = summarize(_rows(p, [Q0]), "global", top_k=1)
    assert s.own_view_mass[0, 0, 0] == 0
    assert s.other_views_mass[0, 0, 0] == 1
    np.testing.assert_array_equal(s.view_mass[0, 0, 0], [0, 0, 1])
    assert s.camera_mass[0, 0, 0] == 0 and s.register_mass[0, 0, 0] == 0
    assert s.entropy[0, 0, 0] == 0
    assert s.top_k_mass[0, 0, 0] == 1


def test_uniform_global_row_has_entropy_one_and_top_k_k_over_n():
    p = _zeros() + 1.0 / LAY.num_tokens
    s = summarize(_rows(p, [Q0]), "global", top_k=10)
    assert s.num_keys == LAY.num_tokens == 87
    assert s.entropy[0, 0, 0] == pytest.approx(1.0, abs=1e-6)
    assert s.top_k_mass[0, 0, 0] == pytest.approx(10 / 87, abs=1e-6)
    np.testing.assert_allclose(s.view_mass[0, 0, 0], [24 / 87] * 3, atol=1e-6)
    assert s.own_view_mass[0, 0, 0] == pytest.approx(24 / 87, abs=1e-6)
    assert s.camera_mass[0, 0, 0] == pytest.approx(3 / 87, abs=1e-6)
    assert s.register_mass[0, 0, 0] == pytest.approx(12 / 87, abs=1e-6)


def test_uniform_frame_row_is_normalized_by_the_frame_length():
    q = Query.from_patch(LAY, 1, 0, 0)
    p = _zeros()
    p[0, 0, 0, 1] = 1.0 / LAY.tokens_per_frame
    s = summarize(_rows(p, [q], kind="frame"), "frame", top_k=100)
    assert s.num_keys == 29
    assert s.entropy[0, 0, 0] == pytest.approx(1.0, abs=1e-6)
    assert s.top_k_mass[0, 0, 0] == pytest.approx(1.0, abs=1e-6)  # k capped by the row
    assert s.own_view_mass[0, 0, 0] == pytest.approx(24 / 29, abs=1e-6)
    assert s.other_views_mass[0, 0, 0] == 0


def test_special_mass_is_split_and_own_view_is_the_query_frame():
    q = Query.from_patch(LAY, 1, 2, 3)
    p = _zeros()
    p[0, 0, 0, 0, 0] = 0.25  # camera of frame 0
    p[0, 0, 0, 1, 2] = 0.125  # register_1 of frame 1
    p[0, 0, 0, 2, 4] = 0.125  # register_3 of frame 2
    p[0, 0, 0, 1, LAY.patch_to_local(0, 0)] = 0.5  # own view, a patch
    s = summarize(_rows(p, [q]), "global", top_k=2)
    assert s.camera_mass[0, 0, 0] == 0.25
    assert s.register_mass[0, 0, 0] == 0.25
    assert s.own_view_mass[0, 0, 0] == 0.5
    assert s.other_views_mass[0, 0, 0] == 0
    assert s.top_k_mass[0, 0, 0] == 0.75
    want = -(0.25 * math.log(0.25) + 2 * 0.125 * math.log(0.125) + 0.5 * math.log(0.5)) / math.log(87)
    assert s.entropy[0, 0, 0] == pytest.approx(want, rel=1e-12)


def test_head_mean_and_mean_over_queries():
    qa, qb = Q0, Query.from_patch(LAY, 2, 0, 0)
    p = _zeros(l=2, q=2, h=2)
    p[:, :, 0, 1, LAY.patch_to_local(0, 0)] = 1.0  # head 0: one patch of view 1
    p[:, :, 1, 2, LAY.patch_to_local(0, 0)] = 1.0  # head 1: one patch of view 2
    rows = _rows(p, [qa, qb], blocks=(3, 5))
    s = summarize(rows, "global", top_k=1)
    assert s.entropy.shape == (2, 2, 2) and s.view_mass.shape == (2, 2, 2, 3) and s.blocks == (3, 5)
    hm = summarize(rows, "global", top_k=1, head_mean=True)
    assert hm.head_mean and hm.entropy.shape == (2, 2, 1)
    # masses of the mean row = mean of the masses; entropy of the mean row is not the mean entropy
    np.testing.assert_allclose(hm.view_mass[..., 0, :], s.view_mass.mean(2))
    np.testing.assert_allclose(hm.entropy, math.log(2) / math.log(87))
    np.testing.assert_allclose(hm.top_k_mass, 0.5)
    m = s.mean_over_queries()
    assert m.own_view_mass.shape == (2, 1, 2)
    # query a (frame 0): own view mass 0; query b (frame 2): head 1 is on its own view
    np.testing.assert_allclose(m.own_view_mass[0, 0], [0.0, 0.5])
    np.testing.assert_allclose(s.mean_over_queries([1]).own_view_mass[0, 0], [0.0, 1.0])
    np.testing.assert_allclose(s.matrix("own_view_mass"), [[0.0, 0.5], [0.0, 0.5]])
    with pytest.raises(UserError, match="valid metrics"):
        s.matrix("nope")
    with pytest.raises(UserError, match="out of range"):
        s.mean_over_queries([2])


def test_errors_name_what_is_valid():
    rows = _rows(_zeros() + 1 / 87, [Q0])
    with pytest.raises(UserError, match="captured kinds"):
        summarize(rows, "frame")
    with pytest.raises(UserError, match="top_k"):
        summarize(rows, "global", top_k=0)


def test_block_head_matrix_is_a_colormapped_upscaled_grid():
    table = lut("viridis")
    v = np.array([[0.0, 1.0, 0.5], [np.nan, 0.25, 1.0]])
    img = block_head_matrix(v, table, cell=4, vmin=0, vmax=1)
    assert img.shape == (8, 12, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[:4, :4], np.broadcast_to(table[0], (4, 4, 3)))
    np.testing.assert_array_equal(img[0, 4], table[255])
    np.testing.assert_array_equal(img[3, 11], table[128])  # round(0.5 * 255) = 128
    np.testing.assert_array_equal(img[4, 0], [128, 128, 128])  # NaN colour
    np.testing.assert_array_equal(img[7, 7], table[64])
    # default range: the finite min and max; values beyond an explicit range are clipped
    scaled = block_head_matrix(v * 10, table, cell=1)
    np.testing.assert_array_equal(scaled, block_head_matrix(v, table, cell=1))
    clipped = block_head_matrix(np.array([[-5.0, 5.0]]), table, cell=1, vmin=0, vmax=1)
    np.testing.assert_array_equal(clipped[0], table[[0, 255]])
    with pytest.raises(UserError, match=r"\[256, 3\]"):
        block_head_matrix(v, table[:10])
    with pytest.raises(UserError, match="cell"):
        block_head_matrix(v, table, cell=0)
    with pytest.raises(UserError, match="blocks, heads"):
        block_head_matrix(np.zeros(3), table)


def test_tiny_model_rows_add_up(tiny_model, scene_images):
    res = capture(
        tiny_model,
        scene_images,
        lambda lay: [Query.from_patch(lay, 0, 1, 2), Query.from_special(lay, 2, "camera")],
        blocks=[0, 3],
    )
    for kind in ("frame", "global"):
        s = summarize(res.rows, kind, top_k=5)
        total = s.own_view_mass + s.other_views_mass + s.camera_mass + s.register_mass
        np.testing.assert_allclose(total, 1.0, atol=1e-5)
        assert np.all((s.entropy > 0) & (s.entropy <= 1 + 1e-9))
        assert np.all(s.top_k_mass <= summarize(res.rows, kind, top_k=6).top_k_mass + 1e-12)
        for name in METRICS:
            assert getattr(s, name).shape == (2, 2, 4)
    assert np.all(summarize(res.rows, "frame").other_views_mass == 0)
