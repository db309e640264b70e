#!/usr/bin/env python3
"""Offline demo: a synthetic multi-view scene, a tiny VGGT, a Rerun recording.

Runs without network, GPU or vggt. By default the model is CONSTRUCTED (``testing.matching_vggt``):
the random tiny VGGT whose global block 2 was hand-made to match appearance across views (k = q
weights, large q/k norm gains), so that scrubbing to block 2 shows what a correspondence head looks
like: a peaked map in every view, hot patches and rays on the same surface in 3D. Nothing in it is
learned; the model carries its CONSTRUCTED label and the recording shows it. ``--model tiny`` is
the plain random tiny model (diffuse maps: the machinery, RoPE, special tokens). Run
`my_photos.py` with VGGT-1B for learned attention. ``vggt-attn-rerun demo`` is this demo as a
command.

    python examples/synthetic_scene.py                  # spawn the viewer
    python examples/synthetic_scene.py --save demo.rrd  # write a recording instead
"""

from __future__ import annotations

import argparse

import rerun as rr
import torch

from vggt_attn_rerun import RecordingOptions, record_attention
from vggt_attn_rerun.core.images import images_from_tensor
from vggt_attn_rerun.testing import matching_vggt, synthetic_scene, tiny_vggt
from vggt_attn_rerun.viz.sinks import script_setup, script_teardown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4, help="number of views (default 4)")
    parser.add_argument("--query", default="0:p2,4", help="default 0:p2,4 (frame 0, patch row 2, col 4)")
    parser.add_argument("--model", choices=("constructed", "tiny"), default="constructed",
                        help="constructed: matching_vggt (default); tiny: the random tiny model")  # fmt: skip
    rr.script_add_args(parser)
    args = parser.parse_args()

    photos = synthetic_scene(args.frames, height=112, width=168, seed=0)  # [S, H, W, 3] uint8
    images = images_from_tensor(torch.from_numpy(photos).permute(0, 3, 1, 2).float() / 255)
    constructed = args.model == "constructed"
    model = matching_vggt() if constructed else tiny_vggt()
    # The `head` timeline walks the heads of the focus block: the constructed one, when there is one.
    options = RecordingOptions(kinds=("global", "frame"), focus_block=2 if constructed else None)
    # The standard Rerun sink flags (--save/--connect/--serve/--headless); spawning is the default.
    # rr.script_setup, but no display to spawn a viewer on, or a --stdout nobody reads, ends in one line and
    # exit code 1.
    rec = script_setup(args)
    record_attention(model, images, [args.query], recording=rec, options=options)
    script_teardown(args)
    if args.save:
        print(f"wrote {args.save}: open it with  rerun {args.save}")


if __name__ == "__main__":
    main()
