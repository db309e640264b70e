"""Dataset mode on the local engine: scenes in, per-scene tables and the dataset table out.

Scenes are made here: 2 synthetic photos of 56x84 pixels each (VGGT's crop at --image-size 84),
a 2x2 query grid, the tiny model (4 blocks x 4 heads, both kinds): 32 rows per scene.
"""

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from vggt_attn_rerun.batch import store
from vggt_attn_rerun.batch.inputs import Scene, discover_scenes
from vggt_attn_rerun.batch.job import METRIC_COLUMNS, SCHEMA, SceneRunner, StudyOptions
from vggt_attn_rerun.batch.progress import LogProgress
from vggt_attn_rerun.batch.study import run_study
from vggt_attn_rerun.cli.main import run
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.io.atomic import PARTIAL_MARK

from .helpers import STUDY_OPTIONS, entities, make_scenes

OPTIONS = STUDY_OPTIONS
ROWS_PER_SCENE = 2 * 4 * 4  # kinds x blocks x heads


def _calls(monkeypatch):
    """Record the scenes the runner is asked to process, in order."""
    seen = []
    original = SceneRunner.__call__

    def spy(self, scene):
        seen.append(scene.name)
        return original(self, scene)

    monkeypatch.setattr(SceneRunner, "__call__", spy)
    return seen


@pytest.fixture(scope="module")
def done_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    scenes = make_scenes(root / "scenes", ["a", "b", "c"])
    report = run_study(scenes, root / "out", OPTIONS, progress=False)
    return root, report


def test_a_folder_of_scene_folders_gives_its_scenes_in_name_order(tmp_path):
    for name in ("b", "a", ".hidden", "c"):
        (tmp_path / name).mkdir()
    (tmp_path / "notes.txt").write_text("x")
    assert [s.name for s in discover_scenes(tmp_path)] == ["a", "b", "c"]


def test_a_manifest_of_lines_and_a_csv_manifest_keep_their_order_and_resolve_relative_paths(tmp_path):
    (tmp_path / "list.txt").write_text("# scenes\nz/kitchen\n\n/abs/fern  # comment\n")
    assert discover_scenes(tmp_path / "list.txt") == [
        Scene("kitchen", tmp_path / "z/kitchen"),
        Scene("fern", Path("/abs/fern")),
    ]
    (tmp_path / "list.csv").write_text("scene,path\nsecond,b\nfirst,a/x\n")
    assert discover_scenes(tmp_path / "list.csv") == [Scene("second", tmp_path / "b"), Scene("first", tmp_path / "a/x")]


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("m.csv", "scene,path\ns,a\ns,b\n", "used twice"),
        ("m.csv", "scene,folder\ns,a\n", "header scene,path"),
        ("m.txt", "# nothing\n", "no scenes"),
    ],
)
def test_bad_manifests_are_refused_with_the_reason(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(UserError, match=message):
        discover_scenes(tmp_path / name)


def test_scene_keys_are_safe_file_names_and_stay_unique():
    a, b = Scene("room 1/left", Path(".")), Scene("room 1:left", Path("."))
    assert "/" not in a.key and " " not in a.key and a.key != b.key
    assert Scene("kitchen-2", Path(".")).key == "kitchen-2"


def test_each_scene_is_one_row_group_of_one_row_per_kind_block_and_head(done_study):
    root, report = done_study
    assert (report.done, report.skipped, report.failed) == (3, 0, [])
    combined = pq.ParquetFile(root / "out" / "scenes.parquet")
    assert combined.metadata.num_row_groups == 3
    for i, name in enumerate("abc"):
        group = combined.read_row_group(i)
        assert set(group["scene"].to_pylist()) == {name} and group.num_rows == ROWS_PER_SCENE
    table = pq.read_table(root / "out" / "scenes" / "a.parquet")
    assert table.schema == SCHEMA
    keys = set(zip(table["kind"].to_pylist(), table["block"].to_pylist(), table["head"].to_pylist(), strict=True))
    assert len(keys) == ROWS_PER_SCENE


def test_global_rows_have_geometry_scores_and_frame_rows_do_not(done_study):
    root, _ = done_study
    t = pq.read_table(root / "out" / "scenes" / "b.parquet")
    col = {name: t[name].to_numpy(zero_copy_only=False) for name in t.column_names}
    glob, frame = col["kind"] == "global", col["kind"] == "frame"
    for m in ("correspondence_score", "correspondence_null", "peak_dist", "epipolar_dist", "epipolar_null"):
        assert np.isfinite(col[m][glob]).all() and np.isnan(col[m][frame]).all()
    assert set(col["reference"][glob]) == {"model"} and set(col["reference"][frame]) == {""}
    score, null = col["correspondence_score"], col["correspondence_null"]
    np.testing.assert_allclose(col["correspondence_gain"][glob], (score - null)[glob])
    np.testing.assert_allclose(col["peak_dist_gain"][glob], (col["peak_dist_null"] - col["peak_dist"])[glob])
    np.testing.assert_allclose(col["epipolar_gain"][glob], (col["epipolar_null"] - col["epipolar_dist"])[glob])
    masses = sum(col[m] for m in ("own_view_mass", "other_views_mass", "camera_mass", "register_mass"))
    np.testing.assert_allclose(masses, 1.0, atol=1e-5)
    assert (np.abs(col["other_views_mass"][frame]) < 1e-6).all()
    assert (col["epipolar_pairs"][glob] == 4).all()  # 4 queries x 1 other view


def test_resume_skips_done_scenes_and_runs_only_new_ones(tmp_path, monkeypatch):
    scenes = make_scenes(tmp_path / "scenes", ["a", "b"])
    run_study(scenes, tmp_path / "out", OPTIONS, progress=False)
    before = (tmp_path / "out" / "scenes" / "a.parquet").stat().st_mtime_ns
    make_scenes(tmp_path / "more", ["c"])
    (tmp_path / "more" / "c").rename(scenes / "c")
    seen = _calls(monkeypatch)
    report = run_study(scenes, tmp_path / "out", OPTIONS, progress=False)
    assert seen == ["c"] and (report.skipped, report.done) == (2, 1)
    assert (tmp_path / "out" / "scenes" / "a.parquet").stat().st_mtime_ns == before
    assert pq.ParquetFile(tmp_path / "out" / "scenes.parquet").metadata.num_row_groups == 3


def test_a_corrupt_scene_lands_in_failures_jsonl_and_the_others_go_on(tmp_path):
    scenes = make_scenes(tmp_path / "scenes", ["a", "c"])
    make_scenes(scenes, ["b"])
    (scenes / "b" / "00.png").write_bytes(b"not a png at all")
    report = run_study(scenes, tmp_path / "out", OPTIONS, progress=False)
    assert report.failed == ["b"] and report.done == 2
    lines = (tmp_path / "out" / "failures.jsonl").read_text().splitlines()
    entry = json.loads(lines[0])
    assert len(lines) == 1 and entry["scene"] == "b" and "cannot read image" in entry["reason"]
    assert not (tmp_path / "out" / "scenes" / "b.parquet").exists()
    assert sorted(set(pq.read_table(tmp_path / "out" / "scenes.parquet")["scene"].to_pylist())) == ["a", "c"]


def test_a_failed_scene_is_retried_by_the_next_run(tmp_path, monkeypatch):
    scenes = make_scenes(tmp_path / "scenes", ["a"])
    (scenes / "b").mkdir()
    run_study(scenes, tmp_path / "out", OPTIONS, progress=False)
    make_scenes(tmp_path / "fixed", ["b"])
    for photo in ("00.png", "01.png"):
        (tmp_path / "fixed" / "b" / photo).rename(scenes / "b" / photo)
    seen = _calls(monkeypatch)
    report = run_study(scenes, tmp_path / "out", OPTIONS, progress=False)
    assert seen == ["b"] and report.failed == [] and not (tmp_path / "out" / "failures.jsonl").exists()


def test_ctrl_c_leaves_only_complete_scenes_and_a_rerun_finishes_the_rest(tmp_path, monkeypatch):
    scenes = make_scenes(tmp_path / "scenes", ["a", "b", "c"])
    original = store.pq.write_table

    def interrupted_write(table, where, **kw):
        if table["scene"][0].as_py() == "b":
            where.write(b"PAR1 half a file")
            raise KeyboardInterrupt
        return original(table, where, **kw)

    monkeypatch.setattr(store.pq, "write_table", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        run_study(scenes, tmp_path / "out", OPTIONS, progress=False)
    files = sorted(p.name for p in (tmp_path / "out" / "scenes").iterdir())
    assert files == ["a.parquet"]
    assert not (tmp_path / "out" / "summary.parquet").exists()
    monkeypatch.setattr(store.pq, "write_table", original)
    left_by_a_killed_run = tmp_path / "out" / "scenes" / f".c.parquet{PARTIAL_MARK}x1y2"
    left_by_a_killed_run.write_bytes(b"PAR1 half")
    seen = _calls(monkeypatch)
    run_study(scenes, tmp_path / "out", OPTIONS, progress=False)
    assert seen == ["b", "c"]
    pq.read_table(tmp_path / "out" / "scenes" / "b.parquet")  # whole
    assert sorted(p.name for p in (tmp_path / "out" / "scenes").iterdir()) == ["a.parquet", "b.parquet", "c.parquet"]


def test_resuming_with_other_options_is_refused(done_study):
    root, _ = done_study
    other = StudyOptions(model="tiny", grid=(1, 2), image_size=84)
    with pytest.raises(UserError, match="other options.*grid"):
        run_study(root / "scenes", root / "out", other, progress=False)


def test_a_non_empty_folder_without_a_study_is_not_used_as_output(tmp_path):
    scenes = make_scenes(tmp_path / "scenes", ["a"])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        run_study(scenes, tmp_path / "out", OPTIONS, progress=False)


def test_the_first_frames_option_uses_the_first_photos_by_name_and_refuses_short_scenes(tmp_path):
    scenes = make_scenes(tmp_path / "scenes", ["long"], frames=3)
    make_scenes(tmp_path / "scenes2", ["short"], frames=1)
    (tmp_path / "scenes2" / "short").rename(scenes / "short")
    report = run_study(scenes, tmp_path / "out", StudyOptions(**{**OPTIONS.__dict__, "frames": 2}), progress=False)
    assert report.failed == ["short"]
    assert set(pq.read_table(tmp_path / "out" / "scenes" / "long.parquet")["frames"].to_pylist()) == {2}


def test_rrd_option_writes_each_scenes_recording(tmp_path):
    import rerun as rr

    scenes = make_scenes(tmp_path / "scenes", ["a"])
    run_study(scenes, tmp_path / "out", StudyOptions(**{**OPTIONS.__dict__, "rrd": True}), progress=False)
    rrd = tmp_path / "out" / "scenes" / "a.rrd"
    entities = {c.entity_path for c in rr.chunk.RrdReader(rrd).stream()}
    assert "/world/frames/1/image" in entities and "/queries/q3/global/maps" in entities


def test_a_scenes_recording_streams_into_a_file_that_the_study_moves_in(tmp_path):
    scenes = make_scenes(tmp_path / "scenes", ["a"])
    options = StudyOptions(**{**OPTIONS.__dict__, "rrd": True})
    runner = SceneRunner(options)  # its temporary folder holds the file until the study moves it
    outcome = runner(Scene("a", scenes / "a"))
    assert isinstance(outcome.rrd, Path) and outcome.rrd.stat().st_size > 0  # on disk, not bytes in memory
    folder = store.StudyFolder(tmp_path / "out", options)
    folder.open()
    folder.save(outcome)
    assert not outcome.rrd.exists()
    assert "/queries/q3/global/maps" in entities(tmp_path / "out" / "scenes" / "a.rrd")


def test_the_cli_runs_a_study_and_refuses_bad_input_before_the_model(tmp_path, capsys):
    scenes = make_scenes(tmp_path / "scenes", ["a"])
    args = ["batch", str(scenes), "--out", str(tmp_path / "out"), "--model", "tiny", "--query-grid", "2x2",
            "--image-size", "84"]  # fmt: skip
    assert run(args) == 0
    err = capsys.readouterr().err
    assert "1 scenes done, 0 skipped" in err and "scenes 1/1 (100%)" in err  # progress, as a log line
    assert run(args) == 0 and "0 scenes done, 1 skipped" in capsys.readouterr().err
    assert run([*args[:3], str(tmp_path / "out2"), "--workers", "2"]) == 2
    assert "only with --engine ray" in capsys.readouterr().err
    assert run(["batch", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert run([*args[:3], str(scenes / "inside"), "--model", "tiny"]) == 2
    assert "inside SCENES" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_progress_in_a_log_is_a_line_per_interval_with_scenes_per_second_and_an_eta():
    now, out = [0.0], io.StringIO()
    bar = LogProgress(4, interval=10, stream=out, clock=lambda: now[0])
    for t, failed in ((5, 0), (10, 0), (12, 1), (16, 1)):  # the last scene always reports
        now[0] = t
        bar.set_postfix(failed=failed)
        bar.update()
    assert out.getvalue().splitlines() == [
        "scenes 2/4 (50%), 0.2 scenes/s, ETA 00:10, 0 failed",
        "scenes 4/4 (100%), 0.25 scenes/s, ETA 00:00, 1 failed",
    ]


def test_every_metric_column_is_in_the_schema():
    assert [f.name for f in SCHEMA][-len(METRIC_COLUMNS) :] == list(METRIC_COLUMNS)


def test_a_scene_with_one_photo_is_refused_and_never_averaged_in(tmp_path):
    scenes = make_scenes(tmp_path / "scenes", ["a", "b"])
    make_scenes(tmp_path / "scenes", ["one"], frames=1)
    report = run_study(scenes, tmp_path / "out", OPTIONS, progress=False)
    assert report.failed == ["one"] and report.done == 2
    failures = [json.loads(ln) for ln in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert [f["scene"] for f in failures] == ["one"] and "at least 2 views" in failures[0]["reason"]
    combined = pq.read_table(tmp_path / "out" / "scenes.parquet")
    assert set(combined["scene"].to_pylist()) == {"a", "b"}


def test_scenes_with_too_few_photos_are_refused_before_the_model_loads(tmp_path, monkeypatch):
    import vggt_attn_rerun.batch.job as job

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(job, "load_model", no_model)
    scenes = make_scenes(tmp_path / "scenes", ["x", "y"], frames=1)
    with pytest.raises(UserError, match="no scene can run: scene x has 1 photo"):
        run_study(scenes, tmp_path / "out", OPTIONS, progress=False)
    failed = [json.loads(line)["scene"] for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert failed == ["x", "y"]
