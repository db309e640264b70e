"""Capture on the real `vggt` package (runs whenever vggt is importable, skips otherwise)."""

import pytest
import torch

from vggt_attn_rerun.core.capture import capture
from vggt_attn_rerun.core.tokens import Query

from .recorder import AttentionRecorder

vggt_aggregator = pytest.importorskip("vggt.models.aggregator", reason="the vggt package is not installed")


@pytest.fixture(scope="module")
def small_aggregator():
    torch.manual_seed(0)
    agg = vggt_aggregator.Aggregator(img_size=56, patch_size=14, embed_dim=64, depth=2, num_heads=4, patch_embed="conv")
    with torch.no_grad():  # vggt initialises special tokens at 1e-6; make them matter
        agg.camera_token.normal_()
        agg.register_token.normal_()
    return agg.eval()


def _queries(layout):
    return [Query.from_patch(layout, 1, 2, 3), Query.from_special(layout, 0, "camera")]


@pytest.mark.parametrize("kind", ["frame", "global"])
def test_rows_on_vggt_aggregator_equal_explicit_softmax_and_rebuild_the_output(small_aggregator, scene_images, kind):
    rec = AttentionRecorder(small_aggregator, kind, 1)
    try:
        res = capture(small_aggregator, scene_images, _queries, blocks=[1], kinds=[kind])
    finally:
        rec.remove()
    full, v, lay, a = rec.explicit_attention(), rec.values(), res.layout, rec.attn
    got = res.rows.probs[kind][0]
    assert len(res.rows.queries) == got.shape[0] > 0
    for i, q in enumerate(res.rows.queries):
        if kind == "global":
            want, vv, out = full[0, :, q.token(lay)], v[0], rec.out[0, q.token(lay)]
            weights = got[i].reshape(a.num_heads, -1)
        else:
            want, vv, out = full[q.frame, :, q.local], v[q.frame], rec.out[q.frame, q.local]
            weights = got[i, :, q.frame]
        torch.testing.assert_close(weights, want, atol=1e-6, rtol=0)
        torch.testing.assert_close(
            a.proj(torch.einsum("hn,hnd->hd", weights, vv).reshape(-1)), out, atol=1e-5, rtol=1e-5
        )


def test_vggt_outputs_are_unchanged_by_capture(small_aggregator, scene_images):
    with torch.no_grad():
        plain, _ = small_aggregator(scene_images[None])
    seen = {}
    h = small_aggregator.register_forward_hook(lambda m, a, o: seen.setdefault("out", o[0]))
    try:
        capture(small_aggregator, scene_images, _queries)
    finally:
        h.remove()
    for a, b in zip(plain, seen["out"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


def test_dinov2_patch_embed_attention_is_not_mistaken_for_aggregator_attention(scene_images):
    torch.manual_seed(0)
    agg = vggt_aggregator.Aggregator(img_size=56, patch_size=14, embed_dim=384, depth=1, num_heads=6,
                                     patch_embed="dinov2_vits14_reg").eval()  # fmt: skip
    res = capture(agg, scene_images, _queries)
    p = res.rows.probs["global"]
    torch.testing.assert_close(p.sum((-1, -2)), torch.ones(p.shape[:3]), atol=1e-5, rtol=0)
