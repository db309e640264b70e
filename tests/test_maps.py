"""Colour scales, quantization and ray targets (analysis.maps), and the constructed demo model."""

import numpy as np
import pytest
import torch

from vggt_attn_rerun.analysis.maps import dequantize, map_vmax, quantize, query_maps, ray_targets
from vggt_attn_rerun.core.capture import capture
from vggt_attn_rerun.core.tokens import Query
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.testing import matching_vggt, tiny_vggt

# Two maps (leading axis) of two views of 1 x 3 patches; the query's own key is view 0, patch (0, 0).
MAPS = np.array(
    [
        [[[0.9, 0.1, 0.2]], [[0.3, 0.05, 0.0]]],
        [[[0.5, 0.4, 0.1]], [[0.2, 0.6, 0.1]]],
    ]
)
SELF = (0, 0, 0)


def test_map_scale_is_each_maps_max_over_views_without_the_query_key():
    np.testing.assert_allclose(map_vmax(MAPS, "map", SELF), [[0.3, 0.3], [0.6, 0.6]])


def test_global_scale_is_the_max_over_every_map_and_view():
    np.testing.assert_allclose(map_vmax(MAPS, "global", SELF), np.full((2, 2), 0.6))


def test_view_scale_is_each_views_own_max():
    np.testing.assert_allclose(map_vmax(MAPS, "view", SELF), [[0.2, 0.3], [0.4, 0.6]])


def test_percentile_clip_takes_that_percentile_instead_of_the_max():
    x = np.arange(101, dtype=float).reshape(1, 1, 101)  # one map, one view, values 0..100
    assert map_vmax(x, "map", clip_percentile=90.0)[0] == pytest.approx(90.0)


def test_an_all_zero_map_gets_a_tiny_positive_scale():
    assert (map_vmax(np.zeros((1, 2, 1, 2)), "map") > 0).all()


def test_unknown_scale_is_a_user_error():
    with pytest.raises(UserError, match="valid scales are map, global, view"):
        map_vmax(MAPS, "log")


def test_quantize_with_gamma_and_dequantize_invert_each_other():
    p = np.array([0.0, 0.01, 0.25, 0.5, 1.0, 2.0])
    u8 = quantize(p, 1.0, gamma=0.5)
    np.testing.assert_array_equal(u8, np.rint(255 * np.sqrt(np.clip(p, 0, 1))).astype(np.uint8))
    np.testing.assert_allclose(dequantize(u8, 1.0, 0.5)[2:5], [0.25, 0.5, 1.0], rtol=0.01)


def test_query_maps_quantize_the_head_mean_under_its_own_scale():
    p = np.random.default_rng(0).random((3, 2, 2, 2, 3))  # [L, H, S, gh, gw]
    maps = query_maps(p, None, 1)
    mean = p.mean(axis=1)
    np.testing.assert_allclose(maps.block_vmax[:, 0], mean.max(axis=(1, 2, 3)))
    assert (maps.block_u8.max(axis=(1, 2, 3)) == 255).all()
    np.testing.assert_array_equal(maps.head_u8, maps.all_u8[1])


def test_ray_targets_are_the_top_k_candidates_hottest_first():
    values = np.array([[0.1, 0.9, 0.5, 0.7, 0.3], [0.6, 0.2, 0.1, 0.3, 0.8]])
    candidates = np.array([True, False, True, True, True])
    np.testing.assert_array_equal(ray_targets(values, candidates, 2), [[3, 2], [4, 0]])
    assert ray_targets(values, candidates, 9).shape == (2, 4)
    assert ray_targets(values, np.zeros(5, bool), 3).shape == (2, 0)


# -- the constructed demo model ---------------------------------------------------------------


def _shifted_views() -> torch.Tensor:
    """View 1 is view 0 moved left by exactly one patch (14 px): patch (r, c + 1) of view 0 is
    patch (r, c) of view 1. ``[2, 3, 56, 98]``."""
    rng = np.random.default_rng(3)
    wide = rng.random((56, 112, 3)).astype(np.float32)
    views = np.stack([wide[:, :98], wide[:, 14:]])
    return torch.from_numpy(views).permute(0, 3, 1, 2)


def test_the_constructed_block_attends_to_the_same_content_in_another_view():
    images = _shifted_views()
    res = capture(matching_vggt(block=2), images, lambda lay: [Query.from_patch(lay, 0, 2, 4)], blocks=[2])
    view1 = res.rows.patches("global")[0, 0, :, 1].mean(0)  # head mean on view 1: [gh, gw]
    assert np.unravel_index(int(view1.argmax()), view1.shape) == (2, 3)
    assert float(view1.max()) > 20 * float(view1.median())  # a peak, not a diffuse map


def test_the_constructed_model_changes_only_its_one_block():
    base, made = tiny_vggt().state_dict(), matching_vggt(block=2).state_dict()
    changed = {k for k in base if not torch.equal(base[k], made[k])}
    assert changed and all(k.startswith("aggregator.global_blocks.2.attn.") for k in changed)
