"""Adapters are exact on the real packages (random weights, small sizes), where installed.

Each test skips when its package is not importable (CI installs none of them). The models are
the packages' own classes; only their sizes are shrunk (through their constructor arguments, or
by swapping the constructors of their large sub-networks, never their attention code).
"""

import functools
import importlib.util
import sys
import types

import pytest
import torch
from torch import nn

from vggt_attn_rerun.core.adapters import adapter_for
from vggt_attn_rerun.core.capture import capture
from vggt_attn_rerun.core.introspect import model_depth
from vggt_attn_rerun.core.tokens import Query
from vggt_attn_rerun.testing import synthetic_scene

from .adapter_check import ModuleRecorder, check_rows_and_output


def _needs(module: str):
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    return pytest.mark.skipif(not found, reason=f"{module} is not installed")


def _images(s: int, patch: int) -> torch.Tensor:
    return torch.from_numpy(synthetic_scene(s, 4 * patch, 6 * patch, seed=2)).permute(0, 3, 1, 2).float() / 255


def _queries(lay):
    special = "camera" if lay.num_cameras else "register_0"
    return [Query.from_patch(lay, 0, 2, 3), Query.from_patch(lay, 1, 0, 5), Query.from_special(lay, 1, special)]


def _check_all_blocks(model, images, arch, blocks):
    adapter = adapter_for(model)
    assert adapter.name == arch
    recs = [ModuleRecorder(adapter, model, k, b) for k in ("frame", "global") for b in blocks]
    try:
        with torch.no_grad():
            res = capture(model, images, _queries, blocks=blocks)
    finally:
        for r in recs:
            r.remove()
    assert sum(check_rows_and_output(rec, res) for rec in recs) >= len(recs)
    return res


@_needs("pi3.models.pi3")
def test_pi3_rows_are_exact(monkeypatch):
    import pi3.models.pi3 as pi3_module
    from pi3.models.dinov2.hub.backbones import _make_dinov2_model
    from pi3.models.layers.transformer_head import TransformerDecoder

    # Pi3 hard-wires a ViT-L encoder and 1024-wide head decoders: build small ones instead.
    small_encoder = functools.partial(_make_dinov2_model, arch_name="vit_small", num_register_tokens=4)
    monkeypatch.setattr(pi3_module, "dinov2_vitl14_reg", small_encoder)
    monkeypatch.setattr(
        pi3_module,
        "TransformerDecoder",
        functools.partial(TransformerDecoder, dec_embed_dim=64, dec_num_heads=4, depth=1),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = pi3_module.Pi3(decoder_size="small").eval()
    assert model_depth(model) == 12
    res = _check_all_blocks(model, _images(2, 14)[None], "pi3", [0, 11])
    assert res.layout.patch_start == 5 and res.predictions["points"].shape == (1, 2, 56, 84, 3)


@_needs("vggt_omega.models.vggt_omega")
def test_vggt_omega_rows_are_exact():
    from vggt_omega.models.vggt_omega import VGGTOmega

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = VGGTOmega(embed_dim=64, enable_depth=False).eval()
    # Two tensors of the blocks only get values from the checkpoint: the k-bias masks (NaN until
    # loaded; set as the package's own DINOv3 init does: 1 for q and v, 0 for k) and the layer
    # scales (torch.empty, garbage until loaded).
    with torch.no_grad():
        for module in model.modules():
            if isinstance(getattr(module, "bias_mask", None), torch.Tensor):
                third = module.bias_mask.numel() // 3
                module.bias_mask.fill_(1)
                module.bias_mask[third : 2 * third] = 0
            if isinstance(getattr(module, "gamma", None), nn.Parameter):
                module.gamma.fill_(0.1)
    types = model.aggregator.inter_frame_attention_types
    register_block = types.index("register")
    res = _check_all_blocks(model, _images(2, 16), "vggt-omega", [0, register_block])
    assert res.rows.probs["global"][1, :2].abs().max() == 0  # patch queries skip the register block


@_needs("streamvggt.models.aggregator")
def test_streamvggt_rows_are_exact_and_causal(monkeypatch):
    if importlib.util.find_spec("transformers") is None:
        # StreamVGGT's model module takes only an output base class from transformers.
        file_utils = types.ModuleType("transformers.file_utils")
        file_utils.ModelOutput = type("ModelOutput", (), {})
        monkeypatch.setitem(sys.modules, "transformers", types.ModuleType("transformers"))
        monkeypatch.setitem(sys.modules, "transformers.file_utils", file_utils)
    import streamvggt.models.streamvggt as streamvggt_module
    from streamvggt.heads.dpt_head import DPTHead
    from streamvggt.models.aggregator import Aggregator

    # The model hard-wires a ViT-L patch embedding, 24 blocks and 256-wide DPT heads on layers 4..23.
    small_aggregator = functools.partial(Aggregator, depth=2, num_heads=4, patch_embed="conv")
    small_dpt = functools.partial(DPTHead, features=32, out_channels=[32] * 4, intermediate_layer_idx=[0, 1, 0, 1])
    monkeypatch.setattr(streamvggt_module, "Aggregator", small_aggregator)
    monkeypatch.setattr(streamvggt_module, "DPTHead", small_dpt)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = streamvggt_module.StreamVGGT(img_size=84, embed_dim=64).eval()
    images = _images(3, 14)
    res = _check_all_blocks(model, images, "streamvggt", [0, 1])
    p = res.rows.probs["global"]
    assert p[:, 0, :, 1:].abs().max() == 0 and p[:, 1, :, 2].abs().max() == 0  # later frames masked
    with torch.no_grad():  # its per-view results, rebuilt into VGGT's keys
        ress = model([{"img": images[None, s]} for s in range(3)]).ress
    torch.testing.assert_close(res.predictions["pose_enc"][0, 2], ress[2]["camera_pose"][0])
    torch.testing.assert_close(res.predictions["world_points"][0, 1], ress[1]["pts3d_in_other_view"][0])
