"""The tiny test model has VGGT's module tree, code path and output contract."""

import torch

from vggt_attn_rerun.testing import synthetic_scene, tiny_vggt


def test_module_tree_matches_vggt_names():
    names = dict(tiny_vggt().named_modules())
    for name in [
        "aggregator.patch_embed", "aggregator.rope",
        "aggregator.frame_blocks.0.attn.qkv", "aggregator.frame_blocks.0.attn.q_norm",
        "aggregator.frame_blocks.0.attn.k_norm", "aggregator.frame_blocks.0.attn.proj",
        "aggregator.global_blocks.3.attn.proj", "aggregator.global_blocks.3.ls1", "aggregator.global_blocks.3.mlp",
        "camera_head", "depth_head", "point_head",
    ]:  # fmt: skip
        assert name in names, name
    agg = names["aggregator"]
    assert agg.patch_start_idx == 5 and agg.camera_token.shape[:2] == (1, 2) and agg.register_token.shape[1:3] == (2, 4)
    # one RoPE shared by every block, as in VGGT
    assert all(b.attn.rope is agg.rope for b in [*agg.frame_blocks, *agg.global_blocks])


def test_blocks_receive_pos_by_keyword():
    model = tiny_vggt()
    seen = []
    h = model.aggregator.global_blocks[0].register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((len(args), "pos" in kwargs)), with_kwargs=True
    )
    model(torch.rand(2, 3, 28, 28))
    h.remove()
    assert seen == [(1, True)]


def test_outputs_have_vggt_keys_and_shapes():
    out = tiny_vggt()(torch.rand(3, 3, 28, 42))
    assert out["pose_enc"].shape == (1, 3, 9)
    assert out["depth"].shape == (1, 3, 28, 42, 1) and out["depth_conf"].shape == (1, 3, 28, 42)
    assert out["world_points"].shape == (1, 3, 28, 42, 3) and out["world_points_conf"].shape == (1, 3, 28, 42)
    assert out["images"].shape == (1, 3, 3, 28, 42)
    assert (out["depth"] > 0).all()


def test_seed_makes_the_model_deterministic():
    a, b = tiny_vggt(seed=1), tiny_vggt(seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_synthetic_scene_overlaps_between_views():
    views = synthetic_scene(3, 20, 40)
    assert views.shape == (3, 20, 40, 3) and views.dtype.name == "uint8"
    assert (views[0][:, 8:] == views[1][:, :-8]).all()  # the camera slides 8 px per frame
