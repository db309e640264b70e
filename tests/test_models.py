"""core.loading: every kind of model spec, and a key check stricter than VGGT.from_pretrained."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from vggt_attn_rerun.core.introspect import find_aggregator
from vggt_attn_rerun.core.loading import VGGT_COMMIT, load_model, vggt_install_command
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.testing import tiny_vggt

IMAGES = torch.rand(2, 3, 28, 42, generator=torch.Generator().manual_seed(0))


class _Thing:  # a pickled object that weights_only loading must refuse
    pass


def _outputs_equal(a: nn.Module, b: nn.Module) -> bool:
    with torch.no_grad():
        out_a, out_b = a(IMAGES), b(IMAGES)
    return all(torch.equal(out_a[k], out_b[k]) for k in ("pose_enc", "depth", "world_points"))


def _tiny_state(seed: int = 1) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in tiny_vggt(seed).state_dict().items()}


def _save_safetensors(path: Path, sd: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    save_file(sd, str(path))
    return path


@pytest.fixture
def no_vggt(monkeypatch):
    """Make ``import vggt`` fail as it does where vggt is not installed."""
    for name in [n for n in sys.modules if n == "vggt" or n.startswith("vggt.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "vggt", None)


# -- built-in specs ---------------------------------------------------------------------------------
def test_tiny_loads_in_eval_mode():
    model = load_model("tiny")
    assert isinstance(model, nn.Module) and not model.training
    assert _outputs_equal(model, tiny_vggt())


def test_dtype_is_applied():
    model = load_model("tiny", dtype=torch.float64)
    params = list(model.parameters())
    assert params and all(p.dtype == torch.float64 for p in params)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_refused():
    with pytest.raises(UserError, match="cannot move the model to cuda"):
        load_model("tiny", device="cuda")


def test_random_is_seeded_and_leaves_the_global_rng_alone():
    before = torch.random.get_rng_state()
    a, b = load_model("random", arch="tiny"), load_model("random", arch="tiny")
    assert torch.equal(torch.random.get_rng_state(), before)
    assert _outputs_equal(a, b)


def test_unknown_spec_is_refused():
    with pytest.raises(UserError, match="unknown model 'not a model'"):
        load_model("not a model")


def test_unknown_arch_is_refused():
    with pytest.raises(UserError, match="vggt, tiny"):
        load_model("tiny", arch="resnet")


def test_missing_checkpoint_file_is_refused(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_model(str(tmp_path / "nope.pt"), arch="tiny")


# -- checkpoint files -----------------------------------------------------------------------------
def test_safetensors_round_trip(tmp_path):
    path = _save_safetensors(tmp_path / "w.safetensors", _tiny_state())
    assert _outputs_equal(load_model(str(path), arch="tiny"), tiny_vggt(1))


def test_pt_round_trip(tmp_path):
    torch.save(_tiny_state(), tmp_path / "w.pt")
    assert _outputs_equal(load_model(str(tmp_path / "w.pt"), arch="tiny"), tiny_vggt(1))


def test_training_checkpoint_is_unwrapped(tmp_path):
    torch.save({"model": _tiny_state(), "epoch": 3}, tmp_path / "ckpt.pth")
    assert _outputs_equal(load_model(str(tmp_path / "ckpt.pth"), arch="tiny"), tiny_vggt(1))


def test_directory_with_config(tmp_path):
    small = tiny_vggt(2, embed_dim=32, depth=2)
    _save_safetensors(tmp_path / "model.safetensors", dict(small.state_dict()))
    (tmp_path / "config.json").write_text(json.dumps({"embed_dim": 32, "depth": 2, "not_an_arg": 1}))
    assert _outputs_equal(load_model(str(tmp_path), arch="tiny"), small)


def test_directory_without_weights_is_refused(tmp_path):
    with pytest.raises(UserError, match="has no weights"):
        load_model(str(tmp_path), arch="tiny")


def test_missing_key_is_refused_with_count(tmp_path):
    sd = _tiny_state()
    del sd["aggregator.camera_token"]
    torch.save(sd, tmp_path / "w.pt")
    with pytest.raises(UserError, match=r"1 missing key \(aggregator.camera_token\)"):
        load_model(str(tmp_path / "w.pt"), arch="tiny")


def test_unexpected_keys_are_refused_with_count(tmp_path):
    sd = _tiny_state()
    sd["extra.a"], sd["extra.b"] = torch.zeros(1), torch.zeros(1)
    torch.save(sd, tmp_path / "w.pt")
    with pytest.raises(UserError, match=r"2 unexpected keys \(extra.a, extra.b\)"):
        load_model(str(tmp_path / "w.pt"), arch="tiny")


def test_non_strict_warns_instead(tmp_path):
    sd = _tiny_state()
    del sd["aggregator.camera_token"]
    torch.save(sd, tmp_path / "w.pt")
    with pytest.warns(UserWarning, match="1 missing key"):
        model = load_model(str(tmp_path / "w.pt"), arch="tiny", strict=False)
    assert torch.equal(
        model.aggregator.frame_blocks[0].attn.qkv.weight, sd["aggregator.frame_blocks.0.attn.qkv.weight"]
    )


def test_wrong_shape_is_refused(tmp_path):
    torch.save(dict(tiny_vggt(embed_dim=32).state_dict()), tmp_path / "w.pt")
    with pytest.raises(UserError, match="another shape"):
        load_model(str(tmp_path / "w.pt"), arch="tiny")


def test_pickled_object_is_refused(tmp_path):
    torch.save({"w": torch.zeros(1), "obj": _Thing()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="evil.pt is not a checkpoint.*weights_only"):
        load_model(str(tmp_path / "evil.pt"), arch="tiny")


@pytest.mark.parametrize("name", ["notes.pt", "notes.safetensors"])
def test_text_file_is_not_a_checkpoint(tmp_path, name):
    (tmp_path / name).write_text("hello")
    with pytest.raises(UserError, match="not a checkpoint"):
        load_model(str(tmp_path / name), arch="tiny")


def test_dict_of_non_tensors_is_not_a_checkpoint(tmp_path):
    torch.save({"weights": [1, 2, 3]}, tmp_path / "list.pt")
    with pytest.raises(UserError, match="not a checkpoint.*'weights' is a list"):
        load_model(str(tmp_path / "list.pt"), arch="tiny")


# -- module:callable -------------------------------------------------------------------------------
@pytest.fixture
def builders(tmp_path, monkeypatch):
    (tmp_path / "my_builders.py").write_text(
        "from vggt_attn_rerun.testing import tiny_vggt\n\n"
        "def build():\n    return tiny_vggt(3)\n\n"
        "def not_a_model():\n    return 42\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_builders"
    sys.modules.pop("my_builders", None)


def test_module_callable(builders):
    assert _outputs_equal(load_model(f"{builders}:build"), tiny_vggt(3))


def test_package_callable():
    assert _outputs_equal(load_model("vggt_attn_rerun.testing:tiny_vggt"), tiny_vggt())


def test_callable_returning_a_non_module_is_refused(builders):
    with pytest.raises(UserError, match="returned a int"):
        load_model(f"{builders}:not_a_model")


def test_callable_in_a_missing_module_is_refused():
    with pytest.raises(UserError, match="cannot import module 'no_such_module_xyz'"):
        load_model("no_such_module_xyz:build")


def test_missing_callable_is_refused(builders):
    with pytest.raises(UserError, match="has no attribute 'nothing'"):
        load_model(f"{builders}:nothing")


# -- the hub and vggt -----------------------------------------------------------------------------
def test_offline_hub_download_names_the_local_alternative(tmp_path, monkeypatch):
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads its environment once, at import: patch the values it already read
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="could not be downloaded.*--model PATH"):
        load_model("facebook/VGGT-1B", arch="tiny")


def test_missing_vggt_gives_the_install_hint(no_vggt):
    with pytest.raises(UserError, match="vggt-attn-rerun install-vggt"):
        load_model("random")


def test_missing_vggt_is_reported_before_a_download(no_vggt):
    with pytest.raises(UserError, match="vggt-attn-rerun install-vggt"):
        load_model("facebook/VGGT-1B")


def test_install_command_pins_the_commit_without_deps():
    cmd = vggt_install_command()
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"]
    assert "--no-deps" in cmd and cmd[-1].endswith(f"@{VGGT_COMMIT}")
    assert vggt_install_command("./vggt")[-1] == "./vggt"


# -- find_aggregator ---------------------------------------------------------------------------------
def test_find_aggregator_of_a_model():
    model = tiny_vggt()
    assert find_aggregator(model) is model.aggregator


def test_find_aggregator_of_an_aggregator():
    aggregator = tiny_vggt().aggregator
    assert find_aggregator(aggregator) is aggregator


def test_find_aggregator_refuses_other_modules():
    with pytest.raises(UserError, match="frame_blocks and .global_blocks"):
        find_aggregator(nn.Linear(2, 2))


@pytest.mark.parametrize("command", ["main", "compare"])
def test_the_arch_option_offers_the_registrys_architectures_and_not_its_tiny_builders(command):
    from vggt_attn_rerun.cli.compare import compare
    from vggt_attn_rerun.cli.main import cli
    from vggt_attn_rerun.core.architectures import ARCHS, TINY_OF

    option = next(p for p in (cli if command == "main" else compare).params if p.name in ("arch", "archs"))
    assert set(option.type.choices) == {"auto"} | set(ARCHS) - set(TINY_OF.values())
    assert {"vggt", "pi3", "pi3x", "streamvggt", "vggt-omega"} <= set(option.type.choices)
