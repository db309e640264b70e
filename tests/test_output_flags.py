"""The output flags: one definition for every command that records, one ``Outputs`` from them."""

from __future__ import annotations

import click
import pytest

from vggt_attn_rerun import api
from vggt_attn_rerun.cli import ablate as ablate_cli
from vggt_attn_rerun.cli import main
from vggt_attn_rerun.cli.compare import compare, compare_options
from vggt_attn_rerun.cli.demo import demo
from vggt_attn_rerun.cli.outputs import OUTPUT_FLAGS
from vggt_attn_rerun.viz.sinks import DEFAULT_URL, Outputs

RECORDING_COMMANDS = {"main": main.cli, "compare": compare, "demo": demo, "ablate": ablate_cli.ablate}


def _flag(command: click.Command, name: str) -> tuple:
    (p,) = [p for p in command.params if p.name == name]
    return p.opts, p.is_flag, p.flag_value, p.metavar, p.default


@pytest.mark.parametrize("name", sorted(RECORDING_COMMANDS))
def test_every_recording_command_takes_the_same_output_flags(name):
    command = RECORDING_COMMANDS[name]
    assert {p.name for p in command.params} >= set(OUTPUT_FLAGS)
    for flag in OUTPUT_FLAGS:
        assert _flag(command, flag) == _flag(main.cli, flag), flag


def _params(command: click.Command, args: list[str]) -> dict:
    with command.make_context(command.name, args) as ctx:
        return dict(ctx.params)


def test_run_and_compare_options_hold_the_same_outputs_for_the_same_flags(tmp_path):
    photo = tmp_path / "a.png"
    photo.write_bytes(b"")
    flags = ["--save", str(tmp_path / "x.rrd"), "--spawn", "--overwrite"]
    run = main.run_options(**_params(main.cli, [str(photo), "--model", "tiny", *flags]))
    cmp = compare_options(**_params(compare, [str(photo), "--model", "tiny", "--model", "tiny", *flags]))
    want = Outputs(save=str(tmp_path / "x.rrd"), spawn=True, overwrite=True)
    assert run.outputs == cmp.outputs == want


def test_connect_without_a_url_gives_the_image_it_took_back(tmp_path):
    photos = [tmp_path / "a.png", tmp_path / "b.png"]
    run = main.run_options(**_params(main.cli, ["--connect", *map(str, photos), "--model", "tiny"]))
    assert run.outputs.connect == DEFAULT_URL and run.images == tuple(map(str, photos))


def test_no_output_flag_is_the_default_outputs(tmp_path):
    photo = tmp_path / "a.png"
    photo.write_bytes(b"")
    assert main.run_options(**_params(main.cli, [str(photo), "--model", "tiny"])).outputs == Outputs()
    assert api.RunOptions(images=(str(photo),)).outputs == Outputs()
