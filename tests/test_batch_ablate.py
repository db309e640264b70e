"""Dataset mode with --ablate: per-scene effect tables (api.ablate per scene) and their summary over scenes.

Two synthetic scenes of 2 photos (tests.helpers.make_scenes), the tiny model, global attention of
blocks 0-1: 8 head ablations (2 blocks x 4 heads) per scene.
"""

import dataclasses
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from vggt_attn_rerun.analysis.effects import EFFECTS
from vggt_attn_rerun.api.ablation import ablate
from vggt_attn_rerun.batch.inputs import discover_scenes
from vggt_attn_rerun.batch.job import EFFECT_SCHEMA, SceneRunner, scene_images
from vggt_attn_rerun.batch.study import run_study
from vggt_attn_rerun.cli.main import run
from vggt_attn_rerun.core.interventions import HeadAblation
from vggt_attn_rerun.core.introspect import model_patch_size
from vggt_attn_rerun.errors import UserError

from .helpers import STUDY_OPTIONS, make_scenes

OPTIONS = dataclasses.replace(STUDY_OPTIONS, kinds=("global",), blocks="0-1", ablate="heads", ablation="mean")
HEADS = 4


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablate")
    scenes = make_scenes(root / "scenes", ["a", "b"])
    run_study(scenes, root / "out", OPTIONS, progress=False)
    return scenes, root / "out"


def test_each_scene_has_an_effect_table_with_one_row_per_head_ablation(study):
    _, out = study
    for name in ("a", "b"):
        table = pq.read_table(out / "scenes" / f"{name}.effects.parquet")
        assert table.schema.equals(EFFECT_SCHEMA)
        rows = list(zip(table["kind"].to_pylist(), table["block"].to_pylist(), table["head"].to_pylist(),
                        table["ablation"].to_pylist(), strict=True))  # fmt: skip
        assert rows == [("global", b, h, "mean") for b in (0, 1) for h in range(HEADS)]
        assert set(table["scene"].to_pylist()) == {name}


def test_each_effect_of_a_scene_equals_api_ablate_on_that_scene_alone(study):
    scenes, out = study
    runner = SceneRunner(OPTIONS)
    scene = discover_scenes(scenes)[1]
    images = scene_images(scene, OPTIONS, model_patch_size(runner.model))
    alone = [HeadAblation("global", b, h, "mean") for b in (0, 1) for h in range(HEADS)]
    effects = ablate(runner.model, images, alone, batch_size=1)
    table = pq.read_table(out / "scenes" / f"{scene.name}.effects.parquet")
    for e in EFFECTS:
        np.testing.assert_allclose(table[e].to_numpy(), effects.values[e], rtol=1e-6, atol=1e-9, err_msg=e)
    assert np.ptp(table["points"].to_numpy()) > 0  # the heads differ: the comparison can fail


def test_the_effects_summary_mean_is_the_mean_of_the_scenes_values(study):
    _, out = study
    per_scene = [pq.read_table(out / "scenes" / f"{n}.effects.parquet").to_pylist() for n in ("a", "b")]
    summary = pq.read_table(out / "effects_summary.parquet").to_pylist()
    assert len(summary) == len(EFFECTS) * 2 * HEADS
    for row in summary:
        values = [r[row["effect"]] for rows in per_scene for r in rows
                  if (r["kind"], r["block"], r["head"]) == (row["kind"], row["block"], row["head"])]  # fmt: skip
        assert len(values) == 2 and row["n"] == 2
        assert row["mean"] == pytest.approx(sum(values) / 2, rel=1e-12)
        assert row["low"] <= row["mean"] <= row["high"]


def test_the_effects_summary_lists_the_largest_effect_first_in_summary_md(study):
    _, out = study
    summary = pq.read_table(out / "effects_summary.parquet").to_pylist()
    points = [r for r in summary if r["effect"] == "points"]
    assert [r["mean"] for r in points] == sorted((r["mean"] for r in points), reverse=True)
    text = (out / "summary.md").read_text()
    top = points[0]
    assert "## Ablation effects (largest first)" in text
    assert f"| 1 | global | {top['block']} | {top['head']} | mean |" in text.split("### points:")[1]


def test_a_resumed_ablation_study_skips_the_done_scenes_and_refuses_other_ablation_settings(study, monkeypatch):
    scenes, out = study
    seen = []
    original = SceneRunner.__call__
    monkeypatch.setattr(SceneRunner, "__call__", lambda self, s: seen.append(s.name) or original(self, s))
    report = run_study(scenes, out, OPTIONS, progress=False)
    assert seen == [] and report.skipped == 2
    with pytest.raises(UserError, match="other options"):
        run_study(scenes, out, dataclasses.replace(OPTIONS, ablation="zero"), progress=False)
    with pytest.raises(UserError, match="ablate: 'heads' there, None now"):
        run_study(scenes, out, dataclasses.replace(OPTIONS, ablate=None, ablation="zero"), progress=False)


def test_a_scene_without_its_effect_table_runs_again(study, tmp_path):
    scenes, done = study
    out = shutil.copytree(done, tmp_path / "out")
    (out / ".lock").unlink(missing_ok=True)
    (out / "scenes" / "b.effects.parquet").unlink()
    report = run_study(scenes, out, OPTIONS, progress=False)
    assert (report.skipped, report.done) == (1, 1)
    assert (out / "scenes" / "b.effects.parquet").exists()


BAD_FLAGS = [
    (["--ablate", "neurons"], "valid are heads, blocks, knockout"),
    (["--ablate", "heads", "--ablation", "half"], "valid are zero, mean"),
]


@pytest.mark.parametrize(("flags", "words"), BAD_FLAGS)
def test_a_bad_ablate_value_is_one_line_and_exit_2(tmp_path, capsys, flags, words):
    scenes = make_scenes(tmp_path / "scenes", ["a"])
    code = run(["batch", str(scenes), "--out", str(tmp_path / "out"), "--model", "tiny", *flags])
    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
