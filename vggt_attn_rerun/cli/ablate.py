"""``vggt-attn-rerun ablate IMAGES --what heads|blocks|knockout ...``: flags -> ``api.ablation.AblateOptions``.

The photo, query, block and model flags are the main command's own (``main.cli.params``, taken
by name, not redefined), and the output flags every recording command's (``cli.outputs``), so
they read and check the same everywhere.
"""

from __future__ import annotations

import copy
from typing import Any

import click

from vggt_attn_rerun import api
from vggt_attn_rerun.api.ablation import SCOPES, AblateOptions, run_ablation
from vggt_attn_rerun.cli import main
from vggt_attn_rerun.cli.outputs import COMBINING, output_params
from vggt_attn_rerun.cli.progress import progress
from vggt_attn_rerun.core.interventions import ABLATIONS, WHATS
from vggt_attn_rerun.errors import UserError

# The main command's flags that an ablation run uses, by parameter name.
SHARED = (
    "images", "queries", "queries_file", "query_grid", "grid_frame", "blocks", "kinds", "model", "arch", "device",
    "dtype", "mode", "image_size", "conf_percentile", "max_points", "colormap", "force", "debug",
)  # fmt: skip
_HELP = {
    "kinds": "Blocks to intervene on: global (across views), frame (within a view) or frame,global. "
    "Knockouts are in global blocks only.",
    "blocks": "Blocks to intervene on: 0-23, 0,12,23, -1 (the last) or all.",
    "queries": "Query token whose own 3D point is followed (and, with --scope query, knocked out), "
    "repeatable. Default: the centre pixel of frame 0.",
}

_EPILOG = f"""\b
Examples:
  vggt-attn-rerun ablate photos/ --what heads --blocks 20-23 --save heads.rrd
      every head of the last four global blocks, zeroed one at a time
  vggt-attn-rerun ablate photos/ --what knockout -q 0:320,240 --scope query
      each global block without the query's attention to other views
  vggt-attn-rerun ablate photos/ --what blocks --kinds frame,global --ablation mean

\b
Each intervention runs one forward pass (--batch-size of them share a batch) and is measured
against the unablated forward: depth (median relative change), points (median 3D shift /
scene scale), cameras (rotation change, change of the camera centre's direction, degrees),
and the queries' own 3D points. The recording shows block x head matrices of each effect and
the point map coloured by how far each point moved (--show, default the largest effect).

\b
{COMBINING}
"""


def _shared_params() -> list[click.Parameter]:
    by_name = {p.name: p for p in main.cli.params}
    out = []
    for name in SHARED:
        p = copy.copy(by_name[name])
        if name in _HELP:
            p.help = _HELP[name]
        out.append(p)
    return out + output_params()


def ablate_options(what: str, ablation: str, scope: str, batch_size: int, show: str | None,
                   **flags: Any) -> AblateOptions:  # fmt: skip
    """The flags as one typed AblateOptions (BadInput for the command line's own text)."""
    # The main command's own defaults for the flags an ablation run does not take.
    defaults = main.cli.make_context(main.PROG, ["_"]).params
    run = main.run_options(**{**defaults, **flags})
    try:
        return AblateOptions(run, what, ablation, scope, batch_size, show)
    except UserError as e:
        raise api.BadInput(str(e)) from e


def _ablate(**flags: Any) -> None:
    """Ablate heads, blocks or cross-view attention one at a time and measure what changes in 3D.

    IMAGES are image files, folders or glob patterns, as for the main command.
    """
    options = ablate_options(**flags)
    callbacks = api.RunCallbacks(echo=lambda line: click.echo(" ".join(line.split()), err=True), progress=progress)
    run_ablation(options, callbacks)


ablate = click.Command(
    "ablate",
    callback=_ablate,
    params=[
        *_shared_params(),
        click.Option(
            ["--what"],
            type=click.Choice(WHATS),
            default="heads",
            show_default=True,
            help="heads: each head alone; blocks: each block's whole attention branch; knockout: "
            "each global block without attention to other views.",
        ),
        click.Option(
            ["--ablation"],
            type=click.Choice(ABLATIONS),
            default="zero",
            show_default=True,
            help="Replace the head's (block's) output by zeros or by its mean over tokens.",
        ),
        click.Option(
            ["--scope"],
            type=click.Choice(SCOPES),
            default="patches",
            show_default=True,
            help="Knockout of every patch token's cross-view attention, or only the queries'.",
        ),
        click.Option(
            ["--batch-size"],
            type=click.IntRange(min=1),
            default=4,
            show_default=True,
            help="Interventions per forward pass (copies of the scene in one batch; more = faster, more memory).",
        ),
        click.Option(
            ["--show"],
            metavar="KIND:BLOCK[:HEAD]",
            help="Intervention whose moved points are shown in 3D (e.g. global:3:2). Default: the one "
            "with the largest point effect.",
        ),
    ],  # fmt: skip
    help=_ablate.__doc__,
    epilog=_EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
