"""``vggt-attn-rerun ablate``: the main command's flags, refusals before any forward, whole files or none."""

from __future__ import annotations

from pathlib import Path

import pytest
import rerun as rr

from vggt_attn_rerun.api import ablation
from vggt_attn_rerun.cli import ablate as ablate_cli
from vggt_attn_rerun.cli import main
from vggt_attn_rerun.viz.log_effects import POINTS_PATH, matrix_path

from .helpers import FAST


def _entities(path: Path) -> set[str]:
    return {ch.entity_path.lstrip("/") for ch in rr.chunk.RrdReader(path).stream()}


def test_ablate_writes_the_matrices_and_the_moved_points(scene, tmp_path, forward_calls, capsys):
    out = tmp_path / "heads.rrd"
    code = main.run(["ablate", str(scene), *FAST, "--what", "heads", "--blocks", "0,3", "--save", str(out)])
    assert code == 0, capsys.readouterr().err
    assert {matrix_path("global", "points"), matrix_path("global", "query"), POINTS_PATH} <= _entities(out)
    assert len(forward_calls) == 1 + 2  # the unablated forward, then 8 heads in batches of 4
    assert "8 interventions" in capsys.readouterr().err


def test_ablate_takes_the_main_commands_flags_as_they_are_defined_there():
    ours = {p.name: p for p in ablate_cli.ablate.params}
    for p in main.cli.params:
        if p.name in ablate_cli.SHARED:
            assert ours[p.name].opts == p.opts and ours[p.name].type is p.type, p.name


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--blocks", "9"], "valid blocks are 0..3"),
        (["--what", "knockout", "--show", "global:1:2"], "no such intervention"),
        (["-q", "5:p0,0"], "frame"),
    ],
)
def test_an_intervention_that_cannot_run_is_refused_in_one_line_before_any_forward(
    scene, tmp_path, forward_calls, capsys, flags, words
):
    out = tmp_path / "x.rrd"
    code = main.run(["ablate", str(scene), *FAST, *flags, "--save", str(out)])
    err = capsys.readouterr().err
    assert code == main.EXIT_USAGE and words in err and len(err.strip().splitlines()) == 1
    assert forward_calls == [] and not out.exists()


def test_an_interrupted_ablation_leaves_no_file(scene, tmp_path, monkeypatch, capsys):
    real = ablation.effect
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ablation, "effect", interrupted)
    code = main.run(["ablate", str(scene), *FAST, "--what", "blocks", "--save", str(tmp_path / "x.rrd")])
    assert code == main.EXIT_INTERRUPTED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]
