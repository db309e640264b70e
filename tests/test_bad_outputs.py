"""Bad --save paths and sinks: one `error: ...` line, exit code 2, reported before the model loads."""

import sys

import pytest
import torch

from vggt_attn_rerun.core import loading

from .helpers import FAST, assert_error, invoke

# -- the save path and the sinks: all checked before the model loads --------------------------------


def test_save_into_missing_folder(scene, tmp_path, no_model):
    target = tmp_path / "no" / "such" / "out.rrd"
    result = invoke(scene, *FAST, "--headless", "--save", target)
    assert_error(result, 2, f"--save {target}: folder {target.parent} does not exist")


def test_save_into_unwritable_folder(scene, read_only_folder, no_model):
    target = read_only_folder / "out.rrd"
    result = invoke(scene, *FAST, "--headless", "--save", target)
    assert_error(result, 2, prefix=f"--save {target}: cannot write to folder {read_only_folder} (")
    assert not target.exists()


def test_save_into_a_file_as_folder(scene, tmp_path, no_model):
    target = scene / "view_0.png" / "out.rrd"
    result = invoke(scene, *FAST, "--headless", "--save", target)
    assert_error(result, 2, f"--save {target}: {target.parent} is not a folder")


def test_save_onto_existing_file(scene, tmp_path, no_model):
    target = tmp_path / "old.rrd"
    target.write_bytes(b"precious")
    result = invoke(scene, *FAST, "--headless", "--save", target)
    assert_error(result, 2, f"--save {target}: file exists; pass --overwrite to replace it")
    assert target.read_bytes() == b"precious"


def test_save_needs_rrd_suffix(scene, tmp_path, no_model):
    target = tmp_path / "out.png"
    result = invoke(scene, *FAST, "--headless", "--save", target)
    assert_error(result, 2, f"--save {target}: the file name must end in .rrd (the viewer opens recordings by suffix)")


def test_headless_without_a_sink(scene, no_model):
    result = invoke(scene, *FAST, "--headless")
    message = "--headless alone would discard the recording: add --save out.rrd (or --stdout/--connect/--serve)"
    assert_error(result, 2, message)


def test_connect_to_nothing(scene, no_model):
    url = "rerun+http://127.0.0.1:9/proxy"  # the discard port: nothing listens there
    result = invoke(scene, *FAST, "--connect", url)
    assert_error(result, 2, prefix=f"--connect {url}: no Rerun viewer is listening there (")


def test_connect_to_a_non_rerun_url(scene, no_model):
    result = invoke(scene, *FAST, "--connect=http://example.com")
    assert_error(result, 2, prefix="--connect http://example.com: not a Rerun viewer URL")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the DISPLAY check is for Linux")
def test_spawn_without_a_display(scene, monkeypatch, no_model):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    result = invoke(scene, *FAST)
    assert_error(result, 2, prefix="no display to open the Rerun viewer on")


def test_cuda_not_available(scene, monkeypatch, no_model):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = invoke(scene, *FAST, "--device", "cuda", "--headless", "--save", scene.parent / "x.rrd")
    assert_error(result, 2, "--device cuda: CUDA is not available to this torch; use --device cpu")


def test_model_is_a_text_file(scene, tmp_path, no_model):
    notes = tmp_path / "weights.pt"
    notes.write_text("these are not weights\n")
    result = invoke(scene, "--model", notes, "--headless", "--save", tmp_path / "x.rrd")
    assert_error(
        result, 2,
        f"--model {notes} is not a checkpoint (neither a torch .pt/.pth file nor .safetensors); "
        f"valid are {loading.SPEC_SYNTAX}",
    )  # fmt: skip
