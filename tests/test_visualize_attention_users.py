"""Code written for the earlier script runs: its module name, its functions, its figures shown.

The earlier script is ``visualize_attention.py`` of the fork ``tang0214/vggt``; SCRIPT_SIGNATURES below are its
public functions and their leading parameters, copied from that script's ``def`` lines.
"""

import importlib.util
import inspect
import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from vggt_attn_rerun.errors import UserError

# scene_images: S=3 frames of 56x84 -> 4x6 patches, P = 5 + 24 = 29; tiny model: 4 heads, 4 blocks.
S, GH, GW, P, HEADS = 3, 4, 6, 29, 4
BLOCK = 2

SCRIPT_SIGNATURES = {
    "AttentionExtractor": ["model"],
    "visualize_attention_map": ["attn_weights", "token_idx", "head_idx", "frame_idx", "title", "figsize", "cmap"],
    "visualize_attention_on_image": [
        "attn_weights", "images", "token_idx", "head_idx", "patch_start_idx", "attention_type", "layer_name",
        "cmap", "alpha", "figsize",
    ],
    "get_attention_values": ["attn_weights", "images", "token_idx", "head_idx", "patch_start_idx", "attention_type"],
    "get_all_frames_attention": [
        "attn_weights", "images", "token_idx", "head_idx", "patch_start_idx", "frame_indices",
    ],
    "visualize_frame_attention": [
        "attn_weights", "images", "token_idx", "head_idx", "patch_start_idx", "frame_idx", "layer_name", "cmap",
        "alpha", "figsize",
    ],
    "visualize_all_frames_attention": [
        "attn_weights", "images", "token_idx", "head_idx", "patch_start_idx", "frame_indices", "layer_name",
        "cmap", "alpha", "figsize",
    ],
    "extract_both_attentions": ["model", "images", "block_idx", "dtype"],
    "demo_visualize_token_attention": ["image_paths", "block_idx", "token_idx", "head_idx", "attention_types"],
    "demo_single_layer_attention": [
        "image_paths", "block_idx", "attention_type", "token_idx", "head_idx", "mode",
    ],
}  # fmt: skip


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def va():
    import visualize_attention

    return visualize_attention


@pytest.fixture(scope="module")
def both(va, tiny_model, scene_images):
    return va.extract_both_attentions(tiny_model, scene_images, block_idx=BLOCK)


def test_visualize_attention_is_an_installed_top_level_module():
    spec = importlib.util.find_spec("visualize_attention")
    assert spec is not None and spec.origin.endswith("legacy/visualize_attention.py")


def test_the_alias_has_every_public_function_of_the_seed_with_its_parameters(va):
    assert sorted(va.__all__) == sorted(SCRIPT_SIGNATURES)
    for name, params in SCRIPT_SIGNATURES.items():
        ours = list(inspect.signature(getattr(va, name)).parameters)[: len(params)]
        assert ours == params, name


def test_the_alias_is_the_package_api_not_a_copy(va):
    from vggt_attn_rerun.legacy import extraction, values

    assert va.extract_both_attentions is extraction.extract_both_attentions
    assert va.get_attention_values is values.get_attention_values


def test_figures_are_pyplot_figures(va, both, scene_images):
    fig = va.visualize_attention_on_image(both["frame_attention"]["attn_weights"], scene_images, 7)
    assert fig.number in plt.get_fignums()


@pytest.mark.parametrize("show", [True, False])
def test_the_demos_call_plt_show_unless_asked_not_to(va, tiny_model, scene_images, monkeypatch, show):
    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(len(plt.get_fignums())))
    figures, _ = va.demo_visualize_token_attention(scene_images, block_idx=1, token_idx=40, model=tiny_model, show=show)
    fig = va.demo_single_layer_attention(scene_images, 1, "frame", 40, model=tiny_model, show=show)
    assert shown == ([2, 3] if show else [])
    assert {f.number for _, f in figures} | {fig.number} <= set(plt.get_fignums())


def test_frame_tokens_may_be_indices_within_the_frame(va, both, scene_images):
    weights = both["frame_attention"]["attn_weights"]
    local = 5 + 1 * GW + 3  # patch (1, 3)
    by_global = va.get_attention_values(weights, scene_images, 2 * P + local, 0, 5, "frame")
    by_local = va.get_attention_values(weights, scene_images, local, 0, 5, "frame", frame_idx=2)
    by_both = va.get_attention_values(weights, scene_images, 2 * P + local, 0, 5, "frame", frame_idx=2)
    expected = weights[2, 0, local, 5:] / weights[2, 0, local, 5:].sum()  # the row of frame 2, not frame 0
    for values in (by_global, by_local, by_both):
        np.testing.assert_allclose(values["attention_maps"], expected.reshape(GH, GW).numpy(), rtol=1e-6)
        assert (values["metadata"]["frame_idx"], values["metadata"]["local_idx"]) == (2, local)
    with pytest.raises(UserError, match=r"token_idx 72 is not a token of frame 1: valid are .* 0\.\.28 .* 29\.\.57"):
        va.get_attention_values(weights, scene_images, 2 * P + local, 0, 5, "frame", frame_idx=1)


def test_visualize_frame_attention_takes_the_seeds_index_within_the_frame(va, both, scene_images):
    weights = both["frame_attention"]["attn_weights"]
    fig = va.visualize_frame_attention(weights, scene_images, token_idx=12, head_idx=1, frame_idx=2)
    assert len(fig.axes) == 3 and "Frame 2" in fig.axes[0].get_title()
    overlay = fig.axes[1].images[1].get_array()
    same = va.get_attention_values(weights, scene_images, 2 * P + 12, 1, 5, "frame")["attention_maps_resized"]
    np.testing.assert_array_equal(np.asarray(overlay), same)


def test_get_all_frames_attention_reads_each_frames_row(va, both, scene_images):
    weights = both["frame_attention"]["attn_weights"]
    out = va.get_all_frames_attention(weights, scene_images, token_idx=12, head_idx=3, frame_indices=[2, 0])
    assert set(out) == {"attention_maps", "attention_maps_resized", "images", "frame_indices", "metadata"}
    assert out["frame_indices"] == [2, 0] and out["attention_maps"].shape == (2, GH, GW)
    assert out["attention_maps_resized"].shape == (2, 56, 84) and out["images"].shape == (S, 56, 84, 3)
    for i, f in enumerate([2, 0]):
        row = weights[f, 3, 12, 5:].numpy()
        np.testing.assert_allclose(out["attention_maps"][i], (row / row.sum()).reshape(GH, GW), rtol=1e-6)
    with pytest.raises(UserError, match=r"frame 3 is out of range: valid frames are 0\.\.2"):
        va.get_all_frames_attention(weights, scene_images, 12, frame_indices=[3])


def test_visualize_all_frames_attention_draws_every_frame(va, both, scene_images):
    fig = va.visualize_all_frames_attention(both["frame_attention"]["attn_weights"], scene_images, 12)
    assert len(fig.axes) == 2 * S + 1
    titles = [ax.get_title() for ax in fig.axes[: 2 * S]]
    assert titles == [f"Frame {f}" for f in range(S)] + [f"Frame Attention (Frame {f})" for f in range(S)]


def test_visualize_attention_map_draws_the_row_in_a_square(va, both):
    weights = both["global_attention"]["attn_weights"]  # [1, H, 87, 87]
    fig = va.visualize_attention_map(weights, token_idx=40, head_idx=2)
    side = math.ceil(math.sqrt(S * P))
    drawn = np.asarray(fig.axes[0].images[0].get_array())
    assert drawn.shape == (side, side)
    np.testing.assert_allclose(drawn.reshape(-1)[: S * P], weights[0, 2, 40].numpy(), rtol=1e-6)
    assert np.isnan(drawn.reshape(-1)[S * P :]).all()  # padding is blank, not zero attention
    with pytest.raises(UserError, match=r"token_idx 87 is out of range: valid are rows 0\.\.86"):
        va.visualize_attention_map(weights, token_idx=S * P)


def test_visualize_attention_map_finds_the_frame_of_a_global_token(va, both):
    weights = both["frame_attention"]["attn_weights"]  # [S, H, P, P]
    fig = va.visualize_attention_map(weights, token_idx=2 * P + 9, head_idx=0)
    drawn = np.asarray(fig.axes[0].images[0].get_array()).reshape(-1)[:P]
    np.testing.assert_allclose(drawn, weights[2, 0, 9].numpy(), rtol=1e-6)


def test_demo_single_layer_attention_data_mode_has_the_seeds_dict(va, tiny_model, scene_images):
    data = va.demo_single_layer_attention(scene_images, 1, "global", 40, 0, "data", model=tiny_model)
    assert set(data) == {"attention_weights", "layer_name", "layer_type", "num_heads", "num_tokens"}
    assert data["attention_weights"].shape == (1, HEADS, S * P, S * P)
    assert (data["layer_name"], data["layer_type"], data["num_heads"], data["num_tokens"]) == (
        "global_block_1", "global", HEADS, S * P,
    )  # fmt: skip


def test_demo_single_layer_attention_draws_frame_attention_of_the_tokens_frame(va, tiny_model, scene_images):
    token = 2 * P + 11
    fig = va.demo_single_layer_attention(scene_images, 1, "frame", token, 0, model=tiny_model, show=False)
    data = va.demo_single_layer_attention(scene_images, 1, "frame", token, 0, "data", model=tiny_model)
    drawn = np.asarray(fig.axes[0].images[0].get_array()).reshape(-1)[:P]
    np.testing.assert_allclose(drawn, data["attention_weights"][2, 0, 11].numpy(), rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"token_idx": 500}, r"token_idx 500 is out of range: valid are 0\.\.86"),  # the earlier script clamped it
        ({"mode": "show"}, r"unknown mode 'show': valid modes are visualize, data"),
        ({"head_idx": 4}, r"head_idx 4 is out of range: valid are 0\.\.3"),
        ({"block_idx": 4}, r"valid blocks are 0\.\.3"),
    ],
)
def test_demo_single_layer_attention_refuses_bad_arguments(va, tiny_model, scene_images, kwargs, match):
    args = {"block_idx": 1, "token_idx": 40, "model": tiny_model, "show": False} | kwargs
    with pytest.raises(UserError, match=match):
        va.demo_single_layer_attention(scene_images, **args)


def test_a_batch_of_several_scenes_is_refused_clearly(va, tiny_model, both, scene_images):
    batch = torch.stack([scene_images, scene_images])  # [2, S, 3, H, W]
    with pytest.raises(UserError, match="batch of 2 scenes: one scene at a time"):
        va.extract_both_attentions(tiny_model, batch, block_idx=1)
    with pytest.raises(UserError, match="batch of 2 scenes"):
        va.get_attention_values(both["global_attention"]["attn_weights"], batch, 7, 0, 5, "global")
    two_scenes = torch.cat([both["frame_attention"]["attn_weights"]] * 2)  # the earlier script's [B*S, H, P, P]
    with pytest.raises(UserError, match="a batch of several scenes is not supported"):
        va.get_attention_values(two_scenes, scene_images, 7, 0, 5, "frame")
