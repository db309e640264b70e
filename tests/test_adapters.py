"""Every adapter captures exactly what its model computes, on tiny replicas of each model."""

import pytest
import torch

from vggt_attn_rerun.core.adapters import adapter_for, arch_names
from vggt_attn_rerun.core.capture import capture
from vggt_attn_rerun.core.introspect import attention_module, find_aggregator, model_depth, model_layout
from vggt_attn_rerun.core.tokens import Query
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.testing import synthetic_scene, tiny_vggt
from vggt_attn_rerun.testing.tiny_pi3 import tiny_pi3
from vggt_attn_rerun.testing.tiny_streamvggt import tiny_streamvggt
from vggt_attn_rerun.testing.tiny_vggt_omega import tiny_vggt_omega

from .adapter_check import ModuleRecorder, check_rows_and_output

REPLICAS = {"vggt": tiny_vggt, "pi3": tiny_pi3, "streamvggt": tiny_streamvggt, "vggt-omega": tiny_vggt_omega}


def _images(patch: int) -> torch.Tensor:
    """Three views of 4 x 6 patches: ``[3, 3, 4 * patch, 6 * patch]``."""
    return torch.from_numpy(synthetic_scene(3, 4 * patch, 6 * patch, seed=1)).permute(0, 3, 1, 2).float() / 255


def _queries(lay):
    first_special = "camera" if lay.num_cameras else "register_0"
    return [
        Query.from_patch(lay, 0, 1, 2),
        Query.from_patch(lay, 2, 3, 5),
        Query.from_special(lay, 1, first_special),
        Query.from_special(lay, 2, "register_3"),
    ]


@pytest.fixture(scope="module", params=sorted(REPLICAS))
def captured(request):
    """(arch, model, result, recorders) of one capture of every block of a replica."""
    arch = request.param
    model = REPLICAS[arch]()
    adapter = adapter_for(model)
    images = _images(14 if arch != "vggt-omega" else 16)
    recs = [ModuleRecorder(adapter, model, k, b) for k in ("frame", "global") for b in range(model_depth(model))]
    try:
        res = capture(model, images, _queries)
    finally:
        for r in recs:
            r.remove()
    return arch, model, res, recs


def test_every_named_architecture_has_a_replica():
    assert set(arch_names()) == set(REPLICAS)


def test_adapter_is_chosen_from_the_model_type(captured):
    arch, model, _, _ = captured
    assert adapter_for(model).name == arch


def test_rows_equal_an_explicit_softmax_and_rebuild_the_module_output(captured):
    _, _, res, recs = captured
    compared = sum(check_rows_and_output(rec, res) for rec in recs)
    assert compared >= len(recs) * 2  # every block compared at least the special queries


def test_rows_sum_to_one_unless_the_query_takes_no_part(captured):
    arch, _, res, _ = captured
    sums = res.rows.probs["global"].sum((-1, -2))  # [L, Q, H]
    if arch == "vggt-omega":  # block 1 of the replica attends among special tokens only
        assert sums[1, :2].abs().max() == 0
        sums = sums[[0, 2]]
    torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-5, rtol=0)


def test_layout_follows_the_model(captured):
    arch, model, res, _ = captured
    expected = {"vggt": (14, 4, 1), "pi3": (14, 5, 0), "streamvggt": (14, 4, 1), "vggt-omega": (16, 16, 1)}[arch]
    lay = res.layout
    assert (lay.patch_size, lay.num_registers, lay.num_cameras) == expected
    assert model_layout(model, 3, *lay.image_size) == lay


def test_streamvggt_gives_later_frames_probability_zero():
    model = tiny_streamvggt()
    res = capture(model, _images(14), _queries, kinds=["global"])
    p = res.rows.probs["global"]  # [L, Q, H, S, P]
    assert p[:, 0, :, 1:].abs().max() == 0  # a frame-0 query sees only frame 0
    assert p[:, 2, :, 2].abs().max() == 0  # a frame-1 query does not see frame 2
    assert p[:, 2, :, :2].sum((-1, -2)).min() > 0.99


def test_streamvggt_without_its_mask_would_differ_so_the_mask_test_can_fail():
    model = tiny_streamvggt()
    rec = ModuleRecorder(adapter_for(model), model, "global", 1)
    try:
        res = capture(model, _images(14), _queries, blocks=[1], kinds=["global"])
    finally:
        rec.remove()
    rec.kwargs["attn_mask"] = None
    unmasked, _ = rec.explicit()
    want = unmasked[0, :, res.rows.queries[0].token(res.layout)].reshape(res.rows.probs["global"][0, 0].shape)
    assert (res.rows.probs["global"][0, 0] - want).abs().max() > 1e-3


def test_a_mask_the_named_adapter_does_not_apply_is_refused():
    with pytest.raises(UserError, match="attention mask"):
        capture(tiny_streamvggt(), _images(14), _queries, kinds=["global"], arch="vggt")


def test_qk_cache_answers_with_the_mask_applied():
    model = tiny_streamvggt()
    res = capture(model, _images(14), _queries, kinds=["global"], keep_qk=True)
    again = res.qk_cache.rows(res.layout, res.rows.queries, res.rows.num_heads)
    torch.testing.assert_close(again.probs["global"], res.rows.probs["global"], atol=1e-6, rtol=0)


def test_pi3_has_no_camera_token():
    lay = model_layout(tiny_pi3(), 2, 56, 84)
    assert lay.patch_start == 5 and lay.special_names[0] == "register_0"
    with pytest.raises(UserError, match="register_0..register_4"):
        Query.from_special(lay, 0, "camera")


def test_pi3_blocks_alternate_in_one_decoder_list():
    model = tiny_pi3()
    assert attention_module(model, "frame", 1) is model.decoder[2].attn
    assert attention_module(model, "global", 1) is model.decoder[3].attn
    assert find_aggregator(model).frame_blocks[0].attn is model.decoder[0].attn
    assert "frame_blocks" not in dict(model.named_modules())  # the view is not part of the model


def test_pi3_rows_are_exact_when_the_model_casts_q_and_k_before_rope():
    """Under bf16 autocast pi3 casts the normed q/k (``.to(v.dtype)``) before RoPE: a copy the hooks
    match by call order; the rows still equal the explicit attention of the bf16 q/k."""
    model = tiny_pi3()
    rec = ModuleRecorder(adapter_for(model), model, "global", 0)
    try:
        res = capture(model, _images(14), _queries, blocks=[0], kinds=["global"], autocast_dtype=torch.bfloat16)
    finally:
        rec.remove()
    a, x = rec.attn, rec.x
    with torch.autocast("cpu", dtype=torch.bfloat16):
        b, n, c = x.shape
        q, k, v = a.qkv(x).reshape(b, n, 3, a.num_heads, c // a.num_heads).permute(2, 0, 3, 1, 4)
        q, k = a.q_norm(q).to(v.dtype), a.k_norm(k).to(v.dtype)
        q, k = a.rope(q, rec.kwargs["xpos"]), a.rope(k, rec.kwargs["xpos"])
    full = ((q.float() * a.scale) @ k.float().transpose(-2, -1)).softmax(-1)
    t = res.rows.queries[1].token(res.layout)
    torch.testing.assert_close(res.rows.probs["global"][0, 1].flatten(1), full[0, :, t], atol=1e-6, rtol=0)


def test_omega_register_blocks_give_special_queries_rows_over_special_keys_only():
    model = tiny_vggt_omega()
    res = capture(model, _images(16), _queries, blocks=[1], kinds=["global"])
    p, ps = res.rows.probs["global"][0], res.layout.patch_start  # [Q, H, S, P]
    assert p[:2].abs().max() == 0
    assert p[2:, ..., ps:].abs().max() == 0
    torch.testing.assert_close(p[2:].sum((-1, -2)), torch.ones(2, p.shape[1]), atol=1e-5, rtol=0)


def test_named_architecture_that_does_not_fit_is_refused():
    with pytest.raises(UserError, match="not a pi3"):
        adapter_for(tiny_vggt(), "pi3")


def test_unknown_architecture_name_lists_the_valid_ones():
    with pytest.raises(UserError, match="vggt, pi3|valid are vggt"):
        adapter_for(tiny_vggt(), "dust3r")


def test_full_matrices_refuse_a_masked_model_rather_than_drop_its_mask():
    from vggt_attn_rerun.legacy.full import capture_full

    with pytest.raises(UserError, match="masks its attention"):
        capture_full(tiny_streamvggt(), _images(14), blocks=[0], kinds=["global"])


def test_fastvggt_is_refused_because_merged_tokens_have_no_row_of_their_own():
    model = tiny_vggt()
    model.__class__ = type("FastVGGT", (type(model),), {"__module__": "fastvggt.models.vggt"})
    with pytest.raises(UserError, match="FastVGGT is not supported"):
        capture(model, _images(14), _queries)


@pytest.mark.parametrize("arch", ["vggt", "pi3"])
def test_a_run_resolves_the_models_adapter_once(scene, tmp_path, monkeypatch, arch):
    import vggt_attn_rerun.core.adapters as adapters
    from vggt_attn_rerun.api import Outputs, RunOptions, run

    resolved = []
    refuse = adapters._refuse_token_merging  # the first step of every resolution
    monkeypatch.setattr(adapters, "_refuse_token_merging", lambda model: resolved.append(model) or refuse(model))
    outputs = Outputs(save=tmp_path / "x.rrd")
    run(RunOptions(images=(str(scene),), model="tiny", arch=arch, image_size=56, outputs=outputs))
    assert len(resolved) == 1
