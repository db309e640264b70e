"""Hostile values of the main command's options: endless or huge query files, model paths and
callables that are not models, configs the model cannot take, thresholds beyond float32. Each
is one `error:` line with the right exit code (or a clean run), never a traceback or a hang."""

import json
import warnings

import pytest
from safetensors.torch import save_file

from vggt_attn_rerun.cli import checks
from vggt_attn_rerun.cli import main as cli
from vggt_attn_rerun.core import loading
from vggt_attn_rerun.core.loading import SPEC_SYNTAX
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.testing.tiny_model import TinyVGGT

FAST = ["--image-size", "84", "--headless"]


def run_cli(args, capsys) -> tuple[int, list[str]]:
    code = cli.run([str(a) for a in args])
    return code, capsys.readouterr().err.splitlines()


@pytest.fixture
def vggt_is_tiny(monkeypatch):
    """Checkpoints and folders build the tiny VGGT (the vggt package is not installed in tests)."""
    monkeypatch.setattr(loading, "_vggt_class", lambda: TinyVGGT)


# -- --queries-file ------------------------------------------------------------------------------


def test_an_endless_queries_file_is_refused_at_its_bound():
    with pytest.raises(UserError, match=r"^--queries-file /dev/zero: larger than 16 MiB; give a text file"):
        checks.read_queries_file("/dev/zero")


def test_a_huge_line_is_refused_without_echoing_it(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text("0:1,2\n" + "9" * 2_000_000 + "\n")
    with pytest.raises(UserError) as e:
        checks.read_queries_file(path)
    assert str(e.value) == f"--queries-file {path} line 2: 2000000 characters, more than 1000; one query per line"


def test_a_long_query_is_named_by_its_line_not_echoed(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text("x" * 500 + "  # a comment\n")
    with pytest.raises(UserError, match=rf"^--queries-file {path} line 1: 500 characters is no query; expected"):
        checks.read_queries_file(path)


def test_queries_file_dev_zero_on_the_command_line_is_one_line(scene, no_model, capsys):
    code, err = run_cli([scene, "--model", "tiny", *FAST, "--save", scene.parent / "o.rrd",
                         "--queries-file", "/dev/zero"], capsys)  # fmt: skip
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --queries-file /dev/zero: larger than 16 MiB")


# -- --model -------------------------------------------------------------------------------------


def test_a_missing_checkpoint_path_is_bad_input_before_the_model(scene, tmp_path, no_model, capsys):
    missing = tmp_path / "nonexistent.safetensors"
    code, err = run_cli([scene, "--model", missing, *FAST, "--save", tmp_path / "o.rrd"], capsys)
    assert (code, err) == (2, [f"error: model file {missing} does not exist: give an existing path, or one of: "
                               f"{SPEC_SYNTAX}"])  # fmt: skip


def test_compare_checks_every_model_path_before_the_first_model_runs(scene, tmp_path, no_model, capsys):
    missing = tmp_path / "second.pt"
    code, err = run_cli(["compare", scene, "--model", "tiny", "--model", missing, *FAST, "--save", tmp_path / "o.rrd"],
                        capsys)  # fmt: skip
    assert code == 2 and err == [f"error: model file {missing} does not exist: give an existing path, or one of: "
                                 f"{SPEC_SYNTAX}"]  # fmt: skip


@pytest.mark.parametrize("spec, code", [("builtins:exit", None), ("exiting_model_module:build", 3)])
def test_a_model_callable_that_exits_is_one_line_and_not_its_exit_code(scene, tmp_path, capsys, monkeypatch, spec,
                                                                      code):  # fmt: skip
    (tmp_path / "exiting_model_module.py").write_text("import sys\n\n\ndef build():\n    sys.exit(3)\n")
    monkeypatch.syspath_prepend(tmp_path)
    status, err = run_cli([scene, "--model", spec, *FAST, "--save", tmp_path / "o.rrd"], capsys)
    assert status == 1
    assert err == [f"error: model {spec!r} exited (SystemExit {code!r}) instead of returning a torch.nn.Module"]
    assert not (tmp_path / "o.rrd").exists()


def test_a_config_the_model_cannot_take_is_one_line(scene, tmp_path, vggt_is_tiny, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in TinyVGGT().state_dict().items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"embed_dim": "huge", "depth": 4}))
    code, err = run_cli([scene, "--model", folder, *FAST, "--save", tmp_path / "o.rrd"], capsys)
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"error: cannot build TinyVGGT from model config {folder / 'config.json'} (TypeError: ")
    assert err[0].endswith("); entries used: depth, embed_dim")


def test_an_empty_safetensors_file_says_it_holds_no_tensors(scene, tmp_path, vggt_is_tiny, capsys):
    empty = tmp_path / "empty.safetensors"
    save_file({}, empty)
    code, err = run_cli([scene, "--model", empty, *FAST, "--save", tmp_path / "o.rrd"], capsys)
    assert (code, err) == (1, [f"error: {empty} is not a checkpoint: it holds no tensors (an empty state dict)"])


# -- numbers beyond float32 ------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", ["1e300", "-1e300"])
def test_a_confidence_threshold_beyond_float32_runs_without_a_numpy_warning(scene, tmp_path, capsys, threshold):
    out = tmp_path / "o.rrd"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        code, err = run_cli([scene, "--model", "tiny", *FAST, "--save", out, f"--conf-threshold={threshold}"], capsys)
    # 1e300 keeps no point: the one warning allowed is the recording's own note saying so.
    expected = ["warning: Degenerate point map"] if threshold == "1e300" else []
    assert code == 0 and [line[:29] for line in err if "warning" in line] == expected, err
    assert out.exists()
