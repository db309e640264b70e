"""Failures while a run works (errors, Ctrl-C, out of memory, the memory estimate, a bad line typed
at --ask): one clear line, the right exit code, and no file under the name given to --save."""

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from vggt_attn_rerun.api import record, runner
from vggt_attn_rerun.cli import main as cli
from vggt_attn_rerun.core import resources
from vggt_attn_rerun.testing.tiny_model import TinyVGGT

from .helpers import FAST, HUGE, assert_error, assert_nothing_saved, invoke, save_args

# -- failures during the run: no file under the final name, no temp file ----------------------------


def _log_then(exc: BaseException, out: Path):
    """record_attention that logs something, then fails: the recording has started, no file has."""

    def fake_record(model, images, queries, *, recording, **kwargs):
        import rerun as rr

        recording.log("world/partial", rr.Points3D([[0.0, 0.0, 0.0]]))
        recording.flush()
        assert not out.exists()  # the file is written whole at the end, never piece by piece
        raise exc

    return fake_record


def test_error_mid_run_leaves_no_file(scene, out, monkeypatch):
    monkeypatch.setattr(runner, "record_attention", _log_then(RuntimeError("boom\nsecond line"), out))
    result = invoke(scene, *FAST, *save_args(out))
    assert_error(result, 1, "unexpected RuntimeError: boom (run with --debug for the traceback)")
    assert_nothing_saved(out)


def test_error_in_the_model_forward_leaves_no_file(scene, out, monkeypatch):
    def broken_forward(self, images, query_points=None):
        raise ValueError("the forward pass failed")

    monkeypatch.setattr(TinyVGGT, "forward", broken_forward)
    result = invoke(scene, *FAST, *save_args(out))
    assert_error(result, 1, "unexpected ValueError: the forward pass failed (run with --debug for the traceback)")
    assert_nothing_saved(out)


def test_debug_shows_the_traceback(scene, out, monkeypatch):
    monkeypatch.setattr(runner, "record_attention", _log_then(RuntimeError("boom"), out))
    result = invoke(scene, *FAST, *save_args(out), "--debug")
    assert result.exit_code == 1 and "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: unexpected RuntimeError: boom")
    assert_nothing_saved(out)


def test_keyboard_interrupt_mid_run_leaves_no_file(scene, out, monkeypatch):
    monkeypatch.setattr(runner, "record_attention", _log_then(KeyboardInterrupt(), out))
    result = invoke(scene, *FAST, *save_args(out))
    assert result.exit_code == 130
    assert result.stderr == "interrupted\n" and "Traceback" not in result.output
    assert_nothing_saved(out)


def test_out_of_memory_in_the_forward(scene, out, monkeypatch):
    monkeypatch.setattr(runner, "record_attention", _log_then(torch.OutOfMemoryError("CUDA out of memory."), out))
    result = invoke(scene, *FAST, *save_args(out))
    assert_error(result, 1, f"out of memory on cpu during the forward pass: {resources.OOM_ADVICE}")
    assert_nothing_saved(out)


def test_memory_estimate_refuses(scene, out, monkeypatch):
    monkeypatch.setattr(resources, "available_memory_bytes", lambda device: 1000)
    monkeypatch.setattr(runner, "record_attention", _log_then(AssertionError("must not run"), out))
    result = invoke(scene, *FAST, *save_args(out))
    line = assert_error(result, 1, prefix="the forward pass needs about ")
    assert line.endswith(f"but only 1000 B is available on cpu: {resources.OOM_ADVICE}; or pass --force to try anyway")
    assert_nothing_saved(out)


def test_memory_estimate_force(scene, out, monkeypatch):
    monkeypatch.setattr(resources, "available_memory_bytes", lambda device: 1000)
    result = invoke(scene, *FAST, *save_args(out), "--force")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("warning: the forward pass needs about ")
    assert out.exists()


def test_memory_check_thresholds():
    assert resources.check_memory(100, None, "cpu") is None  # unknown: no opinion
    assert resources.check_memory(70, 100, "cpu") is None
    assert "85%" in resources.check_memory(85, 100, "cpu")
    with pytest.raises(resources.UserError, match="or pass --force"):
        resources.check_memory(101, 100, "cpu")


def test_memory_estimate_is_plausible_for_vggt_1b():
    """The notes measured a peak RSS of 5.7-6.5 GB for VGGT-1B fp32 on CPU, 1-4 views of 518x518."""
    args = dict(height=518, width=518, dtype=torch.float32, num_params=1_260_000_000, queries=1,
                blocks=24, kinds=("global",), heads=16, embed_dim=1024)  # fmt: skip
    one = resources.estimate_memory(num_frames=1, **args).total
    four = resources.estimate_memory(num_frames=4, **args).total
    assert 5.0e9 < one < four < 7.0e9
    unfused = resources.estimate_memory(num_frames=8, **args, fused_attention=False)
    assert unfused.attention_matrix == 2 * 16 * (8 * 1374) ** 2 * 4  # logits + softmax, fp32
    bf16 = resources.estimate_memory(num_frames=4, **{**args, "dtype": torch.bfloat16})
    assert bf16.weight_casts == 1_260_000_000 * 2
    with_qk = resources.estimate_memory(num_frames=1, **{**args, "kinds": ("frame", "global")}, keep_qk=True)
    assert with_qk.qk_cache == 2 * 1374 * 1024 * 4 * 24 * 2  # q and k, fp32, 48 modules: 540 MB a frame


def test_memory_estimate_takes_keywords_only():
    with pytest.raises(TypeError):
        resources.estimate_memory(1, 518, 518, None, 10, 1, 1, ("global",), 16, 1024)


def test_serve_on_a_taken_port(scene, monkeypatch, no_model):
    import socket

    from vggt_attn_rerun.viz import sinks

    with socket.socket() as taken, socket.socket() as free:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        free.bind(("127.0.0.1", 0))
        web, grpc = taken.getsockname()[1], free.getsockname()[1]
        free.close()
        monkeypatch.setattr(sinks, "WEB_PORT", web)
        monkeypatch.setattr(sinks, "VIEWER_PORT", grpc)
        result = invoke(scene, *FAST, "--serve")
    assert_error(result, 2, prefix=f"--serve: port {web} for the web viewer is taken (")


def test_grid_view_out_of_range(scene, no_model):
    assert_error(invoke(scene, *FAST, "--grid-view", "3"), 2, "--grid-view 3: valid frames are 0..2")


@pytest.mark.parametrize("size", ["0", "100", "-14", "99988", "2086"])
def test_bad_image_size(scene, no_model, size):
    message = f"--image-size {size}: must be a multiple of 14 from 14 to 2072 (VGGT was trained at 518)"
    assert_error(invoke(scene, "--image-size", size), 2, message)


def test_warnings_while_logging_are_one_line(scene, tmp_path, monkeypatch, capsys):
    import warnings as _warnings

    real = record.log_run  # record_attention calls it from there

    def warn_then_log(*args, **kwargs):
        _warnings.warn(
            "view 1: the predicted camera is degenerate (non-finite or zero focal length): not shown", stacklevel=1
        )
        return real(*args, **kwargs)

    monkeypatch.setattr(record, "log_run", warn_then_log)
    code = cli.run([str(scene), *FAST, "--headless", "--save", str(tmp_path / "w.rrd")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "warning: view 1: the predicted camera is degenerate (non-finite or zero focal length): not shown" in (
        err.splitlines()
    )
    assert "warn_then_log" not in err and ".py:" not in err


# -- --ask: a bad typed line is skipped, the recording is kept -------------------------------------------


def test_ask_skips_any_bad_line_and_counts_the_queries_recorded(scene, out, monkeypatch):
    from vggt_attn_rerun.interactive.session import QuerySession

    real = QuerySession.add_query

    def breaks_on_frame_2(self, query):
        if query.frame == 2:
            raise RuntimeError("something inside went wrong")
        return real(self, query)

    monkeypatch.setattr(QuerySession, "add_query", breaks_on_frame_2)
    typed = ["1:p2,3", "not a query", f"0:p{HUGE},1", "\x00\x1b[2J", "2:p0,0", "0:p3,5", "q"]
    result = CliRunner().invoke(cli.cli, [str(scene), *FAST, "-q", "0:p0,0", "--ask", *map(str, save_args(out))],
                                input="\n".join(typed) + "\n")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "not added: unexpected RuntimeError: something inside went wrong" in result.stderr
    assert result.stderr.count("not added:") == 4
    assert result.stderr.splitlines()[-1].startswith("3 views, 3 queries, 4 blocks")
    import rerun as rr

    logged = {str(ch.entity_path) for ch in rr.chunk.RrdReader(out).stream()}
    assert {"/queries/q0/info", "/queries/q1/info", "/queries/q2/info"} <= logged
    assert "/queries/q3/info" not in logged
    assert [0, 1, 2] in _queries_in_each_layout(out)  # one saved layout reaches every query


def _queries_in_each_layout(path: Path) -> list[list[int]]:
    """Per blueprint in a recording: the query indices its views and containers name."""
    import re

    import rerun as rr

    reader = rr.chunk.RrdReader(path)
    found = []
    for store in reader.blueprints():
        named: set[int] = set()
        for ch in reader.stream(store=store):
            batch = ch.to_record_batch()
            for name in batch.schema.names:
                if "Blueprint" in name or "Name" in name or "Origin" in name or "Contents" in name:
                    named |= {int(q) for q in re.findall(r"\bq(\d+)\b", str(batch.column(name).to_pylist()))}
        found.append(sorted(named))
    return found
