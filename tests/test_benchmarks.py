"""The benchmarks run, write what they promise, and compare against a correct baseline."""

import json

import pytest
import torch

from benchmarks.baseline import FullMatrixHooks, baseline_bytes, first_frames_over_budget
from benchmarks.common import ProbeConfig, measure_memory
from benchmarks.report import markdown, verdicts
from benchmarks.rrd_suites import PARTS, chunk_part
from benchmarks.run import main, run_benchmarks, write_results
from benchmarks.suites import Settings
from vggt_attn_rerun.core.introspect import model_layout
from vggt_attn_rerun.legacy.full import capture_full, full_matrix_bytes
from vggt_attn_rerun.testing import tiny_vggt

from .helpers import frozen_gc


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and x > 0


def _smallest_settings(tmp_path) -> Settings:
    return Settings(
        isolate=False,  # memory in this process: seconds, not a child per configuration
        frames=1, size=(28, 28), queries=(1, 16), repeats=2,
        scaling_frames=(1, 2), scaling_size=(28, 28), scaling_queries=(2,),
        recording_frames=(1,), recording_size=(28, 28), recording_queries=1,
        e2e=(("tiny", 1, 28),), work_dir=str(tmp_path / "work"), log=lambda _: None,
    )  # fmt: skip


@pytest.fixture
def one_thread():
    """Toy sizes gain nothing from threads, and on a busy machine OpenMP barriers make them crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_smoke_run_writes_markdown_and_json_with_positive_numbers(tmp_path, one_thread):
    with frozen_gc():
        res = run_benchmarks(_smallest_settings(tmp_path), profile="test")
    md, js = write_results(res, tmp_path / "out", "smoke")
    data = json.loads(js.read_text())
    assert md.read_text() == markdown(data)

    m = data["machine"]
    assert {"cpu", "cores", "ram_bytes", "torch", "device"} <= set(m) and _positive(m["cores"])

    o = data["overhead"]
    assert _positive(o["plain"]["time_s"]) and _positive(o["plain"]["peak_bytes"])
    ours = {r["queries"]: r for r in o["rows"] if r["mode"] == "ours"}
    assert set(ours) == {1, 16}
    for r in [*ours.values(), next(r for r in o["rows"] if r["mode"] == "baseline")]:
        for key in ("time_s", "time_ratio", "peak_bytes", "memory_ratio", "stored_bytes"):
            assert _positive(r[key]), (key, r)
    assert [t["name"] for t in o["targets"]] == ["time ratio at Q=16", "memory ratio at Q=16"]
    for t in o["targets"]:
        assert t["pass"] == (t["value"] <= t["limit"]), t
    assert len(verdicts(data)) == 2

    sc = data["scaling"]
    assert [r["frames"] for r in sc["rows"]] == [1, 2]
    for r in sc["rows"]:
        assert r["baseline"]["status"] == "ran" and r["ours"]["2"]["status"] == "ran"
        assert r["baseline"]["stored_bytes"] > r["ours"]["2"]["stored_bytes"] > 0
    assert _positive(sc["baseline_over_budget_from_frames"])

    rc = data["recording"]
    assert "skipped" not in rc, rc
    (row,) = rc["rows"]
    assert _positive(row["log_s"]) and _positive(row["rrd_bytes"]) and set(row["parts"]) == set(PARTS)
    assert _positive(row["parts"]["attention"]["file_bytes"])
    assert _positive(row["parts"]["images"]["file_bytes"])

    e2e = data["e2e"]
    assert "skipped" not in e2e, e2e
    (row,) = e2e["rows"]
    assert "skipped" not in row, row
    for key in ("wall_s", "load_s", "forward_s", "logging_s"):
        assert _positive(row[key]), (key, row)


@pytest.mark.slow
def test_memory_probe_in_a_fresh_process_sees_the_stored_rows():
    cfg = ProbeConfig("tiny", "cpu", 2, 56, 56, "ours", 8)
    r = measure_memory(cfg, isolate=True)
    assert "fresh child process" in r["memory_method"]
    assert r["stored_bytes"] == 2 * 4 * 8 * 4 * 2 * (5 + 16) * 4  # kinds x L x Q x H x N x fp32
    assert _positive(r["extra_bytes"]) and r["peak_bytes"] > r["weights_bytes"]


def test_full_matrix_baseline_equals_capture_full(scene_images, one_thread):
    model = tiny_vggt(seed=0)
    with FullMatrixHooks(model) as hooks, torch.no_grad():
        model(scene_images)
    _, maps, layout = capture_full(model, scene_images, blocks=range(4))
    assert set(hooks.maps) == set(maps) == {(k, b) for k in ("frame", "global") for b in range(4)}
    for key, want in maps.items():
        assert hooks.maps[key].shape == want.shape
        torch.testing.assert_close(hooks.maps[key], want, atol=1e-6, rtol=0)
    kept = full_matrix_bytes(layout, 4, ("frame", "global"), 4)
    assert hooks.nbytes() == kept < baseline_bytes(layout, 4, 4)
    # the hooks are gone after the with block
    attn = model.aggregator.global_blocks[0].attn
    assert not attn._forward_pre_hooks


def test_budget_prediction_finds_the_first_frame_count_over_budget():
    model = tiny_vggt(seed=0)
    lay1 = model_layout(model, 1, 224, 224)
    s = first_frames_over_budget(lay1, 4, 4, 1 << 30)
    from dataclasses import replace

    assert (
        baseline_bytes(replace(lay1, num_frames=s), 4, 4)
        > 1 << 30
        >= baseline_bytes(replace(lay1, num_frames=s - 1), 4, 4)
    )


@pytest.mark.parametrize(
    ("path", "timelines", "archetypes", "part"),
    [
        ("/world/frames/0/image", [], {"rerun.archetypes.EncodedImage"}, "images"),
        ("/world/points", [], {"rerun.archetypes.Points3D"}, "point_clouds"),
        ("/world/attention/q0/global", ["block", "log_time"], {"rerun.archetypes.Points3D"}, "attention"),
        ("/queries/q0/global/maps", [], {"rerun.archetypes.Tensor"}, "attention"),
        ("/world/frames/0", [], {"rerun.archetypes.Transform3D"}, "other"),
    ],
)
def test_recording_chunks_are_sorted_into_parts(path, timelines, archetypes, part):
    assert chunk_part(path, timelines, archetypes) == part


def test_command_line_rejects_an_unknown_section(capsys):
    assert main(["--only", "overhead,nope"]) == 2
    assert "unknown section 'nope'" in capsys.readouterr().err


def test_command_line_rejects_an_option_of_the_other_profile(capsys):
    assert main(["--gpu-check", "--frames", "2"]) == 2
    assert "--frames does not apply to --gpu-check" in capsys.readouterr().err
    assert main(["--rounds", "2"]) == 2
    assert "--rounds does not apply to profiles tiny" in capsys.readouterr().err


def test_qk_cache_benchmark_measures_the_formula_and_rows_equal_to_the_capture(tmp_path):
    from benchmarks import qk_cache_at_vggt_size as bench

    args = ["--frames", "2", "--side", "56", "--embed-dim", "64", "--depth", "2", "--heads", "4", "--out", tmp_path]
    assert bench.main([str(a) for a in args]) == 0
    result = json.loads((tmp_path / "qk-cache.json").read_text())
    # 2 frames x 2 (q, k) x P = 21 tokens x C = 64 x 4 bytes x 2 blocks x 2 kinds
    assert result["cache_bytes"] == result["formula_bytes"] == 2 * 2 * 21 * 64 * 4 * 2 * 2
    assert result["rows_equal_capture"] is True and result["rows_one_query_s"] > 0
    assert "QKCache.nbytes()" in (tmp_path / "qk-cache.md").read_text()
