"""``vggt-attn-rerun demo``: the offline demo in one command (``api.run_demo``)."""

from __future__ import annotations

from typing import Any

import click

from vggt_attn_rerun import api
from vggt_attn_rerun.api.demo import DEMO_BLOCK, DEMO_FRAMES
from vggt_attn_rerun.cli.progress import progress
from vggt_attn_rerun.viz.sinks import DEFAULT_URL

DOC = f"""Try the tool offline: generated photos and a CONSTRUCTED demo model, in the viewer.

No network, GPU, vggt or photos needed. The views are generated (a camera sliding over one
textured surface); the model is the tiny random VGGT whose global block {DEMO_BLOCK} was made
by hand to match appearance across views: scrub the block timeline to {DEMO_BLOCK} to see a
correspondence head (peaked maps, rays onto the same surface in 3D). Nothing in it is learned:
the 3D view's title, the legend and the notes say so. For learned attention, run the main
command on your photos with VGGT-1B.
"""

_EPILOG = """\b
Examples:
  vggt-attn-rerun demo                    open the viewer on the demo
  vggt-attn-rerun demo --save demo.rrd    write the recording only (then: rerun demo.rrd)
"""


@click.command("demo", help=DOC, epilog=_EPILOG,
               context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})  # fmt: skip
@click.option("--frames", type=click.IntRange(2, 8), default=DEMO_FRAMES, show_default=True,
              help="Number of generated views.")  # fmt: skip
@click.option("--save", metavar="OUT.rrd", help="Write the recording to a file; opens no viewer unless --spawn.")
@click.option("--connect", is_flag=False, flag_value=DEFAULT_URL, metavar="[URL]",
              help=f"Stream to a running viewer (default URL {DEFAULT_URL}).")  # fmt: skip
@click.option("--serve", is_flag=True, help="Host a web viewer and keep serving until Ctrl-C.")
@click.option("--spawn", is_flag=True, help="Also open a viewer when --save, --connect or --serve is given.")
@click.option("--headless", is_flag=True, help="Never spawn a viewer.")
@click.option("--overwrite", is_flag=True, help="Let --save replace an existing file.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def demo(frames: int, debug: bool, **sinks: Any) -> None:
    echo = lambda line: click.echo(" ".join(str(line).split()), err=True)  # noqa: E731
    api.run_demo(frames, api.RunCallbacks(echo=echo, progress=progress), device="cpu", **sinks)
