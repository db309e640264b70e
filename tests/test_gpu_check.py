"""The CUDA check profile of the benchmark runner: its dry mode (tiny model, CPU, toy sizes) runs every
step and reports numbers."""

import json
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from benchmarks import run
from benchmarks.check import CheckSettings
from benchmarks.exact import bit_identical, clamp_blocks, module_inputs, recompute_rows
from benchmarks.report import markdown
from benchmarks.rrd_suites import pick_photos
from benchmarks.run import main, run_check
from vggt_attn_rerun.core.capture import capture
from vggt_attn_rerun.core.introspect import find_aggregator, model_layout
from vggt_attn_rerun.core.tokens import Query
from vggt_attn_rerun.testing import synthetic_scene

from .helpers import frozen_gc

pytestmark = pytest.mark.slow  # the dry run spawns the CLI


@pytest.fixture(scope="module")
def one_photo(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(synthetic_scene(1, 56, 84)[0]).save(folder / "view.png")
    return folder


@pytest.fixture(scope="module")
def dry(tmp_path_factory, one_photo) -> dict:
    """One dry run of all five steps; the parsed JSON, with the markdown beside it under ``_md``."""
    out = tmp_path_factory.mktemp("gpu_check")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # toy sizes gain nothing from threads on a busy machine
    try:
        with frozen_gc():
            assert main(["--gpu-check", "--dry", "--out", str(out), "--name", "dry", "--photos", str(one_photo)]) == 0
    finally:
        torch.set_num_threads(threads)
    data = json.loads((out / "dry.json").read_text())
    data["_md"] = (out / "dry.md").read_text()
    return data


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0


def test_dry_run_finishes_every_step_in_order(dry):
    assert list(dry["steps"]) == ["exact", "overhead", "scale", "recording", "ablate", "cli"]
    assert {name: s["status"] for name, s in dry["steps"].items()} == dict.fromkeys(dry["steps"], "ok")
    assert all(_positive(s["seconds"]) for s in dry["steps"].values())


def test_dry_run_records_the_machine_and_writes_its_markdown(dry):
    assert dry["machine"]["torch"] == torch.__version__ and dry["machine"]["device"] == "cpu"
    md = dry.pop("_md")
    assert md == markdown(dry)


def test_dry_exactness_rows_match_the_recomputation_and_predictions_are_untouched(dry):
    exact = dry["steps"]["exact"]
    assert exact["blocks"] == [0, 3]  # 0, 12, 23 clamped to the tiny model's 4 blocks
    assert set(exact["dtypes"]) == {"float32", "bfloat16"}
    for dtype, r in exact["dtypes"].items():
        assert r["max_abs_error"] < 1e-5, dtype
        assert len(r["blocks"]) == 4 and all(b["pos_given"] and b["pos_is_grid"] for b in r["blocks"])
        assert all(b["row_sum_error"] < 1e-5 for b in r["blocks"])
        assert r["predictions_bit_identical"] is True and r["plain_forwards_bit_identical"] is True
    # bf16 really ran in bf16: its rows differ from fp32's, but only by rounding
    assert 0 < exact["dtypes"]["bfloat16"]["rows_vs_float32"]["max_abs"] < 0.1


def test_dry_overhead_and_scale_report_ratios_and_the_exact_bytes_kept(dry):
    o = dry["steps"]["overhead"]
    assert _positive(o["plain"]["time_s"]) and _positive(o["plain"]["peak_bytes"])
    assert [r["queries"] for r in o["rows"]] == [1, 16]
    for r in o["rows"]:
        assert all(_positive(r[k]) for k in ("time_s", "time_ratio", "peak_bytes", "memory_ratio")), r
        # [2 kinds, 4 blocks, Q, 4 heads, S * P tokens] fp32
        assert r["stored_bytes"] == 2 * 4 * r["queries"] * 4 * o["tokens"] * 4
    sc = dry["steps"]["scale"]
    assert [(r["frames"], r["status"]) for r in sc["rows"]] == [(2, "ok"), (4, "ok"), (8, "ok")]
    assert sc["largest_captured_frames"] == 8
    for r in sc["rows"]:
        assert r["capture"]["stored_bytes"] == r["rows_bytes"] == 2 * 4 * 4 * 4 * r["tokens"] * 4
        assert _positive(r["plain"]["peak_bytes"]) and _positive(r["capture"]["time_ratio"])
    base = sc["baseline"]
    attempt = base["attempt"]
    assert attempt["status"] == "ok" and attempt["frames"] == base["over_budget_from_frames"] - 1
    assert attempt["predicted_bytes"] <= base["budget_bytes"] and _positive(attempt["baseline"]["stored_bytes"])


def test_dry_recording_and_cli_report_times_sizes_and_the_memory_estimate(dry):
    rows = dry["steps"]["recording"]["rows"]
    assert [r["frames"] for r in rows] == [2, 3]
    for r in rows:
        assert r["status"] == "ok" and all(_positive(r[k]) for k in ("forward_s", "log_s", "rrd_bytes"))
    cli = dry["steps"]["cli"]
    assert cli["exit_code"] == 0 and _positive(cli["rrd_bytes"]) and _positive(cli["timings"]["forward_s"])
    assert "each used up to 2 times" in cli["photos"]
    assert _positive(cli["estimate"]["total"]) and _positive(cli["peak_bytes"])
    assert cli["estimate_over_peak"] == pytest.approx(cli["estimate"]["total"] / cli["peak_bytes"])


def test_dry_targets_include_the_fp32_exactness_pass(dry):
    names = {t["name"]: t for t in dry["targets"]}
    assert names["fp32 rows vs recomputation, max abs error"]["pass"] is True
    assert names["S = 8 captured"]["pass"] is True
    assert "capture time ratio, S = 2, Q = 16" in names


def test_recomputation_with_rope_lost_disagrees_with_the_captured_rows(tiny_model, scene_images):
    layout = model_layout(tiny_model, 3, 56, 84)
    queries = [Query.from_patch(layout, 1, 2, 3), Query.from_token(layout, 0)]
    with module_inputs(tiny_model, [1]) as inputs:
        res = capture(tiny_model, scene_images, queries, blocks=[1])
    attn = find_aggregator(tiny_model).global_blocks[1].attn
    x, pos = inputs[("global", 1)]
    right = recompute_rows(attn, x, pos, "global", layout, queries, None)
    wrong = recompute_rows(attn, x, torch.zeros_like(pos), "global", layout, queries, None)  # position 0: no rotation
    got = res.rows.probs["global"][0]
    assert (got - right).abs().max() < 1e-6
    assert (got - wrong).abs().max() > 1e-3


def test_bit_identical_sees_one_ulp_and_treats_nan_as_equal():
    a = {"x": torch.tensor([1.0, float("nan")]), "y": [torch.zeros(2)]}
    b = {"x": torch.tensor([1.0, float("nan")]), "y": [torch.zeros(2)]}
    assert bit_identical(a, b)
    b["x"][0] = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))
    assert not bit_identical(a, b)


def test_exactness_blocks_are_clamped_to_the_model_depth():
    assert clamp_blocks((0, 12, 23), 24) == (0, 12, 23)
    assert clamp_blocks((0, 12, 23), 4) == (0, 3)


def test_photos_are_cycled_when_the_folder_has_fewer_and_synthetic_when_it_has_none(tmp_path, one_photo):
    photos, note = pick_photos(one_photo, 3, tmp_path / "a", 56)
    assert len(photos) == 3 and len(set(photos)) == 3
    assert all(p.read_bytes() == (one_photo / "view.png").read_bytes() for p in photos)
    assert "1 there" in note
    photos, note = pick_photos(tmp_path / "missing", 2, tmp_path / "b", 56)
    assert len(photos) == 2 and all(p.is_file() for p in photos) and "synthetic" in note


def _run(tmp_path, steps, budgets, monkeypatch, fakes):
    monkeypatch.setattr(run, "STEPS", dict(fakes))
    settings = CheckSettings(model="tiny", device="cpu", work_dir=str(tmp_path))
    return run_check(settings, tmp_path, "r", steps, 60, budgets, log=lambda _: None)


def test_a_failing_step_is_recorded_and_the_next_steps_still_run(tmp_path, monkeypatch):
    def broken(ctx, entry):
        entry["partial"] = 1
        raise RuntimeError("boom")

    def fine(ctx, entry):
        entry["value"] = 2

    res = _run(tmp_path, ["exact", "overhead"], {}, monkeypatch, {"exact": broken, "overhead": fine})
    assert res["steps"]["exact"]["status"] == "error: RuntimeError: boom" and res["steps"]["exact"]["partial"] == 1
    assert res["steps"]["overhead"] == res["steps"]["overhead"] | {"status": "ok", "value": 2}


def test_a_step_past_its_budget_is_stopped_and_keeps_what_it_measured(tmp_path, monkeypatch):
    def slow(ctx, entry):
        entry["first"] = 1.0
        ctx.save()
        time.sleep(30)

    started = time.perf_counter()
    res = _run(tmp_path, ["exact"], {"exact": 1.5}, monkeypatch, {"exact": slow})
    assert time.perf_counter() - started < 10
    assert res["steps"]["exact"]["status"].startswith("stopped") and res["steps"]["exact"]["first"] == 1.0


def test_results_are_on_disk_before_the_next_step_starts(tmp_path, monkeypatch):
    seen = {}

    def first(ctx, entry):
        entry["value"] = 7

    def second(ctx, entry):
        seen.update(json.loads((tmp_path / "r.json").read_text())["steps"]["exact"])

    _run(tmp_path, ["exact", "overhead"], {}, monkeypatch, {"exact": first, "overhead": second})
    assert seen["status"] == "ok" and seen["value"] == 7


def test_a_step_stopped_by_its_budget_leaves_no_hook_on_the_model(tmp_path, monkeypatch):
    models = []

    def hooked(ctx, entry):
        models.append(ctx.model)
        find_aggregator(ctx.model).global_blocks[0].attn.register_forward_hook(lambda *a: None)
        time.sleep(30)

    res = _run(tmp_path, ["exact"], {"exact": 1.5}, monkeypatch, {"exact": hooked})
    assert res["steps"]["exact"]["status"].startswith("stopped")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in models[0].modules())


def test_dry_ablate_step_finds_the_no_op_bit_identical_and_the_head_ablation_exact(dry):
    a = dry["steps"]["ablate"]
    assert a["noop_bit_identical"] is True
    assert a["head_vs_zeroed_proj_max_abs"] < 1e-5 < a["head_changed_output_max_abs"]
    assert [r["batch_size"] for r in a["sweeps"]] == [1, 2] and all(r["status"] == "ok" for r in a["sweeps"])
    assert all(_positive(r["seconds_per_intervention"]) for r in a["sweeps"]) and _positive(a["knockout"]["seconds"])
