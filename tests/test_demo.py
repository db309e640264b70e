"""``vggt-attn-rerun demo``: the offline demo in one command, and a fast, helpful no-weights error."""

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import Recording
from vggt_attn_rerun.cli.main import run
from vggt_attn_rerun.core import loading
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.testing import CONSTRUCTED_LABEL
from vggt_attn_rerun.viz.paths import Paths

RERUN = shutil.which("rerun") or str(Path(sys.executable).with_name("rerun"))


def test_demo_saves_a_labelled_recording_that_rerun_verifies(tmp_path, capsys):
    out = tmp_path / "demo.rrd"
    assert run(["demo", "--frames", "2", "--save", str(out)]) == 0
    assert f"saved {out}" in capsys.readouterr().err
    assert subprocess.run([RERUN, "rrd", "verify", str(out)], capture_output=True, timeout=120).returncode == 0
    recording = Recording(out)
    assert CONSTRUCTED_LABEL.note in recording.static(Paths.notes, "TextDocument:text")[0]
    assert {Paths.overlay(1, 0, "global"), Paths.overlay(1, 0, "frame")} <= recording.entities()


def test_demo_refuses_an_existing_file_without_overwrite(tmp_path):
    out = tmp_path / "demo.rrd"
    out.write_bytes(b"keep")
    assert run(["demo", "--save", str(out)]) == 2
    assert out.read_bytes() == b"keep"


def test_an_unreachable_hub_fails_fast_and_names_the_offline_demo(tmp_path, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached

    def black_hole(*args, **kwargs):  # a network that swallows packets: no answer for a long while
        time.sleep(3)
        raise TimeoutError("timed out")

    def download(*args, **kwargs):
        raise AssertionError("no download is tried when the Hub cannot be reached")

    monkeypatch.setattr(socket, "create_connection", black_hole)
    monkeypatch.setattr(hub, "hf_hub_download", download, raising=False)
    monkeypatch.setattr(loading, "HUB_PROBE_TIMEOUT_S", 0.5)
    start = time.monotonic()
    with pytest.raises(UserError, match=r"could not be downloaded.*vggt-attn-rerun demo.*--model tiny"):
        loading.load_model("facebook/VGGT-1B", arch="tiny")
    assert time.monotonic() - start < 5
