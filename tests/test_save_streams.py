"""--save streams the recording into its temporary file as it is logged (viz.sinks, io.streamfile)."""

import socket
import time

import numpy as np
import pytest
import rerun as rr

from vggt_attn_rerun.io.atomic import PARTIAL_MARK, commit
from vggt_attn_rerun.viz.sinks import Outputs, SinkPlan, open_sinks

from .helpers import has_footer

TENSOR_BYTES = 4 << 20


def _log_noise(rec: rr.RecordingStream) -> np.ndarray:
    data = np.random.default_rng(0).random(TENSOR_BYTES // 4, dtype=np.float32)  # incompressible
    rec.log("noise", rr.Tensor(data), static=True)
    return data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _partial(folder) -> list:
    return [p for p in folder.iterdir() if PARTIAL_MARK in p.name]


def test_the_recording_is_on_disk_before_the_run_ends(tmp_path):
    target = tmp_path / "a.rrd"
    rec = rr.RecordingStream("vggt_attn_rerun")
    with open_sinks(rec, SinkPlan(Outputs(save=target))) as sinks:
        data = _log_noise(rec)
        rec.flush()
        (partial,) = _partial(tmp_path)
        deadline = time.monotonic() + 10  # the last MiB may still be in the pipe, being copied
        while partial.stat().st_size <= TENSOR_BYTES and time.monotonic() < deadline:
            time.sleep(0.05)
        assert partial.stat().st_size > TENSOR_BYTES  # written as logged, not held in memory
        assert not target.exists()
        commit(sinks.finish())
    assert [p.name for p in tmp_path.iterdir()] == ["a.rrd"]
    (chunk,) = rr.chunk.RrdReader(target).stream().filter(content="/noise")
    logged = chunk.to_record_batch().column("Tensor:data")[0].as_py()[0]["buffer"]
    assert np.array_equal(np.asarray(logged, np.float32), data)
    assert has_footer(target)


def test_a_save_without_footer_is_complete_and_rerun_says_nothing(tmp_path, capfd):
    target = tmp_path / "a.rrd"
    rec = rr.RecordingStream("vggt_attn_rerun")
    with open_sinks(rec, SinkPlan(Outputs(save=target), footer=False)) as sinks:
        data = _log_noise(rec)
        commit(sinks.finish())
    (chunk,) = rr.chunk.RrdReader(target).stream().filter(content="/noise")
    logged = chunk.to_record_batch().column("Tensor:data")[0].as_py()[0]["buffer"]
    assert np.array_equal(np.asarray(logged, np.float32), data)
    assert not has_footer(target)
    assert capfd.readouterr().err == ""  # no Rust warning line about the missing footer


def test_an_error_while_logging_leaves_no_file(tmp_path):
    rec = rr.RecordingStream("vggt_attn_rerun")
    with pytest.raises(RuntimeError, match="mid-run"), open_sinks(rec, SinkPlan(Outputs(save=tmp_path / "a.rrd"))):
        _log_noise(rec)
        raise RuntimeError("mid-run")
    assert list(tmp_path.iterdir()) == []


def test_save_with_serve_writes_the_whole_file(tmp_path):
    target = tmp_path / "a.rrd"
    plan = SinkPlan(Outputs(save=target, serve=True), grpc_port=_free_port(), web_port=_free_port(), open_browser=False)
    rec = rr.RecordingStream("vggt_attn_rerun")
    with open_sinks(rec, plan) as sinks:
        data = _log_noise(rec)
        commit(sinks.finish())
        sinks.close()
    (chunk,) = rr.chunk.RrdReader(target).stream().filter(content="/noise")
    logged = chunk.to_record_batch().column("Tensor:data")[0].as_py()[0]["buffer"]
    assert np.array_equal(np.asarray(logged, np.float32), data)
