"""``vggt-attn-rerun compare IMAGES --model A --model B ...``: flags -> ``api.CompareOptions``."""

from __future__ import annotations

from typing import Any

import click

from vggt_attn_rerun import api
from vggt_attn_rerun.cli import checks
from vggt_attn_rerun.cli.outputs import COMBINING, output_options, take_outputs
from vggt_attn_rerun.cli.progress import progress
from vggt_attn_rerun.core.architectures import ARCH_CHOICES
from vggt_attn_rerun.core.images import MODES
from vggt_attn_rerun.core.tokens import QUERY_SYNTAX, VGGT_IMAGE_SIZE
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.viz.options import RecordingOptions

_EPILOG = f"""\b
Examples:
  vggt-attn-rerun compare photos/ --model facebook/VGGT-1B --model yyfz233/Pi3 -q 0:320,240
      VGGT and pi3 side by side, one query, in a viewer
  vggt-attn-rerun compare photos/ --model tiny --model tiny --arch vggt --arch pi3 --save cmp.rrd
      the tiny replicas, written to cmp.rrd

\b
Each model is logged under models/{{name}}/ (name: --name, else from the spec). Models of
different depth line up on the depth_percent timeline: block b of L at round(100 * b / (L - 1)).

\b
{COMBINING}
"""


@click.command("compare", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
               epilog=_EPILOG)  # fmt: skip
@click.argument("images", nargs=-1, required=True, metavar="IMAGES...")
@click.option("--model", "models", multiple=True, required=True, metavar="SPEC",
              help="A model to compare, repeatable (at least 2): tiny, random, a Hub id, a folder or file, "
              "or module:callable.")  # fmt: skip
@click.option("--arch", "archs", multiple=True, type=click.Choice(("auto", *ARCH_CHOICES)), metavar="ARCH",
              help="Architecture of each --model, in order (once per --model, or never). Default: auto.")  # fmt: skip
@click.option(
    "--name",
    "names",
    multiple=True,
    metavar="NAME",
    help="Entity root name of each --model, in order (models/NAME). Default: from the spec.",
)
@click.option(
    "-q",
    "--query",
    "queries",
    multiple=True,
    metavar="QUERY",
    help=f"Query token, repeatable: {QUERY_SYNTAX}. Default: the centre pixel of frame 0.",
)
@click.option("--query-grid", metavar="RxC", help="R x C patch queries evenly spread over frame --frame.")
@click.option("--frame", "grid_frame", type=click.IntRange(min=0), metavar="F", help="The view of --query-grid.")
@click.option("--blocks", default="all", show_default=True, metavar="LIST", help="Blocks to capture, per model.")
@click.option("--kinds", default="global", show_default=True, metavar="KINDS", help="global, frame or frame,global.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, mps.")
@click.option("--dtype", type=click.Choice(("auto", "float32", "bfloat16", "float16")), default="auto",
              show_default=True, help="Autocast dtype of the forward passes.")  # fmt: skip
@click.option("--mode", type=click.Choice(MODES), default="crop", show_default=True, help="crop or pad.")
@click.option("--image-size", type=int, default=VGGT_IMAGE_SIZE, show_default=True, metavar="PX",
              help="Model input width (crop) or long side (pad).")  # fmt: skip
@output_options()
@click.option("--force", is_flag=True, help="Run even when the memory estimate says it will not fit.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def compare(**f: Any) -> None:
    """Record two or more models on the same photos and queries into one recording, side by side."""
    options = compare_options(**f)
    callbacks = api.RunCallbacks(echo=lambda line: click.echo(" ".join(line.split()), err=True), progress=progress)
    api.compare(options, callbacks)


def compare_options(images: tuple[str, ...], **f: Any) -> api.CompareOptions:
    """The flags as one typed ``CompareOptions`` (BadInput for the command line's own text)."""
    try:
        outputs, images = take_outputs(f, images)
        for spec in f["models"]:
            checks.check_model_file(spec)
        return api.CompareOptions(
            images=images, models=tuple(f["models"]), archs=tuple(f["archs"]), names=tuple(f["names"]),
            queries=tuple((q, f"--query {q}") for q in f["queries"]),
            query_grid=checks.parse_query_grid(f["query_grid"], f["grid_frame"]), blocks=f["blocks"],
            recording=RecordingOptions(kinds=tuple(f["kinds"].split(","))), device=f["device"], dtype=f["dtype"],
            mode=f["mode"], image_size=f["image_size"], outputs=outputs, force=f["force"],
        )  # fmt: skip
    except api.BadInput:
        raise
    except UserError as e:
        raise api.BadInput(str(e)) from e
