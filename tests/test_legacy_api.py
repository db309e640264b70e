"""The earlier script's API, as ``import visualize_attention`` and ``vggt_attn_rerun.legacy``: the
same structures and signatures, real attention (RoPE kept, each token's own frame), loud errors,
and figures shown as that script showed them.

The earlier script is ``visualize_attention.py`` of the fork ``tang0214/vggt``; SCRIPT_SIGNATURES
below are its public functions and their leading parameters, copied from that script's ``def`` lines.
"""

import importlib.util
import inspect
import math
import sys

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from vggt_attn_rerun.core.capture import capture
from vggt_attn_rerun.core.introspect import find_aggregator
from vggt_attn_rerun.core.tokens import Query
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.legacy.visualize_attention import (
    AttentionExtractor,
    demo_visualize_token_attention,
    extract_both_attentions,
    get_attention_values,
    visualize_attention_on_image,
)
from vggt_attn_rerun.testing import synthetic_scene

# scene_images: S=3 frames of 56x84 -> 4x6 patches, P = 5 + 24 = 29, N = 87; tiny model: 4 heads, 4 blocks.
S, GH, GW, P, HEADS, DEPTH = 3, 4, 6, 29, 4, 4
N = S * P
BLOCK = 2
FRAME2_TOKEN = 2 * P + 5 + 1 * GW + 3  # frame 2, patch (1, 3): frame 0 would be the earlier script's answer

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
def both(tiny_model, scene_images):
    return extract_both_attentions(tiny_model, scene_images, block_idx=BLOCK)


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_extract_both_attentions_has_the_scripts_structure(both):
    assert set(both) == {"frame_attention", "global_attention", "block_idx", "patch_start_idx"}
    assert (both["block_idx"], both["patch_start_idx"]) == (BLOCK, 5)
    frame, glob = both["frame_attention"], both["global_attention"]
    assert set(frame) == {"attn_weights", "layer_type", "num_heads", "num_tokens"}
    assert frame["attn_weights"].shape == (S, HEADS, P, P)
    assert glob["attn_weights"].shape == (1, HEADS, N, N)
    assert (frame["layer_type"], frame["num_heads"], frame["num_tokens"]) == ("frame", HEADS, P)
    assert (glob["layer_type"], glob["num_heads"], glob["num_tokens"]) == ("global", HEADS, N)
    torch.testing.assert_close(glob["attn_weights"].sum(-1), torch.ones(1, HEADS, N))


def test_extractor_returns_maps_keyed_like_the_script(tiny_model, scene_images):
    with AttentionExtractor(tiny_model) as extractor:
        extractor.register_hooks(block_indices=[1, 3], attention_types=["frame", "global"])
        with torch.no_grad():
            tiny_model(scene_images)
        maps = extractor.get_attention_maps()
    assert set(maps) == {"frame_block_1", "frame_block_3", "global_block_1", "global_block_3"}
    assert maps["frame_block_3"]["attn_weights"].shape == (S, HEADS, P, P)
    assert maps["global_block_1"]["attn_weights"].shape == (1, HEADS, N, N)


def test_clear_hooks_removes_every_hook(tiny_model, scene_images):
    before = _hook_count(tiny_model)
    extractor = AttentionExtractor(tiny_model)
    extractor.register_hooks([0])
    assert _hook_count(tiny_model) > before
    with torch.no_grad():
        tiny_model(scene_images)
    captured = extractor.get_attention_maps()["global_block_0"]["attn_weights"]
    extractor.clear_hooks()
    assert _hook_count(tiny_model) == before
    # What was captured stays readable, and a forward after clearing captures nothing new.
    with torch.no_grad():
        tiny_model(scene_images.flip(0))
    assert extractor.get_attention_maps()["global_block_0"]["attn_weights"] is captured


def test_extractor_over_budget_raises_during_forward_and_names_the_rows_api(tiny_model, scene_images):
    before = _hook_count(tiny_model)
    # One frame map is S*H*P*P*4 = 40 KB, a global one 121 KB: the second block must be refused.
    with AttentionExtractor(tiny_model, budget_bytes=100_000) as extractor:
        extractor.register_hooks([0], attention_types=["frame", "global"])
        refused = r"global attention of block 0.*vggt_attn_rerun\.capture\b"
        with pytest.raises(UserError, match=refused), torch.no_grad():
            tiny_model(scene_images)
    assert _hook_count(tiny_model) == before


def test_extract_both_attentions_checks_the_budget_before_the_forward(tiny_model, scene_images):
    with pytest.raises(UserError, match=r"budget.*capture\("):
        extract_both_attentions(tiny_model, scene_images, block_idx=0, budget_bytes=1000)


@pytest.mark.parametrize("kind", ["frame", "global"])
@pytest.mark.parametrize("head", [1, "mean"])
def test_values_equal_the_captured_rows_of_a_token_in_frame_2(tiny_model, scene_images, both, kind, head):
    # capture() keeps RoPE and reads each token's own frame, so equality shows both fixes.
    rows = capture(tiny_model, scene_images, [Query(2, 5 + GW + 3)], blocks=[BLOCK], kinds=[kind]).rows
    values = get_attention_values(both[f"{kind}_attention"]["attn_weights"], scene_images, FRAME2_TOKEN,
                                  head, 5, kind)  # fmt: skip
    raw = rows.probs[kind][0, 0]  # [H, S, P]
    probs = raw.mean(0) if head == "mean" else raw[head]
    patches = probs[:, 5:]
    want = (patches / patches.sum()).reshape(S, GH, GW)
    if kind == "frame":
        want = want[2]
    np.testing.assert_allclose(values["attention_maps"], want.numpy(), atol=1e-6)
    assert values["metadata"]["frame_idx"] == 2


def test_frame_values_do_not_read_frame_0(both, scene_images):
    weights = both["frame_attention"]["attn_weights"]
    ours = get_attention_values(weights, scene_images, FRAME2_TOKEN, 0, 5, "frame")["attention_maps"]
    script_row = weights[0, 0, FRAME2_TOKEN - 2 * P, 5:]  # what the earlier script read for this token
    assert not np.allclose(ours, (script_row / script_row.sum()).reshape(GH, GW).numpy(), atol=1e-4)


@pytest.mark.parametrize("kind", ["frame", "global"])
def test_get_attention_values_structure(both, scene_images, kind):
    values = get_attention_values(both[f"{kind}_attention"]["attn_weights"], scene_images, 7, 0, 5, kind)
    grid, full = ((GH, GW), (56, 84)) if kind == "frame" else ((S, GH, GW), (S, 56, 84))
    assert values["attention_maps"].shape == grid
    assert values["attention_maps_resized"].shape == full
    assert values["images"].shape == (S, 56, 84, 3)
    assert 0 <= values["images"].min() and values["images"].max() <= 1
    assert values["metadata"] == {
        "grid_h": GH, "grid_w": GW, "H": 56, "W": 84, "S": S, "token_idx": 7, "head_idx": 0,
        "attention_type": kind, "patch_start_idx": 5, "frame_idx": 0, "local_idx": 7,
    }  # fmt: skip
    assert values["attention_maps"].sum() == pytest.approx(1.0, abs=1e-5)
    # Bilinear upsampling only interpolates: no value outside the map's range.
    m, r = values["attention_maps"], values["attention_maps_resized"]
    assert m.min() - 1e-7 <= r.min() and r.max() <= m.max() + 1e-7


@pytest.mark.parametrize(
    ("token", "head", "kind", "match"),
    [
        (N, 0, "frame", r"token_idx 87 is out of range: valid are 0\.\.86"),
        (-1, 0, "global", r"token_idx -1 is out of range: valid are 0\.\.86"),
        (7, HEADS, "global", r"head_idx 4 is out of range: valid are 0\.\.3"),
        (7, 0, "cross", r"valid kinds are frame, global"),
    ],
)
def test_bad_token_head_or_kind_raise_with_the_valid_range(both, scene_images, token, head, kind, match):
    weights = both["global_attention" if kind == "global" else "frame_attention"]["attn_weights"]
    with pytest.raises(UserError, match=match):
        get_attention_values(weights, scene_images, token, head, 5, kind)


def test_bad_block_raises_with_the_valid_range(tiny_model, scene_images):
    with pytest.raises(UserError, match=r"block 4 does not exist: valid blocks are 0\.\.3"):
        extract_both_attentions(tiny_model, scene_images, block_idx=DEPTH)
    with pytest.raises(UserError, match=r"valid blocks are 0\.\.3"):
        AttentionExtractor(tiny_model).register_hooks([23])
    assert not find_aggregator(tiny_model).frame_blocks[0].attn._forward_hooks


def test_figures_have_the_expected_axes(both, scene_images):
    weights = both["frame_attention"]["attn_weights"]
    frame_fig = visualize_attention_on_image(get_attention_values(weights, scene_images, FRAME2_TOKEN))
    assert len(frame_fig.axes) == 3  # image, overlay, colorbar
    assert "Frame 2" in frame_fig.axes[0].get_title()
    # The earlier script's call form (weights, images, token) gives the same figure layout.
    global_fig = visualize_attention_on_image(
        both["global_attention"]["attn_weights"], scene_images, FRAME2_TOKEN, "mean", 5, "global"
    )
    assert len(global_fig.axes) == 2 * S + 1  # S images, S overlays, colorbar


def test_figures_without_matplotlib_raise_a_user_error(both, scene_images, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    values = get_attention_values(both["frame_attention"]["attn_weights"], scene_images, 7, 0, 5, "frame")
    with pytest.raises(UserError, match=r"pip install 'vggt-attn-rerun\[plot\]'"):
        visualize_attention_on_image(values)


@pytest.fixture
def photo_paths(tmp_path):
    # Wide photos keep the 518-wide model image small: 518x84 -> 37x6 patches, P = 227.
    paths = []
    for i, pixels in enumerate(synthetic_scene(2, height=28, width=168, seed=2)):
        paths.append(tmp_path / f"view_{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def test_demo_returns_figures_and_result(tiny_model, photo_paths):
    token = 227 + 5 + 2 * 37 + 10  # frame 1, patch (2, 10)
    figures, result = demo_visualize_token_attention(
        photo_paths, block_idx=1, token_idx=token, head_idx=0, model=tiny_model, show=False
    )
    assert [kind for kind, _ in figures] == ["frame", "global"]
    assert [len(fig.axes) for _, fig in figures] == [3, 2 * 2 + 1]
    assert result["global_attention"]["attn_weights"].shape == (1, HEADS, 2 * 227, 2 * 227)
    assert result["block_idx"] == 1


def test_demo_rejects_a_bad_token_instead_of_moving_it(tiny_model, photo_paths):
    with pytest.raises(UserError, match=r"token_idx 500 is out of range: valid are 0\.\.453"):
        demo_visualize_token_attention(photo_paths, block_idx=1, token_idx=500, model=tiny_model)


# -- code written for the earlier script runs unchanged --------------------------------------------


def test_visualize_attention_is_an_installed_top_level_module():
    spec = importlib.util.find_spec("visualize_attention")
    assert spec is not None and spec.origin.endswith("legacy/visualize_attention.py")


def test_the_alias_has_every_public_function_of_the_script_with_its_parameters(va):
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


def test_visualize_frame_attention_takes_the_scripts_index_within_the_frame(va, both, scene_images):
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


def test_demo_single_layer_attention_data_mode_has_the_scripts_dict(va, tiny_model, scene_images):
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
