"""``vggt-attn-rerun install-vggt``: install vggt with pip --no-deps (see README, "Why install-vggt")."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable

import click

from vggt_attn_rerun.core.loading import VGGT_SOURCE, vggt_install_command
from vggt_attn_rerun.errors import UserError

OFFLINE_HINT = (
    "without network access to GitHub, --source PATH_OR_URL takes a mirror (git URL) or a local clone of vggt"
)


def install(source: str | None, dry_run: bool, echo: Callable[[str], object] = click.echo) -> None:
    """Print the pip command, then run it unless ``dry_run``; UserError when pip fails."""
    command = vggt_install_command(source)
    echo(shlex.join(command))
    if dry_run:
        return
    code = subprocess.call(command)
    if code:
        hint = f"; {OFFLINE_HINT}" if source is None else ""
        raise UserError(f"pip failed with exit code {code} (command above){hint}")


EPILOG = f"\b\nDefault source:\n  {VGGT_SOURCE}\n\n\b\n{OFFLINE_HINT[0].upper()}{OFFLINE_HINT[1:]}."
DOC = """Install the vggt package into this environment with pip --no-deps.

    vggt is not on PyPI, and its metadata pins numpy<2, which rerun-sdk 0.41 cannot use: a
    resolver refuses the pair. vggt's model code runs on numpy 2, so it is installed without its
    dependencies; its real runtime needs come with `pip install 'vggt-attn-rerun[vggt]'`.
    """
