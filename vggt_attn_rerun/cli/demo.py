"""``vggt-attn-rerun demo``: the offline demo in one command (``api.run_demo``)."""

from __future__ import annotations

from typing import Any

import click

from vggt_attn_rerun import api
from vggt_attn_rerun.api.demo import DEMO_BLOCK, DEMO_FRAMES
from vggt_attn_rerun.cli.outputs import COMBINING, output_options, take_outputs
from vggt_attn_rerun.cli.progress import progress

DOC = f"""Try the tool offline: generated photos and a CONSTRUCTED demo model, in the viewer.

No network, GPU, vggt or photos needed. The views are generated (a camera sliding over one
textured surface); the model is the tiny random VGGT whose global block {DEMO_BLOCK} was made
by hand to match appearance across views: scrub the block timeline to {DEMO_BLOCK} to see a
correspondence head (peaked maps, rays onto the same surface in 3D). Nothing in it is learned:
the 3D view's title, the legend and the notes say so. For learned attention, run the main
command on your photos with VGGT-1B.
"""

_EPILOG = f"""\b
Examples:
  vggt-attn-rerun demo                    open the viewer on the demo
  vggt-attn-rerun demo --save demo.rrd    write the recording only (then: rerun demo.rrd)

\b
{COMBINING}
"""


@click.command("demo", help=DOC, epilog=_EPILOG,
               context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})  # fmt: skip
@click.option("--frames", type=click.IntRange(2, 8), default=DEMO_FRAMES, show_default=True,
              help="Number of generated views.")  # fmt: skip
@output_options()
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def demo(frames: int, debug: bool, **flags: Any) -> None:
    echo = lambda line: click.echo(" ".join(str(line).split()), err=True)  # noqa: E731
    outputs, _ = take_outputs(flags)
    api.run_demo(frames, api.RunCallbacks(echo=echo, progress=progress), outputs, device="cpu")
