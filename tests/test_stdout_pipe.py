"""--stdout when standard output fails: closed, a pipe nobody reads, a full device, a reader that
leaves half-way. Each ends in one `error:` line and an exit code within seconds, never a hang."""

import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import rerun as rr

from vggt_attn_rerun.cli import main as cli
from vggt_attn_rerun.io.pipe import STDOUT_FD, StdoutFailed, StdoutRelay, check_stdout

from .helpers import FAST

NOBODY_READS = "error: --stdout: nothing reads standard output (the command after | exited or was not found)"
ROOT = Path(__file__).parents[1]
# Enough for a start-up with torch and rerun on a busy machine; a hang is killed after it.
SUBPROCESS_TIMEOUT_S = 120


@contextmanager
def fd1_as(fd: int):
    """File descriptor 1 of this process is ``fd`` inside the block (restored after)."""
    saved = os.dup(STDOUT_FD)
    os.dup2(fd, STDOUT_FD)
    try:
        yield
    finally:
        os.dup2(saved, STDOUT_FD)
        os.close(saved)


@pytest.fixture
def pipe_nobody_reads():
    read_end, write_end = os.pipe()
    os.close(read_end)
    yield write_end
    os.close(write_end)


def run_cli(args, capsys) -> tuple[int, list[str]]:
    code = cli.run([str(a) for a in args])
    return code, capsys.readouterr().err.splitlines()


def test_a_pipe_nobody_reads_is_refused_before_the_model(scene, pipe_nobody_reads, no_model, capsys):
    with fd1_as(pipe_nobody_reads):
        code, err = run_cli([scene, *FAST, "--stdout"], capsys)
    assert (code, err) == (1, [NOBODY_READS])


def test_compare_into_a_pipe_nobody_reads_is_refused_before_the_models(scene, pipe_nobody_reads, no_model, capsys):
    with fd1_as(pipe_nobody_reads):
        code, err = run_cli(["compare", scene, "--model", "tiny", *FAST, "--stdout"], capsys)
    assert (code, err) == (1, [NOBODY_READS])


def test_a_full_device_is_refused_before_the_model(scene, no_model, capsys):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        with fd1_as(fd):
            code, err = run_cli([scene, *FAST, "--stdout"], capsys)
    finally:
        os.close(fd)
    assert (code, err) == (1, ["error: --stdout: cannot write to standard output: No space left on device"])


def test_a_closed_standard_output_is_bad_usage(scene, no_model, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdout", None)  # what Python makes of `>&-`
    code, err = run_cli([scene, *FAST, "--stdout"], capsys)
    hint = "pipe it into the viewer: ... --stdout | rerun -"
    assert (code, err) == (2, [f"error: --stdout: standard output is closed; {hint}"])


def test_the_relay_copies_every_byte_and_gives_file_descriptor_1_back():
    read_end, write_end = os.pipe()
    payload = os.urandom(300_000)  # more than the pipes hold: the relay must keep copying
    got = bytearray()
    with fd1_as(write_end):
        os.close(write_end)
        relay = StdoutRelay(interrupt=False)
        before = os.fstat(STDOUT_FD)
        writer = threading.Thread(target=lambda: os.write(STDOUT_FD, payload))
        writer.start()
        while len(got) < len(payload):
            got += os.read(read_end, 1 << 16)
        writer.join()
        relay.close(timeout=10)
        after = os.fstat(STDOUT_FD)
    os.close(read_end)
    assert bytes(got) == payload
    assert (before.st_ino, before.st_dev) != (after.st_ino, after.st_dev)  # the relay's pipe, then the real one


def test_a_reader_that_leaves_interrupts_the_run_and_close_says_why(pipe_nobody_reads):
    with fd1_as(pipe_nobody_reads):
        relay = StdoutRelay()
        with pytest.raises(KeyboardInterrupt):
            os.write(STDOUT_FD, b"x" * 100)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the interrupt lands here, as in a long forward pass
                time.sleep(0.01)
        assert relay.failed
        with pytest.raises(StdoutFailed, match="--stdout: the recording could not be written to standard output: "
                           "the viewer or the command after | closed the pipe"):  # fmt: skip
            relay.close(timeout=10)


def test_rerun_never_sees_the_broken_pipe_and_close_does_not_hang(pipe_nobody_reads):
    with fd1_as(pipe_nobody_reads):
        relay = StdoutRelay(interrupt=False)
        rec = rr.RecordingStream("relay-test")
        rec.stdout()
        for i in range(20):
            rec.log("points", rr.Points3D([[i, 0.0, 0.0]] * 1000))
        rec.flush(timeout_sec=10)
        rec.disconnect()
        with pytest.raises(StdoutFailed):
            relay.close(timeout=10)


def test_check_stdout_accepts_a_pipe_that_is_read():
    read_end, write_end = os.pipe()
    with fd1_as(write_end):
        check_stdout()
    os.close(read_end)
    os.close(write_end)


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "vggt_attn_rerun.cli", *map(str, args)]


@pytest.mark.slow
def test_a_reader_leaving_mid_stream_ends_the_run_in_one_line(scene):
    proc = subprocess.Popen(_cli(scene, *FAST, "--stdout"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        assert len(proc.stdout.read(100)) == 100  # `| head -c 100`
        proc.stdout.close()
        code = proc.wait(timeout=SUBPROCESS_TIMEOUT_S)  # a hang fails here (TimeoutExpired)
        err = proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.stderr.close()
    assert code == 1, err
    assert err.splitlines() == [
        "error: --stdout: the recording could not be written to standard output: "
        "the viewer or the command after | closed the pipe"
    ]


def _example(*args) -> list[str]:
    return [sys.executable, str(ROOT / "examples" / "synthetic_scene.py"), "--frames", "2", *args]


def test_an_example_into_a_pipe_nobody_reads_ends_in_one_line(pipe_nobody_reads):
    run = subprocess.run(_example("--stdout"), stdout=pipe_nobody_reads, stderr=subprocess.PIPE, text=True,
                         timeout=SUBPROCESS_TIMEOUT_S)  # fmt: skip
    assert run.returncode == 1
    assert run.stderr.splitlines() == [NOBODY_READS]


def test_an_example_pipes_a_recording_that_rerun_reads(tmp_path):
    piped = tmp_path / "piped.rrd"
    with open(piped, "wb") as out:
        run = subprocess.run(_example("--stdout"), stdout=out, stderr=subprocess.PIPE, text=True,
                             timeout=SUBPROCESS_TIMEOUT_S)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "/queries/q0/info" in {str(ch.entity_path) for ch in rr.chunk.RrdReader(piped).stream()}
