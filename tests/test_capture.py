"""Capture (core.capture) is exact, light and faithful."""

import warnings

import pytest
import torch

from vggt_attn_rerun.core.capture import capture
from vggt_attn_rerun.core.images import expand_image_paths, load_images
from vggt_attn_rerun.core.introspect import find_aggregator, model_layout
from vggt_attn_rerun.core.qk_cache import model_qk_cache_bytes, qk_cache_bytes_per_frame
from vggt_attn_rerun.core.rows import AttentionRows
from vggt_attn_rerun.core.tokens import Query, TokenLayout
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.legacy.full import capture_full, full_matrix_bytes
from vggt_attn_rerun.testing import tiny_vggt
from vggt_attn_rerun.testing.recompute import recompute_attention

from .recorder import AttentionRecorder as _Recorder


def _queries(layout: TokenLayout) -> list[Query]:
    return [
        Query.from_patch(layout, 0, 1, 2),
        Query.from_patch(layout, 2, 3, 5),
        Query.from_special(layout, 1, "camera"),
        Query.from_special(layout, 0, "register_3"),
    ]


def _full_rows(rows: AttentionRows, kind: str, block: int) -> torch.Tensor:
    return rows.probs[kind][rows.block_index(block)]  # [Q, H, S, P]


@pytest.mark.parametrize("kind", ["frame", "global"])
@pytest.mark.parametrize("block", [0, 3])
def test_rows_equal_an_explicit_full_softmax_with_rope(tiny_model, scene_images, kind, block):
    rec = _Recorder(tiny_model, kind, block)
    try:
        res = capture(tiny_model, scene_images, _queries, blocks=[block], kinds=[kind])
    finally:
        rec.remove()
    full = rec.explicit_attention()  # frame [S, H, P, P], global [1, H, N, N]
    lay = res.layout
    got = _full_rows(res.rows, kind, block)
    assert res.rows.queries == tuple(_queries(lay))
    for i, q in enumerate(res.rows.queries):
        if kind == "global":
            want = full[0, :, q.token(lay)].reshape(-1, lay.num_frames, lay.tokens_per_frame)
            torch.testing.assert_close(got[i], want, atol=1e-6, rtol=0)
        else:
            torch.testing.assert_close(got[i, :, q.frame], full[q.frame, :, q.local], atol=1e-6, rtol=0)
            others = [f for f in range(lay.num_frames) if f != q.frame]
            assert got[i][:, others].abs().max() == 0


@pytest.mark.parametrize("kind", ["frame", "global"])
def test_rows_times_v_through_proj_rebuild_the_module_output(tiny_model, scene_images, kind):
    block = 2
    rec = _Recorder(tiny_model, kind, block)
    try:
        res = capture(tiny_model, scene_images, _queries, blocks=[block], kinds=[kind])
    finally:
        rec.remove()
    v = rec.values()  # [B', H, N, D]
    lay, a = res.layout, rec.attn
    rows = _full_rows(res.rows, kind, block)
    assert res.rows.queries == tuple(_queries(lay))
    for i, q in enumerate(res.rows.queries):
        if kind == "global":
            weights, vv, out = rows[i].reshape(a.num_heads, -1), v[0], rec.out[0, q.token(lay)]
        else:
            weights, vv, out = rows[i, :, q.frame], v[q.frame], rec.out[q.frame, q.local]
        heads = torch.einsum("hn,hnd->hd", weights, vv)  # [H, D]
        rebuilt = a.proj(heads.reshape(-1))
        torch.testing.assert_close(rebuilt, out, atol=1e-5, rtol=1e-5)


def test_rope_matters_so_the_test_above_could_fail(tiny_model, scene_images):
    """Dropping RoPE (what a hook that misses the keyword ``pos`` does) changes the rows beyond the tolerance."""
    res = capture(tiny_model, scene_images, _queries, blocks=[1], kinds=["global"])
    rec = _Recorder(tiny_model, "global", 1)
    rope = rec.attn.rope
    try:
        with torch.no_grad():
            tiny_model(scene_images)
    finally:
        rec.remove()
    a = rec.attn
    no_rope, _ = recompute_attention(a, rec.x, pos=None)  # no position: no RoPE
    tok = res.rows.queries[0].token(res.layout)
    assert rope is not None
    assert (no_rope[0, :, tok] - res.rows.probs["global"][0, 0].reshape(a.num_heads, -1)).abs().max() > 1e-3


def test_rows_are_raw_probabilities_summing_to_one(tiny_model, scene_images):
    res = capture(tiny_model, scene_images, _queries)
    for kind in ("frame", "global"):
        sums = res.rows.probs[kind].sum(dim=(-1, -2))
        torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-5, rtol=0)
        assert res.rows.special(kind).sum() > 0  # mass on special tokens is kept, not renormalized away


def test_patch_and_special_views_partition_each_row(tiny_model, scene_images):
    rows = capture(tiny_model, scene_images, _queries, blocks=[0]).rows
    lay = rows.layout
    assert rows.patches("global").shape == (1, 4, 4, lay.num_frames, lay.grid_h, lay.grid_w)
    assert rows.special("global").shape == (1, 4, 4, lay.num_frames, lay.patch_start)
    total = rows.patches("global").sum((-1, -2)) + rows.special("global").sum(-1)
    torch.testing.assert_close(total, rows.frame_mass("global"))
    renorm = rows.patches("global", renorm=True).sum((-1, -2, -3))
    torch.testing.assert_close(renorm, torch.ones_like(renorm), atol=1e-5, rtol=0)  # over all views


def test_predictions_are_identical_with_and_without_capture(tiny_model, scene_images):
    with torch.no_grad():
        plain = tiny_model(scene_images)
    res = capture(tiny_model, scene_images, _queries)
    for key in ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf"):
        assert torch.equal(plain[key], res.predictions[key]), key


def test_hooks_are_removed_after_capture_and_after_a_failing_forward(scene_images):
    model = tiny_vggt(seed=3)
    capture(model, scene_images, _queries)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())

    def boom(module, args, output):
        raise KeyboardInterrupt  # what a user's Ctrl-C mid-forward looks like

    handle = model.aggregator.global_blocks[1].register_forward_hook(boom)
    with pytest.raises(KeyboardInterrupt):
        capture(model, scene_images, _queries)
    handle.remove()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_a_folder_of_photos_is_captured_as_its_loaded_images_with_pixels_of_the_photos(tiny_model, scene):
    loaded = load_images(expand_image_paths([scene]))
    from_folder = capture(tiny_model, scene, ["0:20,30"], blocks=[1])
    from_loaded = capture(tiny_model, loaded, ["0:20,30"], blocks=[1])
    assert from_folder.rows.queries == from_loaded.rows.queries
    torch.testing.assert_close(from_folder.rows.probs["global"], from_loaded.rows.probs["global"], rtol=0, atol=0)


def test_a_block_that_cannot_be_hooked_fails_clearly_and_leaves_no_hook_behind(scene_images):
    model = tiny_vggt(seed=3)
    model.aggregator.global_blocks[2].attn.q_norm = None  # blocks before it are hooked first
    with pytest.raises(UserError, match="global block 2: .* has no q_norm module"):
        capture(model, scene_images, _queries)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_fused_and_explicit_attention_paths_give_the_same_rows(scene_images):
    model = tiny_vggt(seed=0)
    fused = capture(model, scene_images, _queries).rows
    switched = [m for m in model.modules() if hasattr(m, "fused_attn")]
    assert len(switched) == 2 * 4 and all(m.fused_attn for m in switched)  # frame + global blocks
    for m in switched:
        m.fused_attn = False
    explicit = capture(model, scene_images, _queries).rows
    for kind in ("frame", "global"):
        torch.testing.assert_close(fused.probs[kind], explicit.probs[kind], atol=1e-6, rtol=0)


def test_capture_under_bf16_autocast_computes_rows_in_fp32(tiny_model, scene_images):
    ref = capture(tiny_model, scene_images, _queries).rows
    res = capture(tiny_model, scene_images, _queries, autocast_dtype=torch.bfloat16).rows
    for kind in ("frame", "global"):
        p = res.probs[kind]
        assert p.dtype == torch.float32
        torch.testing.assert_close(p.sum((-1, -2)), torch.ones(p.shape[:3]), atol=1e-5, rtol=0)
        # bf16 activations move the rows a little, not a lot
        assert (p - ref.probs[kind]).abs().max() < 0.1


def test_bf16_model_weights_are_supported(scene_images):
    model = tiny_vggt(seed=0).to(torch.bfloat16)
    res = capture(model, scene_images.to(torch.bfloat16), _queries, blocks=[0])
    p = res.rows.probs["global"]
    torch.testing.assert_close(p.sum((-1, -2)), torch.ones(p.shape[:3]), atol=1e-5, rtol=0)


def test_only_the_chosen_blocks_and_kinds_are_captured(tiny_model, scene_images):
    rows = capture(tiny_model, scene_images, _queries, blocks=[3, 1], kinds=["global"]).rows
    assert rows.blocks == (1, 3)
    assert rows.kinds == ("global",)
    with pytest.raises(UserError, match="captured kinds are"):
        rows.patches("frame")
    with pytest.raises(UserError, match="captured blocks are"):
        rows.get("global", 0)


def test_bad_blocks_kinds_and_queries_are_clear_errors(tiny_model, scene_images):
    with pytest.raises(UserError, match=r"valid blocks are 0\.\.3"):
        capture(tiny_model, scene_images, _queries, blocks=[4])
    with pytest.raises(UserError, match="valid kinds are frame, global"):
        capture(tiny_model, scene_images, _queries, kinds=["cross"])
    with pytest.raises(UserError, match=r"valid frames are 0\.\.2"):
        capture(tiny_model, scene_images, [Query(3, 5)])
    with pytest.raises(UserError, match="no queries"):
        capture(tiny_model, scene_images, [])


def test_capture_never_builds_a_full_global_matrix(tiny_model, scene_images, monkeypatch):
    """The largest softmax input is [H, Q, N], never [.., N, N]."""
    lay = model_layout(tiny_model, 3, 56, 84)
    seen = []
    orig = torch.Tensor.softmax

    def spy(self, *a, **k):
        seen.append(tuple(self.shape))
        return orig(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "softmax", spy)
    capture(tiny_model, scene_images, _queries, kinds=["global"])
    assert seen and all(s[-2] == 4 and s[-1] == lay.num_tokens for s in seen)


def test_full_matrices_match_rows_and_respect_the_budget(tiny_model, scene_images):
    res = capture(tiny_model, scene_images, _queries, blocks=[2])
    _, maps, lay = capture_full(tiny_model, scene_images, blocks=[2])
    assert maps[("global", 2)].shape == (1, 4, lay.num_tokens, lay.num_tokens)
    assert maps[("frame", 2)].shape == (lay.num_frames, 4, lay.tokens_per_frame, lay.tokens_per_frame)
    assert res.rows.queries == tuple(_queries(lay))
    for i, q in enumerate(res.rows.queries):
        g = maps[("global", 2)][0, :, q.token(lay)].reshape(4, lay.num_frames, -1)
        torch.testing.assert_close(res.rows.probs["global"][0, i], g, atol=1e-6, rtol=0)
        torch.testing.assert_close(res.rows.probs["frame"][0, i, :, q.frame], maps[("frame", 2)][q.frame, :, q.local])
    need = full_matrix_bytes(lay, 4, ["frame", "global"])
    with pytest.raises(UserError, match="capture rows of chosen queries instead"):
        capture_full(tiny_model, scene_images, blocks=[2], budget_bytes=need - 1)


def test_rows_of_a_new_query_from_the_qk_cache_equal_a_fresh_capture(tiny_model, scene_images):
    first = capture(tiny_model, scene_images, _queries, keep_qk=True)
    later = [Query.from_patch(first.layout, 1, 0, 4), Query.from_special(first.layout, 2, "register_1")]
    from_cache = first.qk_cache.rows(first.layout, later, first.rows.num_heads)
    fresh = capture(tiny_model, scene_images, later).rows
    assert from_cache.blocks == fresh.blocks
    for kind in ("frame", "global"):
        assert torch.equal(from_cache.probs[kind], fresh.probs[kind])
    lay = first.layout
    assert first.qk_cache.nbytes() == 2 * 2 * 4 * lay.num_tokens * 64 * 4  # kinds x blocks x (q, k) x N x C x fp32


def test_qk_cache_memory_formula_matches_the_cache_kept(tiny_model, scene_images):
    run = capture(tiny_model, scene_images, _queries, keep_qk=True)
    per_frame = qk_cache_bytes_per_frame(run.layout, embed_dim=64, num_blocks=4, num_kinds=2)
    assert per_frame * run.layout.num_frames == run.qk_cache.nbytes() > 0
    assert model_qk_cache_bytes(tiny_model, run.layout, 4, 2) == run.qk_cache.nbytes()
    vggt = qk_cache_bytes_per_frame(TokenLayout(1, 37, 37), embed_dim=1024, num_blocks=24)
    assert vggt == 2 * 1374 * 1024 * 4 * 48 and round(vggt / 1e6) == 540


def test_the_explicit_recomputation_reads_a_boolean_mask_as_where_attention_may_go(tiny_model):
    attn = find_aggregator(tiny_model).global_blocks[0].attn
    x = torch.randn(1, 6, attn.qkv.in_features)
    allowed = torch.tril(torch.ones(6, 6, dtype=torch.bool))  # token i sees tokens 0..i
    additive = torch.zeros(6, 6).masked_fill(~allowed, -torch.inf)
    by_bool, _ = recompute_attention(attn, x, mask=allowed)
    by_add, _ = recompute_attention(attn, x, mask=additive)
    torch.testing.assert_close(by_bool, by_add)
    assert by_bool[0, :, 0, 1:].abs().max() == 0 and by_bool[0, :, -1, :].min() > 0


def test_vggts_deprecated_cuda_amp_warning_is_not_shown(scene_images):
    # vggt's heads call torch.cuda.amp.autocast(enabled=False) on every device: noise on a CPU.
    model = tiny_vggt()
    forward = model.forward

    def warning_forward(*args, **kwargs):
        warnings.warn(
            "`torch.cuda.amp.autocast(args...)` is deprecated. Please use `torch.amp.autocast('cuda', args...)` "
            "instead.",
            FutureWarning,
            stacklevel=2,
        )
        warnings.warn("any other warning", FutureWarning, stacklevel=2)
        return forward(*args, **kwargs)

    model.forward = warning_forward
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        capture(model, scene_images, ["0:p1,1"], blocks=[0])
    assert [str(w.message) for w in caught] == ["any other warning"]
