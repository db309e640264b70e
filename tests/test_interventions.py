"""Interventions (core.interventions) against an independent recomputation on every tiny model.

The reference is a plain attention forward written here from each module's weights (qkv, q/k
norms, RoPE, explicit softmax with the model's mask, proj), with the intervention done inline;
it replaces the forward of the one module the intervention touches.
"""

from __future__ import annotations

import types

import pytest
import torch

from vggt_attn_rerun.core.adapters import adapter_for
from vggt_attn_rerun.core.interventions import (
    BlockAblation,
    CrossViewKnockout,
    HeadAblation,
    check_interventions,
    intervene,
)
from vggt_attn_rerun.core.introspect import model_layout
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.testing import tiny_vggt
from vggt_attn_rerun.testing.tiny_pi3 import tiny_pi3
from vggt_attn_rerun.testing.tiny_streamvggt import tiny_streamvggt
from vggt_attn_rerun.testing.tiny_vggt_omega import tiny_vggt_omega

MODELS = {
    "vggt": (tiny_vggt, 28),
    "pi3": (tiny_pi3, 28),
    "streamvggt": (tiny_streamvggt, 28),
    "vggt-omega": (tiny_vggt_omega, 32),
}


def _setup(name: str, frames: int = 2):
    make, size = MODELS[name]
    model = make(seed=1)
    adapter = adapter_for(model)
    images = torch.rand(
        1,
        frames,
        3,
        size,
        size + size // 2 if name != "vggt-omega" else size,
        generator=torch.Generator().manual_seed(3),
    )
    layout = model_layout(model, frames, images.shape[3], images.shape[4])
    return model, adapter, images, layout


def _outputs(adapter, model, images) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = adapter.run(model, images)
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor) and k != "images"}


def _reference_forward(attn, adapter, layout, head=None, head_ablation="zero", block_ablation=None, knockout=None):
    """An attention forward from the module's weights with the intervention done inline."""

    def forward(self, x, *args, **kwargs):
        b, n, c = x.shape
        h = self.num_heads
        d = c // h
        qkv = self.qkv(x).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        pos = kwargs.get(adapter.pos_kwarg, args[0] if args else None)
        if isinstance(getattr(self, "rope", None), torch.nn.Module):
            q, k = self.rope(q, pos), self.rope(k, pos)
        elif pos is not None:
            q, k = self.apply_rope(q, k, pos)
        logits = (q * self.scale) @ k.transpose(-2, -1)
        mask = kwargs.get("attn_mask")
        if mask is not None:
            logits = logits + mask
        if knockout is not None:
            per = layout.tokens_per_frame
            frame = torch.arange(n) // per
            rows = [
                t
                for t in range(n)
                if (t % per >= layout.patch_start if knockout.tokens is None else t in knockout.tokens)
            ]
            for r in rows:
                logits[:, :, r, frame != frame[r]] = float("-inf")
        out = logits.softmax(-1) @ v  # [B, H, N, D]
        if head is not None:
            out = out.clone()
            out[:, head] = 0 if head_ablation == "zero" else out[:, head].mean(dim=1, keepdim=True)
        out = self.proj(out.transpose(1, 2).reshape(b, n, c))
        if block_ablation is not None:
            out = torch.zeros_like(out) if block_ablation == "zero" else out.mean(dim=1, keepdim=True).expand_as(out)
        return out

    return types.MethodType(forward, attn)


def _reference(name, kind, block, **what):
    model, adapter, images, layout = _setup(name)
    attn = adapter.attention(model, kind, block)
    attn.forward = _reference_forward(attn, adapter, layout, **what)
    return _outputs(adapter, model, images)


def _assert_close(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=key)


def _ablated(name, interventions):
    model, adapter, images, layout = _setup(name)
    with intervene(model, interventions, layout):
        return _outputs(adapter, model, images)


@pytest.mark.parametrize("name", list(MODELS))
def test_no_intervention_is_bit_identical(name):
    model, adapter, images, layout = _setup(name)
    plain = _outputs(adapter, model, images)
    with intervene(model, [], layout):
        inside = _outputs(adapter, model, images)
    for key in plain:
        assert torch.equal(plain[key], inside[key]), key


@pytest.mark.parametrize("name", list(MODELS))
def test_reference_forward_without_intervention_matches_the_model(name):
    model, adapter, images, layout = _setup(name)
    _assert_close(_reference(name, "global", 0), _outputs(adapter, model, images))


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("ablation", ["zero", "mean"])
@pytest.mark.parametrize("kind", ["frame", "global"])
def test_head_ablation_equals_recomputation(name, ablation, kind):
    got = _ablated(name, [HeadAblation(kind, 1, 2, ablation)])
    want = _reference(name, kind, 1, head=2, head_ablation=ablation)
    _assert_close(got, want)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_block_ablation_equals_recomputation(name, ablation):
    got = _ablated(name, [BlockAblation("frame", 0, ablation)])
    _assert_close(got, _reference(name, "frame", 0, block_ablation=ablation))


@pytest.mark.parametrize("name", ["vggt", "pi3", "streamvggt", "vggt-omega"])
def test_cross_view_knockout_of_patch_tokens_equals_recomputation(name):
    ko = CrossViewKnockout(0)  # block 0 is a full global block in every tiny model
    _assert_close(_ablated(name, [ko]), _reference(name, "global", 0, knockout=ko))


@pytest.mark.parametrize("name", list(MODELS))
def test_cross_view_knockout_of_one_query_equals_recomputation(name):
    _, _, _, layout = _setup(name)
    token = layout.tokens_per_frame + layout.patch_start + 1  # a patch of frame 1
    ko = CrossViewKnockout(0, tokens=(token,))
    _assert_close(_ablated(name, [ko]), _reference(name, "global", 0, knockout=ko))


def test_zero_head_ablation_equals_zeroed_projection_columns():
    model, adapter, images, layout = _setup("vggt")
    with intervene(model, [HeadAblation("global", 2, 1)], layout):
        got = _outputs(adapter, model, images)
    attn = adapter.attention(model, "global", 2)
    d = attn.head_dim
    with torch.no_grad():
        attn.proj.weight[:, d : 2 * d] = 0
    _assert_close(got, _outputs(adapter, model, images))


def test_knockout_changes_nothing_in_a_register_only_block():
    model, adapter, images, layout = _setup("vggt-omega")
    plain = _outputs(adapter, model, images)
    with intervene(model, [CrossViewKnockout(1)], layout):  # tiny VGGT-Omega's block 1: registers only
        knocked = _outputs(adapter, model, images)
    _assert_close(knocked, plain)


def test_interventions_on_batch_items_equal_separate_forwards():
    model, adapter, images, layout = _setup("vggt")
    ivs = [HeadAblation("frame", 1, 0, "mean"), BlockAblation("global", 2), CrossViewKnockout(1)]
    with intervene(model, [type(iv)(**{**_fields(iv), "item": i}) for i, iv in enumerate(ivs)], layout):
        batched = _outputs(adapter, model, images.expand(3, -1, -1, -1, -1).contiguous())
    for i, iv in enumerate(ivs):
        with intervene(model, [iv], layout):
            one = _outputs(adapter, model, images)
        for key in ("depth", "world_points", "pose_enc"):
            torch.testing.assert_close(batched[key][i : i + 1], one[key], rtol=1e-4, atol=1e-5)


def _fields(iv) -> dict:
    return {k: getattr(iv, k) for k in iv.__dataclass_fields__ if iv.__dataclass_fields__[k].init}


def test_hooks_are_removed_after_the_context():
    model, adapter, images, layout = _setup("streamvggt")
    plain = _outputs(adapter, model, images)
    with intervene(model, [CrossViewKnockout(0), HeadAblation("frame", 0, 0)], layout):
        _outputs(adapter, model, images)
    after = _outputs(adapter, model, images)
    for key in plain:
        assert torch.equal(plain[key], after[key]), key


@pytest.mark.parametrize(
    ("iv", "words"),
    [
        (HeadAblation("frame", 9, 0), "block 9 does not exist"),
        (HeadAblation("global", 0, 7), "head 7 does not exist"),
        (HeadAblation("side", 0, 0), "unknown attention kind"),
        (BlockAblation("frame", 0, "noise"), "unknown ablation 'noise'"),
        (CrossViewKnockout(0, tokens=(10**6,)), "does not exist"),
    ],
)
def test_an_intervention_that_cannot_be_applied_is_refused_before_the_forward(iv, words):
    model, _, _, layout = _setup("vggt")
    with pytest.raises(UserError, match=words):
        check_interventions(model, [iv], layout)


def test_a_head_ablation_without_proj_is_refused():
    model, adapter, _, layout = _setup("vggt")
    del adapter.attention(model, "frame", 0)._modules["proj"]
    with pytest.raises(UserError, match="has no .proj"):
        check_interventions(model, [HeadAblation("frame", 0, 0)], layout)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize(
    "iv",
    [HeadAblation("global", 0, 1), BlockAblation("frame", 1, "mean"), CrossViewKnockout(0)],
    ids=lambda iv: iv.label,
)
def test_each_intervention_changes_the_prediction(name, iv):
    model, adapter, images, _ = _setup(name)
    plain = _outputs(adapter, model, images)
    ablated = _ablated(name, [iv])
    assert (ablated["pose_enc"] - plain["pose_enc"]).abs().max() > 1e-6
