"""The output flags of every command that records, defined once: ``--save``, ``--stdout``,
``--connect``, ``--serve``, ``--spawn``, ``--headless``, ``--overwrite`` -> one ``Outputs``.

They follow Rerun's script flags (``rr.script_add_args``): ``--save`` alone writes the file and
opens nothing, ``--stdout`` pipes the recording and goes alone, and a viewer is spawned only when
no output is given (``viz.sinks.plan_sinks`` decides; ``--spawn`` adds one to the others).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any, TypeVar

import click

from vggt_attn_rerun.cli.checks import split_connect
from vggt_attn_rerun.viz.sinks import DEFAULT_URL, WEB_PORT, Outputs

F = TypeVar("F", bound=Callable[..., Any])

#: the parameter names of the output flags, as click passes them: ``Outputs``' fields
OUTPUT_FLAGS = tuple(f.name for f in fields(Outputs))

#: how the output flags combine, for the commands' help (a paragraph of their epilog)
COMBINING = """Outputs: --save, --connect, --serve and --spawn combine (each gets the whole recording);
--stdout goes alone. A viewer is spawned only when none of them is given (and not
--headless), or with --spawn."""


def _specs(replaced: str) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """(declarations, attributes) of each output flag; ``replaced``: the files --overwrite replaces."""
    return [
        (("--save",), dict(metavar="OUT.rrd", help="Write the recording to a file (whole or not at all); opens no "
                           "viewer unless --spawn.")),
        (("--stdout",), dict(is_flag=True, help="Write the recording to standard output: ... --stdout | rerun -")),
        (("--connect",), dict(is_flag=False, flag_value=DEFAULT_URL, metavar="[URL]",
                              help=f"Stream to a running viewer (default URL {DEFAULT_URL}).")),
        (("--serve",), dict(is_flag=True,
                            help=f"Host a web viewer (http://localhost:{WEB_PORT}) and keep serving until Ctrl-C.")),
        (("--spawn",), dict(is_flag=True, help="Also open a viewer when --save, --connect or --serve is given.")),
        (("--headless",), dict(is_flag=True, help="Never spawn a viewer.")),
        (("--overwrite",), dict(is_flag=True, help=f"Let {replaced} replace existing files.")),
    ]  # fmt: skip


def output_options(replaced: str = "--save") -> Callable[[F], F]:
    """Decorator: add the output flags to a click command (after the options above it).
    ``replaced``: what ``--overwrite`` lets replace (``--save and --export`` where there is ``--export``)."""

    def decorate(f: F) -> F:
        for decls, attrs in reversed(_specs(replaced)):
            f = click.option(*decls, **attrs)(f)
        return f

    return decorate


def output_params(replaced: str = "--save") -> list[click.Option]:
    """The output flags as click parameters, for a command built from a parameter list."""
    return [click.Option(list(decls), **attrs) for decls, attrs in _specs(replaced)]


def take_outputs(flags: dict[str, Any], images: tuple[str, ...] | None = None) -> tuple[Outputs, tuple[str, ...]]:
    """Remove the output flags from ``flags`` (click's parameters) and return them as one ``Outputs``,
    with ``images``: a ``--connect`` given no URL takes the next word, which, for a command with
    IMAGES, was the first image (``checks.split_connect`` gives it back; None: no IMAGES)."""
    values = {name: flags.pop(name) for name in OUTPUT_FLAGS}
    if images is not None:
        images, values["connect"] = split_connect(images, values["connect"])
    return Outputs(**values), images or ()
