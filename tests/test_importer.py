"""A saved run re-opens in the viewer through the rerun-importer-* entry point."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rerun as rr

from vggt_attn_rerun.cli import importer
from vggt_attn_rerun.core.capture import capture
from vggt_attn_rerun.core.images import images_from_tensor
from vggt_attn_rerun.core.tokens import Query
from vggt_attn_rerun.io.runfile import save_run
from vggt_attn_rerun.viz.log_run import log_run
from vggt_attn_rerun.viz.options import RecordingOptions
from vggt_attn_rerun.viz.paths import Paths

from .helpers import Recording, has_footer


def _importer(*args):
    return subprocess.run([sys.executable, "-m", "vggt_attn_rerun.cli.importer", *map(str, args)], capture_output=True)


def test_the_viewers_importer_is_the_installed_console_script():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "rerun-importer-vggt-attn"]
    assert script.load() is importer.entry


@pytest.mark.slow
def test_export_then_import_reads_back_the_same_maps_as_the_original_recording(tmp_path, tiny_model, scene_images):
    images = images_from_tensor(scene_images)
    result = capture(tiny_model, scene_images, lambda lay: [Query.from_patch(lay, 1, 2, 3)], kinds=["global", "frame"])
    options = RecordingOptions(kinds=("global", "frame"), max_points=300)
    original = tmp_path / "original.rrd"
    rec = rr.RecordingStream("vggt_attn_rerun")
    rec.save(original)
    log_run(rec, result, images, options)
    rec.flush()
    rec.disconnect()

    run_file = save_run(tmp_path / "run.npz", result, images)
    proc = _importer(run_file, "--application-id", "vggt_attn_rerun", "--recording-id", "abc", "--future-flag", "1")
    assert proc.returncode == 0, proc.stderr.decode()
    imported = tmp_path / "imported.rrd"
    imported.write_bytes(proc.stdout)

    a, b = Recording(original), Recording(imported)
    for kind in ("global", "frame"):
        ta, tb = (r.static(Paths.maps(0, kind), "Tensor:data")[0] for r in (a, b))
        assert ta["shape"] == tb["shape"]
        assert np.array_equal(np.asarray(ta["buffer"]), np.asarray(tb["buffer"]))
    assert a.static(Paths.frame(1), "Transform3D:mat3x3") == b.static(Paths.frame(1), "Transform3D:mat3x3")
    assert b.reader.blueprints(), "the default blueprint comes with the imported recording"


def test_other_files_are_left_to_other_importers(tmp_path):
    other = tmp_path / "photo.png"
    other.write_bytes(b"\x89PNG not really")
    assert importer.main([str(other), "--application-id", "x"]) == rr.EXTERNAL_IMPORTER_INCOMPATIBLE_EXIT_CODE


@pytest.fixture(scope="module")
def run_file(tiny_model, scene_images, tmp_path_factory):
    images = images_from_tensor(scene_images)
    result = capture(tiny_model, scene_images, lambda lay: [Query.from_patch(lay, 0, 1, 1)], blocks=[0, 1])
    return save_run(tmp_path_factory.mktemp("run") / "run.npz", result, images)


def test_the_imported_stream_has_no_footer_and_stderr_stays_empty(run_file, tmp_path):
    proc = _importer(run_file, "--application-id", "vggt_attn_rerun")
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr.decode()
    imported = tmp_path / "imported.rrd"
    imported.write_bytes(proc.stdout)
    assert Paths.maps(0, "global").strip("/") in Recording(imported).entities()
    assert not has_footer(imported)  # the viewer reads it as it comes: no index of every chunk held in memory


def _stderr_line(proc) -> str:
    text = proc.stderr.decode() if isinstance(proc.stderr, bytes) else proc.stderr.read().decode()
    lines = text.splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


@pytest.mark.slow
def test_a_closed_stdout_is_one_error_line(run_file):
    proc = subprocess.run(
        ["sh", "-c", f'"{sys.executable}" -m vggt_attn_rerun.cli.importer "{run_file}" >&-'],
        capture_output=False, stderr=subprocess.PIPE, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert _stderr_line(proc).startswith("error: standard output is closed")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_stdout_is_one_error_line(run_file):
    with open("/dev/full", "wb") as full:
        proc = subprocess.run([sys.executable, "-m", "vggt_attn_rerun.cli.importer", str(run_file)], stdout=full,
                              stderr=subprocess.PIPE, timeout=120)  # fmt: skip
    assert proc.returncode == 1
    line = _stderr_line(proc)
    assert line.startswith("error: cannot write the recording to standard output: No space left on device"), line


@pytest.mark.slow
def test_a_pipe_nobody_reads_is_one_error_line(run_file):
    read, write = os.pipe()
    os.close(read)  # as `| true` does once true has exited
    try:
        proc = subprocess.run([sys.executable, "-m", "vggt_attn_rerun.cli.importer", str(run_file)], stdout=write,
                              stderr=subprocess.PIPE, timeout=120)  # fmt: skip
    finally:
        os.close(write)
    assert proc.returncode == 1
    assert _stderr_line(proc) == (
        "error: cannot write the recording to standard output: the reader closed the pipe (Broken pipe)"
    )
