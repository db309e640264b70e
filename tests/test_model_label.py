"""A random, tiny or constructed model says what it is in every recording, whatever the entry point."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import Recording
from vggt_attn_rerun.api import record_attention
from vggt_attn_rerun.cli.main import run
from vggt_attn_rerun.core.images import images_from_tensor
from vggt_attn_rerun.core.loading import TINY_LABEL, load_model, model_label
from vggt_attn_rerun.io.runfile import load_run, save_run
from vggt_attn_rerun.testing import CONSTRUCTED_LABEL, matching_vggt, tiny_vggt
from vggt_attn_rerun.viz.blueprint import default_blueprint_for
from vggt_attn_rerun.viz.options import RecordingOptions
from vggt_attn_rerun.viz.paths import Paths

EXAMPLES = Path(__file__).parents[1] / "examples"


def _save(rec, path: Path) -> Path:
    rec.save(path)  # the stream buffered everything: the file gets it all
    rec.flush()
    rec.disconnect()
    return path


def _notes(path: Path) -> str:
    return Recording(path).static(Paths.notes, "TextDocument:text")[0]


def test_the_constructed_and_tiny_models_carry_their_labels():
    assert model_label(matching_vggt()) == CONSTRUCTED_LABEL
    assert model_label(tiny_vggt()) == TINY_LABEL
    assert model_label(load_model("tiny", arch="pi3")) == TINY_LABEL


def test_a_model_without_a_label_adds_no_notes_line(tmp_path, scene_images):
    model = tiny_vggt()
    del model.vggt_attn_rerun_label  # what a trained checkpoint looks like
    result, rec = record_attention(model, scene_images, ["0:p1,1"], blocks=[0], options=RecordingOptions())
    assert result.model_label is None and "Model:" not in _notes(_save(rec, tmp_path / "plain.rrd"))
    assert default_blueprint_for(result).root_container.contents[0].contents[0].name == "3D"


def test_python_api_recording_shows_the_constructed_label(tmp_path, scene_images):
    result, rec = record_attention(matching_vggt(), scene_images, ["0:p1,1"], blocks=[2])
    assert CONSTRUCTED_LABEL.note in _notes(_save(rec, tmp_path / "python.rrd"))
    scene = default_blueprint_for(result).root_container.contents[0].contents[0]
    assert scene.name == f"3D: {CONSTRUCTED_LABEL.title}"


def test_cli_module_callable_recording_shows_the_constructed_label(tmp_path, scene):
    out = tmp_path / "cli.rrd"
    args = [str(scene), "--model", "vggt_attn_rerun.testing:matching_vggt", "--image-size", "84", "--save", str(out)]
    assert run(args) == 0
    assert CONSTRUCTED_LABEL.note in _notes(out)


@pytest.mark.slow
def test_the_example_recording_shows_the_constructed_label(tmp_path):
    out = tmp_path / "example.rrd"
    done = subprocess.run([sys.executable, EXAMPLES / "synthetic_scene.py", "--frames", "2", "--save", str(out)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout  # says where it wrote
    assert CONSTRUCTED_LABEL.note in _notes(out)


def test_a_run_file_keeps_the_label(tmp_path, scene_images):
    result, _ = record_attention(matching_vggt(), scene_images, ["0:p1,1"], blocks=[2])
    save_run(tmp_path / "run.npz", result, images_from_tensor(scene_images))
    assert load_run(tmp_path / "run.npz")[0].model_label == CONSTRUCTED_LABEL


@pytest.mark.parametrize("timeline", ["block", "head"])
def test_the_legend_names_the_model_on_both_timelines(tmp_path, scene_images, timeline):
    _, rec = record_attention(matching_vggt(), scene_images, ["0:p1,1"], blocks=[2])
    texts = Recording(_save(rec, tmp_path / "legend.rrd")).temporal(
        Paths.scale_note(0, "global"), "TextDocument:text", timeline
    )
    assert texts and all(t[0].startswith(f"**{CONSTRUCTED_LABEL.title}**") for t in texts.values())
