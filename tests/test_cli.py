"""The command line on the tiny model: recordings it writes, query forms, help, install-vggt."""

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rerun as rr

from vggt_attn_rerun import api
from vggt_attn_rerun.api import runner
from vggt_attn_rerun.cli import main as cli
from vggt_attn_rerun.core.loading import VGGT_COMMIT
from vggt_attn_rerun.io.runfile import load_run
from vggt_attn_rerun.viz import sinks

from .helpers import FAST, entities, has_footer, info_text, invoke

RERUN = Path(sys.executable).with_name("rerun")


@pytest.fixture
def no_viewer(monkeypatch):
    """No display, and spawning a viewer fails the test."""
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(sinks.OpenSinks, "_spawn", lambda *a: pytest.fail("no viewer may be spawned"))


def test_headless_save_writes_a_valid_recording(scene, tmp_path):
    out = tmp_path / "out.rrd"
    # Default image size (518 wide): the real preprocessing path, still fast on the tiny model.
    result = invoke(scene, "--model", "tiny", "--headless", "--save", out, "--kinds", "frame,global")
    assert result.exit_code == 0, result.output
    assert "saved" in result.stderr and result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.rrd", "scene"]  # no partial file left
    found = entities(out)
    for s in range(3):
        assert f"/world/frames/{s}/image" in found
        for kind in ("frame", "global"):
            assert f"/world/frames/{s}/image/attention/q0/{kind}" in found
    assert {"/world/points", "/queries/q0/info", "/queries/q0/global/maps", "/heads/q0/global/3"} <= found
    assert rr.chunk.RrdReader(out).blueprints(), "the default layout must be embedded"
    assert "frame 0 pixel (42, 28)" in info_text(out, 0)  # default query: centre of frame 0
    verify = subprocess.run([RERUN, "rrd", "verify", out], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_every_query_form(scene, tmp_path):
    out = tmp_path / "q.rrd"
    queries = ["0:40,20", "1:p1,2", "2:camera", "7", "1:patch=3,5", "0:register_2"]
    args = [a for q in queries for a in ("-q", q)]
    result = invoke(scene, *FAST, "--headless", "--save", out, *args, "--blocks", "1,3", "--focus-head", "2")
    assert result.exit_code == 0, result.output
    # Identity preprocessing at 84 px: pixel (40, 20) lies in patch row 1, col 2 (14 px patches);
    # P = 5 + 24 = 29 tokens per frame, so 1:p1,2 is 29 + 5 + 8 and token 7 is patch (0, 2) of frame 0.
    expected = {
        0: "frame 0, patch row 1, col 2",
        1: "global index 42",
        2: "frame 2, special token `camera`",
        3: "frame 0, patch row 0, col 2",
        4: "frame 1, patch row 3, col 5",
        5: "frame 0, special token `register_2`",
    }
    for i, text in expected.items():
        assert text in info_text(out, i)
    assert "captured blocks: [1, 3]" in info_text(out, 0)
    assert "views show the head 2" in info_text(out, 0)


def test_same_token_twice_is_used_once(scene, tmp_path):
    out = tmp_path / "q.rrd"
    result = invoke(scene, *FAST, "--headless", "--save", out, "-q", "0:p0,0", "-q", "5")
    assert result.exit_code == 0, result.output
    assert "warning: query '5' is the same token as '0:p0,0'" in result.stderr
    assert "/queries/q1/info" not in entities(out)


def test_overwrite_replaces_the_file(scene, tmp_path):
    out = tmp_path / "out.rrd"
    out.write_bytes(b"old")
    result = invoke(scene, *FAST, "--headless", "--save", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] != b"old" and out.stat().st_size > 1000
    assert oct(out.stat().st_mode & 0o777) != oct(0o600), "mkstemp's private mode must not leak"


def test_export_writes_a_run_that_load_run_reads_back(scene, tmp_path):
    out, run_file = tmp_path / "out.rrd", tmp_path / "run.npz"
    result = invoke(scene, *FAST, "--headless", "--save", out, "--export", run_file, "-q", "1:p2,3", "--blocks", "0,3")
    assert result.exit_code == 0, result.output
    assert f"saved {out}, exported {run_file}" in result.stderr
    loaded, images = load_run(run_file)
    assert [(q.frame, q.patch(loaded.layout)) for q in loaded.rows.queries] == [(1, (2, 3))]
    assert loaded.rows.blocks == (0, 3) and list(loaded.rows.probs) == ["global"]
    assert list(images.tensor.shape) == [3, 3, 56, 84] and images.paths == sorted(scene.iterdir())
    assert "/queries/q0/info" in entities(out)


@pytest.mark.parametrize("headless", [[], ["--headless"]])
def test_export_alone_runs_no_recording_and_no_viewer(scene, tmp_path, no_viewer, headless):
    run_file = tmp_path / "run.npz"
    result = invoke(scene, *FAST, *headless, "--export", run_file)
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().endswith(f"exported {run_file}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.npz", "scene"]
    assert load_run(run_file)[0].rows.num_heads == 4


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("exists.npz", "file exists; pass --overwrite to replace it"),
        ("run.rrd", "the file name must end in .npz (the run file format)"),
        ("missing/run.npz", "does not exist"),
    ],
)
def test_export_path_is_checked_before_the_model(scene, tmp_path, no_model, name, message):
    (tmp_path / "exists.npz").write_bytes(b"old")
    target = tmp_path / name
    result = invoke(scene, *FAST, "--headless", "--export", target)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: --export {target}: ") and message in result.stderr
    assert (tmp_path / "exists.npz").read_bytes() == b"old"


def test_help_shows_examples():
    result = invoke("--help")
    assert result.exit_code == 0
    for text in ("Usage: vggt-attn-rerun [OPTIONS] IMAGES...", "Examples:", "--save attn.rrd --spawn",
                 "--stdout | rerun -", "-q 0:320,240", "install-vggt", "--connect", "--serve", "Exit codes",
                 "--query-grid 8x8", "--queries-file", "--export run.npz"):  # fmt: skip
        assert text in result.stdout, text


def test_install_vggt_dry_run_prints_the_pinned_no_deps_command(monkeypatch):
    monkeypatch.setattr(subprocess, "call", lambda *a, **k: pytest.fail("--dry-run must not run pip"))
    result = invoke("install-vggt", "--dry-run")
    assert result.exit_code == 0, result.output
    command = shlex.split(result.stdout.strip())
    assert command[1:5] == ["-m", "pip", "install", "--no-deps"]
    assert command[-1].endswith(f"vggt@{VGGT_COMMIT}") and VGGT_COMMIT in command[-1]


def test_install_vggt_failing_offline_points_to_source(monkeypatch):
    monkeypatch.setattr(subprocess, "call", lambda cmd: 1)  # what pip returns when GitHub is unreachable
    result = invoke("install-vggt")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: pip failed with exit code 1 (command above); without network access to GitHub, "
        "--source PATH_OR_URL takes a mirror (git URL) or a local clone of vggt"
    )


def test_install_vggt_source_and_failure(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 3)
    result = invoke("install-vggt", "--source", "/src/vggt")
    assert calls and calls[0][-1] == "/src/vggt" and "--no-deps" in calls[0]
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: pip failed with exit code 3 (command above)"


def test_connect_swallowing_an_image_is_undone(scene, tmp_path, monkeypatch):
    seen = {}

    def fake_plan(outputs, **kw):
        seen["connect"] = outputs.connect
        raise cli.UserError("stop here")

    monkeypatch.setattr(runner, "plan_sinks", fake_plan)
    images = sorted(scene.iterdir())
    result = invoke("--connect", images[0], images[1], *FAST)
    assert result.exit_code == 2 and seen["connect"] == "rerun+http://127.0.0.1:9876/proxy"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_end_to_end_connect_and_save_at_once(scene, tmp_path):
    """A real console-script run streaming to a Rerun gRPC server and saving a file together."""
    port = _free_port()
    server = subprocess.Popen(
        [RERUN, "--serve-grpc", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the wrapper script starts the real binary: stop both by group
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "rerun --serve-grpc did not start"
                time.sleep(0.2)
        out = tmp_path / "both.rrd"
        url = f"rerun+http://127.0.0.1:{port}/proxy"
        run = subprocess.run(
            [sys.executable, "-m", "vggt_attn_rerun.cli", scene, *FAST, "--connect", url, "--save", out],
            capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert f"saved {out}, sent to {url}" in run.stderr
        assert "/world/points" in entities(out)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)


def test_ask_adds_typed_queries_without_a_second_forward_pass(scene, tmp_path, forward_calls):
    out = tmp_path / "ask.rrd"
    result = invoke(scene, *FAST, "-q", "0:p0,0", "--ask", "--save", out, input="1:p2,3\nnot a query\nq\n")
    assert result.exit_code == 0, result.output
    assert forward_calls == [1]
    assert "not added: cannot parse query 'not a query'" in result.stderr
    entities = {ch.entity_path.lstrip("/") for ch in rr.chunk.RrdReader(out).stream()}
    assert "world/frames/1/image/attention/q1/global" in entities  # the typed query, logged as q1


# -- Rerun's sink conventions: --stdout > --serve > --connect > --save > spawn unless --headless ----------


def test_save_alone_writes_the_file_and_opens_no_viewer(scene, tmp_path, no_viewer):
    out = tmp_path / "alone.rrd"
    result = invoke(scene, *FAST, "--save", out)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [f"3 views, 1 query, 4 blocks of global attention: saved {out}"]
    assert "/world/points" in entities(out)


@pytest.fixture
def viewer_checks_pass(monkeypatch):
    """A display and a viewer executable, a viewer listening, free ports: only the plan is tested."""
    monkeypatch.setattr(sinks, "find_viewer", lambda: "/usr/bin/rerun")
    monkeypatch.setattr(sinks, "check_viewer_listening", lambda url: None)
    monkeypatch.setattr(sinks, "check_port_free", lambda port, what: None)


@pytest.mark.parametrize(
    ("flags", "spawn", "sinks_described"),
    [
        ({}, True, "sent to the spawned viewer"),
        ({"save": "x.rrd"}, False, "saved {dir}/x.rrd"),
        ({"save": "x.rrd", "spawn": True}, True, "saved {dir}/x.rrd, sent to the spawned viewer"),
        ({"connect": sinks.DEFAULT_URL}, False, f"sent to {sinks.DEFAULT_URL}"),
        ({"serve": True}, False, "served to the web viewer"),
        ({"save": "x.rrd", "headless": True}, False, "saved {dir}/x.rrd"),
    ],
)
def test_a_viewer_is_spawned_only_when_no_other_output_is_asked_for(tmp_path, viewer_checks_pass, flags, spawn,
                                                                      sinks_described):  # fmt: skip
    if "save" in flags:
        flags = {**flags, "save": tmp_path / flags["save"]}
    plan = sinks.plan_sinks(sinks.Outputs(**flags))
    assert plan.outputs.spawn is spawn
    assert plan.describe() == sinks_described.format(dir=tmp_path)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"stdout": True, "save": "x.rrd"}, "--stdout sends the recording down the pipe only: drop --save"),
        ({"stdout": True, "spawn": True}, "--stdout sends the recording down the pipe only: drop --spawn"),
        ({"spawn": True, "headless": True}, "--spawn and --headless contradict each other: give one"),
        ({"headless": True}, "--headless alone would discard the recording"),
    ],
)
def test_contradicting_sinks_are_refused(tmp_path, viewer_checks_pass, flags, message):
    if "save" in flags:
        flags = {**flags, "save": tmp_path / flags["save"]}
    with pytest.raises(cli.UserError, match=message):
        sinks.plan_sinks(sinks.Outputs(**flags))


def test_stdout_on_a_terminal_is_refused(monkeypatch):
    class Terminal:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdout", Terminal())
    with pytest.raises(cli.UserError, match=r"standard output is a terminal; pipe it into the viewer"):
        sinks.plan_sinks(sinks.Outputs(stdout=True))


def test_stdout_pipes_a_recording_that_rerun_reads(scene, tmp_path):
    piped = tmp_path / "piped.rrd"
    with open(piped, "wb") as pipe:
        run = subprocess.run(
            [sys.executable, "-m", "vggt_attn_rerun.cli", scene, *FAST, "--stdout", "-q", "1:p2,3"],
            stdout=pipe, stderr=subprocess.PIPE, text=True, timeout=120, cwd=Path(__file__).parents[1],
        )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines() == ["3 views, 1 query, 4 blocks of global attention: written to stdout"]
    found = entities(piped)
    assert {"/world/points", "/queries/q0/info", "/world/frames/1/image/attention/q0/global"} <= found
    assert "frame 1, patch row 2, col 3" in info_text(piped, 0)
    assert not has_footer(piped)  # a stream the viewer reads as it comes: no index of every chunk held in memory


@pytest.mark.parametrize("example", [["synthetic_scene.py"], ["my_photos.py", "photo.jpg"]])
def test_examples_without_a_display_end_in_one_line(example):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    script = Path(__file__).parents[1] / "examples" / example[0]
    run = subprocess.run([sys.executable, script, *example[1:]], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        "error: no display to open the Rerun viewer on (DISPLAY and WAYLAND_DISPLAY are not set): use "
        "--save out.rrd, --stdout | rerun -, --serve (web viewer) or --connect"
    ]


_INTERRUPT_TORCH = """
import sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            raise KeyboardInterrupt
sys.meta_path.insert(0, Interrupt())
from vggt_attn_rerun.cli import entry
entry(sys.argv[1:])
"""


@pytest.mark.parametrize("args", [["--help"], ["photos/", "--save", "x.rrd"]])
def test_ctrl_c_while_importing_exits_130_in_one_line(args):
    """Ctrl-C arrives while torch loads (seconds of start-up): what the console script does."""
    run = subprocess.run([sys.executable, "-c", _INTERRUPT_TORCH, *args], capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).parents[1])  # fmt: skip
    assert (run.returncode, run.stderr) == (130, "interrupted\n")


def test_the_console_script_is_the_lazy_entry():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "vggt-attn-rerun"]
    assert script.value == "vggt_attn_rerun.cli:entry"


def test_progress_advances_once_per_captured_attention_module(scene, tmp_path):
    """The bar is driven by the capture's own per-block callback: one step per (kind, block) captured."""
    from vggt_attn_rerun.viz.options import RecordingOptions

    events: list = []

    class Bar:
        def __init__(self, desc, total):
            events.append(("open", desc, total))

        def update(self, n=1):
            events.append(("update", n))

        def close(self):
            events.append(("close",))

    options = api.RunOptions(images=(scene,), model="tiny", image_size=84, blocks="0,2",
                             outputs=api.Outputs(save=tmp_path / "p.rrd"),
                             recording=RecordingOptions(kinds=("frame", "global")))  # fmt: skip
    summary = api.run(options, api.RunCallbacks(progress=Bar))
    assert summary.queries == 1 and (tmp_path / "p.rrd").exists()
    forward = events.index(("open", "forward pass", 4))
    assert events[forward + 1 : forward + 5] == [("update", 1)] * 4
    assert events[forward + 5 : forward + 7] == [("close",), ("open", "logging to Rerun", None)]


@pytest.mark.parametrize("peaks", [0, 5])
def test_the_peaks_option_reaches_the_recording_options(tmp_path, peaks):
    photo = tmp_path / "a.png"
    photo.write_bytes(b"")
    with cli.cli.make_context("vggt-attn-rerun", [str(photo), "--model", "tiny", "--peaks", str(peaks)]) as ctx:
        options = cli.run_options(**ctx.params)
    assert options.recording.peaks == peaks
