"""The offline demo (``vggt-attn-rerun demo``): generated photos, the constructed model, one run.

Needs no network, no GPU, no vggt and no photos: ``testing.synthetic_scene`` draws the views (a
camera sliding over one textured surface), ``testing.matching_vggt`` is the model (the random
tiny VGGT whose global block DEMO_BLOCK is made of hand-made appearance matchers; it carries its
CONSTRUCTED label, so the recording says what it is: 3D view title, legend, notes), and ``runner.run`` does the
rest as for photos: the same checks, sinks and atomic ``--save``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from PIL import Image

from vggt_attn_rerun.api.runner import RunCallbacks, RunOptions, RunSummary, run
from vggt_attn_rerun.testing import synthetic_scene
from vggt_attn_rerun.viz.options import RecordingOptions
from vggt_attn_rerun.viz.sinks import Outputs

#: the model of the demo, as a --model spec (so the run loads it the way a user's would be)
DEMO_MODEL = "vggt_attn_rerun.testing:matching_vggt"
#: the constructed global block of matching_vggt: the `head` timeline walks its heads
DEMO_BLOCK = 2
#: the generated photos (height, width in pixels), also the model input: 8 x 12 patches of 14 pixels
DEMO_SIZE = (112, 168)
#: a patch of frame 0 whose match in the other views is clear at the constructed block (row, col)
DEMO_QUERY = "0:p2,4"
DEMO_FRAMES = 4


def write_demo_images(folder: str | os.PathLike[str], frames: int = DEMO_FRAMES) -> list[Path]:
    """Write ``frames`` generated views (``view_{s}.png``, DEMO_SIZE) into ``folder``; returns their paths."""
    h, w = DEMO_SIZE
    paths = []
    for s, photo in enumerate(synthetic_scene(frames, height=h, width=w, seed=0)):
        path = Path(folder) / f"view_{s}.png"
        Image.fromarray(photo).save(path)
        paths.append(path)
    return paths


def demo_options(images: tuple[str, ...], outputs: Outputs | None = None, device: str = "auto") -> RunOptions:
    """The demo's RunOptions over ``images`` (write_demo_images), recorded to ``outputs``."""
    recording = RecordingOptions(kinds=("global", "frame"), focus_block=DEMO_BLOCK)
    return RunOptions(images=images, queries=((DEMO_QUERY, "the demo query"),), recording=recording,
                      model=DEMO_MODEL, image_size=DEMO_SIZE[1], device=device,
                      outputs=outputs if outputs is not None else Outputs())  # fmt: skip


def run_demo(frames: int = DEMO_FRAMES, callbacks: RunCallbacks | None = None, outputs: Outputs | None = None,
             device: str = "auto") -> RunSummary:  # fmt: skip
    """Generate the views in a temporary folder and run the demo (see the module docstring).

    ``outputs``: where the recording goes (default: a spawned viewer, as for the command line).
    """
    with tempfile.TemporaryDirectory(prefix="vggt-attn-demo-") as folder:
        write_demo_images(folder, frames)
        return run(demo_options((folder,), outputs, device), callbacks)
