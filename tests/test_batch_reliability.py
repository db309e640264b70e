"""Dataset mode when things go wrong: two runs on one folder, damaged tables on resume, options
the model cannot take, output folders that cannot be written, odd manifests and scene folders.
Each ends in one clear line (or one warning line) and a folder a re-run can go on from.

Scenes are 2 synthetic photos of 56x84 pixels, the tiny model, a 2x2 query grid."""

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vggt_attn_rerun.batch import job
from vggt_attn_rerun.batch.inputs import Scene, discover_scenes
from vggt_attn_rerun.batch.job import SCHEMA, StudyOptions
from vggt_attn_rerun.batch.store import STUDY_FILE, StudyFolder
from vggt_attn_rerun.batch.study import run_study
from vggt_attn_rerun.cli.main import run
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.io.atomic import PARTIAL_MARK

from .helpers import make_scenes

OPTIONS = StudyOptions(model="tiny", grid=(2, 2), image_size=84, device="cpu")
FLAGS = ["--model", "tiny", "--query-grid", "2x2", "--image-size", "84", "--device", "cpu"]


def batch(args, capsys) -> tuple[int, list[str]]:
    code = run(["batch", *map(str, args)])
    return code, capsys.readouterr().err.splitlines()


@pytest.fixture
def no_model(monkeypatch):
    """These problems must be found before the model loads."""
    monkeypatch.setattr(job, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))


@pytest.fixture
def scenes(tmp_path) -> Path:
    return make_scenes(tmp_path / "scenes", ["a", "b"])


# -- one folder, one run -----------------------------------------------------------------------


def test_a_second_run_on_the_same_folder_is_refused_in_one_line_and_touches_nothing(scenes, tmp_path, capsys):
    out = tmp_path / "out"
    folder = StudyFolder(out, OPTIONS)
    with folder.locked():  # the first run, still working
        partial = out / f".summary.md{PARTIAL_MARK}x"
        partial.write_text("being written")
        code, err = batch([scenes, "--out", out, *FLAGS], capsys)
        assert partial.exists()
    assert code == 1
    assert err == [f"error: --out {out}: another batch run is using this folder (process {os.getpid()}); "
                   "wait for it to end, or use another --out"]  # fmt: skip
    assert not (out / "scenes" / "a.parquet").exists()


def test_the_lock_is_free_again_after_a_run(scenes, tmp_path):
    out = tmp_path / "out"
    run_study(scenes, out, OPTIONS, progress=False)
    with StudyFolder(out, OPTIONS).locked():
        pass


# -- resuming over damaged tables ----------------------------------------------------------------


def _damage(path: Path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "emptied":
        path.write_bytes(b"")
    else:  # other columns
        pq.write_table(pa.table({"x": [1, 2]}), path)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_damaged_tables_of_finished_scenes_are_run_again_and_the_dataset_table_is_whole(tmp_path):
    scenes = make_scenes(tmp_path / "scenes", ["a", "b", "c"])
    out = tmp_path / "out"
    run_study(scenes, out, OPTIONS, progress=False)
    good = pq.read_table(out / "scenes" / "a.parquet")
    for name, how in zip("abc", ("truncated", "emptied", "other columns"), strict=True):
        _damage(out / "scenes" / f"{name}.parquet", how)
    with pytest.warns(UserWarning, match=r"the table of finished scene a and 2 more could not be read back"):
        report = run_study(scenes, out, OPTIONS, progress=False)
    assert (report.done, report.skipped, report.failed) == (3, 0, [])
    redone = pq.read_table(out / "scenes" / "a.parquet")
    assert redone.schema == SCHEMA and redone.select(["scene", "kind", "block", "head"]).equals(
        good.select(["scene", "kind", "block", "head"])
    )
    combined = pq.read_table(out / "scenes.parquet")
    assert combined.schema == SCHEMA and combined.num_rows == 3 * good.num_rows
    assert combined["own_view_mass"].null_count == 0


# -- options the model cannot take: checked once, and study.json only once something worked ----


def test_blocks_the_model_lacks_is_one_usage_line_and_binds_nothing(scenes, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = batch([scenes, "--out", out, *FLAGS, "--blocks", "99"], capsys)
    assert (code, err) == (2, ["error: --blocks 99: blocks '99' out of range: valid blocks are 0..3"])
    assert not (out / STUDY_FILE).exists()
    code, err = batch([scenes, "--out", out, *FLAGS], capsys)  # the corrected command
    assert code == 0, err
    assert json.loads((out / STUDY_FILE).read_text())["options"]["blocks"] == "all"


def test_a_missing_model_path_is_a_usage_error_before_anything(scenes, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = batch([scenes, "--out", out, *FLAGS, "--model", tmp_path / "no.safetensors"], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: model file {tmp_path / 'no.safetensors'} ")
    assert not out.exists()


def test_a_query_grid_larger_than_any_frame_is_one_usage_line(scenes, tmp_path, capsys):
    code, err = batch([scenes, "--out", tmp_path / "out", *FLAGS, "--query-grid", "100x100"], capsys)
    assert (code, err) == (2, ["error: --query-grid 100x100: at --image-size 84 a frame has at most 6x6 patches "
                               "(rows x columns); use at most 6x6"])  # fmt: skip


def test_a_frame_no_scene_has_is_one_usage_line_before_the_model(scenes, tmp_path, no_model, capsys):
    out = tmp_path / "out"
    code, err = batch([scenes, "--out", out, *FLAGS, "--frame", "99"], capsys)
    assert (code, err) == (2, [f"error: no scene can run: scene a has 2 photos: --frame 99 is not one of them; ... "
                               f"(every scene is a line of {out / 'failures.jsonl'})"])  # fmt: skip
    assert not (out / STUDY_FILE).exists()


def test_a_frame_beyond_frames_is_refused_with_the_options(scenes, tmp_path, no_model, capsys):
    code, err = batch([scenes, "--out", tmp_path / "out", *FLAGS, "--frames", "2", "--frame", "2"], capsys)
    assert code == 2 and err == ["error: --frame 2: --frames 2 keeps frames 0..1 (see vggt-attn-rerun batch --help)"]


# -- output folders that cannot be written ----------------------------------------------------------


def test_an_output_folder_under_a_file_is_one_usage_line(scenes, tmp_path, no_model, capsys):
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    code, err = batch([scenes, "--out", afile / "study", *FLAGS], capsys)
    assert (code, err) == (2, [f"error: --out {afile / 'study'}: {afile} is a file, not a folder "
                               "(see vggt-attn-rerun batch --help)"])  # fmt: skip


def test_an_output_folder_that_takes_no_files_is_one_usage_line(scenes, read_only_folder, no_model, capsys):
    folder = read_only_folder
    code, err = batch([scenes, "--out", folder / "study", *FLAGS], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: --out {folder / 'study'}: cannot write to folder {folder} (")


def test_an_output_folder_named_like_an_option_is_refused(scenes, tmp_path, no_model, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = batch([scenes, "--out=-rf", *FLAGS], capsys)
    assert code == 2 and err == ["error: --out -rf: a folder name starting with '-' reads as an option; rename it "
                                 "(see vggt-attn-rerun batch --help)"]  # fmt: skip


def test_scene_files_are_never_named_like_an_option():
    for name in ("-rf", "--help", "-", "..."):
        key = Scene(name, Path(".")).key
        assert not key.startswith(("-", ".")), key


# -- manifests and scene folders --------------------------------------------------------------------


def test_a_csv_manifest_with_a_byte_order_mark_is_read(tmp_path):
    (tmp_path / "m.csv").write_bytes("scene,path\nk,a\n".encode("utf-8-sig"))
    assert discover_scenes(tmp_path / "m.csv") == [Scene("k", tmp_path / "a")]


def test_a_text_manifest_with_a_byte_order_mark_names_its_first_folder_right(tmp_path):
    (tmp_path / "m.txt").write_bytes("kitchen\nfern\n".encode("utf-8-sig"))
    assert discover_scenes(tmp_path / "m.txt") == [
        Scene("kitchen", tmp_path / "kitchen"),
        Scene("fern", tmp_path / "fern"),
    ]


def test_csv_errors_name_the_line_of_the_file(tmp_path):
    (tmp_path / "m.csv").write_text('scene,path\n\nk,"a\nb"\n\n,x\n')
    with pytest.raises(UserError, match=rf"^manifest {tmp_path / 'm.csv'} line 6: needs a scene name and a path$"):
        discover_scenes(tmp_path / "m.csv")


def test_a_manifest_of_missing_folders_is_one_line_before_the_model(tmp_path, no_model, capsys):
    manifest = tmp_path / "m.txt"
    manifest.write_text("".join(f"/nowhere/{i}\n" for i in range(2000)))
    out = tmp_path / "out"
    code, err = batch([manifest, "--out", out, *FLAGS], capsys)
    assert (code, err) == (2, [f"error: no scene can run: scene 0: /nowhere/0 does not exist; ... "
                               f"(every scene is a line of {out / 'failures.jsonl'})"])  # fmt: skip
    assert len((out / "failures.jsonl").read_text().splitlines()) == 2000


def test_scenes_that_cannot_run_are_one_warning_and_the_others_run(scenes, tmp_path, capsys):
    os.symlink("loop", scenes / "loop")  # a link to itself
    (scenes / "empty").mkdir()
    out = tmp_path / "out"
    code, err = batch([scenes, "--out", out, *FLAGS], capsys)
    assert code == 0
    warnings = [line for line in err if line.startswith("warning:")]
    assert warnings == [f"warning: 2 of 4 scenes cannot run (scene empty: folder {scenes / 'empty'} holds no images: "
                        f"expected files ending in .png, .jpg, .jpeg, .webp, .bmp, .tif, .tiff; ...): each is a "
                        f"line of {out / 'failures.jsonl'}"]  # fmt: skip
    failures = {f["scene"]: f["reason"] for f in map(json.loads, (out / "failures.jsonl").read_text().splitlines())}
    assert failures["loop"] == f"scene loop: {scenes / 'loop'} is a symbolic link that loops or points nowhere"
    assert "2 scenes done, 0 skipped (done before), 2 failed" in err[-3]


def test_the_last_progress_line_counts_the_scene_that_failed_last(tmp_path, monkeypatch, capsys):
    scenes = make_scenes(tmp_path / "scenes", ["a", "b"])
    real = job.SceneRunner.__call__

    def fail_b(self, scene):
        return job.SceneOutcome(scene, error="boom") if scene.name == "b" else real(self, scene)

    monkeypatch.setattr(job.SceneRunner, "__call__", fail_b)
    run_study(scenes, tmp_path / "out", OPTIONS, progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("scenes ")]
    assert lines[-1].startswith("scenes 2/2 (100%)") and lines[-1].endswith(", 1 failed"), lines
