"""load_model builds and loads every architecture, tagged with its adapter."""

import sys

import pytest
import torch
from safetensors.torch import save_file

from vggt_attn_rerun.core.adapters import adapter_for
from vggt_attn_rerun.core.architectures import arch_for_hub_id
from vggt_attn_rerun.core.capture import capture
from vggt_attn_rerun.core.loading import load_model
from vggt_attn_rerun.core.tokens import Query
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.testing.tiny_pi3 import tiny_pi3
from vggt_attn_rerun.testing.tiny_streamvggt import tiny_streamvggt
from vggt_attn_rerun.testing.tiny_vggt_omega import tiny_vggt_omega

TINY = {"tiny-pi3": tiny_pi3, "tiny-streamvggt": tiny_streamvggt, "tiny-vggt-omega": tiny_vggt_omega}


@pytest.mark.parametrize("arch", ["vggt", "pi3", "streamvggt", "vggt-omega"])
def test_tiny_spec_builds_the_family_toy_model_with_its_adapter(arch):
    model = load_model("tiny", arch=arch)
    assert adapter_for(model).name == arch


@pytest.mark.parametrize("arch", sorted(TINY))
def test_safetensors_checkpoint_loads_into_its_architecture(tmp_path, arch):
    want = TINY[arch](seed=3)
    save_file(want.state_dict(), str(tmp_path / "w.safetensors"))
    got = load_model(str(tmp_path / "w.safetensors"), arch=arch)
    for key, value in want.state_dict().items():
        assert torch.equal(got.state_dict()[key], value), key
    assert not torch.equal(TINY[arch](seed=0).state_dict()[key], value)  # seeds differ, so this could fail


def test_pickled_checkpoint_is_refused_for_the_relatives(tmp_path):
    torch.save(tiny_pi3().state_dict(), tmp_path / "w.pt")
    with pytest.raises(UserError, match="safetensors files only"):
        load_model(str(tmp_path / "w.pt"), arch="tiny-pi3")


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    save_file(tiny_pi3().state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(UserError, match="does not"):
        load_model(str(tmp_path / "w.safetensors"), arch="tiny-vggt-omega")


def test_callable_with_a_named_architecture_is_captured_as_that_architecture():
    model = load_model("vggt_attn_rerun.testing.tiny_pi3:tiny_pi3", arch="pi3")
    images = torch.rand(2, 3, 28, 42)
    res = capture(model, images, lambda lay: [Query.from_special(lay, 0, "register_4")])
    assert res.layout.num_cameras == 0 and res.rows.probs["global"].shape[-1] == 5 + 6


def test_known_hub_ids_pick_their_architecture():
    assert arch_for_hub_id("yyfz233/Pi3") == "pi3" and arch_for_hub_id("facebook/VGGT-1B") == "vggt"
    assert arch_for_hub_id("someone/else") is None


def test_missing_package_names_its_install_command_before_a_download(monkeypatch):
    for name in ("pi3", "pi3.models", "pi3.models.pi3"):
        monkeypatch.setitem(sys.modules, name, None)  # as if pi3 were not installed
    with pytest.raises(UserError, match=r"pi3 is not installed.*pip install --no-deps .*yyfz/Pi3@"):
        load_model("yyfz233/Pi3")


def test_unknown_architecture_lists_the_valid_ones():
    with pytest.raises(UserError, match="valid are vggt, pi3"):
        load_model("tiny", arch="dust3r")


@pytest.mark.parametrize("arch", ["pi3", "streamvggt", "vggt-omega"])
def test_cli_records_each_architecture(scene, tmp_path, arch):
    import rerun as rr
    from click.testing import CliRunner

    from vggt_attn_rerun.cli import main as cli

    out = tmp_path / "out.rrd"
    args = [str(scene), "--model", "tiny", "--arch", arch, "-q", "1:register_1", "--headless", "--save", str(out)]
    result = CliRunner().invoke(cli.cli, [*args, "--image-size", "112"])
    assert result.exit_code == 0, result.output
    found = {str(ch.entity_path) for ch in rr.chunk.RrdReader(out).stream()}
    assert {"/world/points", "/world/frames/2/image/attention/q0/global", "/queries/q0/global/maps"} <= found


def test_export_refuses_a_layout_without_camera_token_rather_than_misplace_patches(scene, tmp_path):
    from click.testing import CliRunner

    from vggt_attn_rerun.cli import main as cli

    args = [str(scene), "--model", "tiny", "--arch", "pi3", "--headless", "--export", str(tmp_path / "run.npz")]
    result = CliRunner().invoke(cli.cli, [*args, "--image-size", "112"])
    assert result.exit_code != 0 and "without a camera token" in result.output
    assert not (tmp_path / "run.npz").exists()
