#!/usr/bin/env python3
"""Your photos, VGGT-1B, and the attention of one pixel: the Python API in a dozen lines.

    pip install ".[vggt]" && vggt-attn-rerun install-vggt
    python examples/my_photos.py photos/*.jpg --query 0:640,360 --save scene.rrd

The query is a pixel of the ORIGINAL first photo (x, y). The same calls work in a notebook:
replace the sink with ``rec.notebook_show()``.
"""

from __future__ import annotations

import argparse
import sys

import rerun as rr
import torch

from vggt_attn_rerun import RecordingOptions, load_images, load_model, record_attention
from vggt_attn_rerun.viz.sinks import script_setup, script_teardown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", help="photos of one scene; the first is the reference view")
    parser.add_argument("--query", action="append", help="FRAME:X,Y pixel of the original photo (repeatable)")
    parser.add_argument("--model", default="facebook/VGGT-1B", help="hub id, local dir or file")
    rr.script_add_args(parser)
    args = parser.parse_args()
    # rr.script_setup, but no display to spawn a viewer on, or a --stdout nobody reads, ends in one line and
    # exit code 1 (before the model loads).
    rec = script_setup(args)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(args.model, device=device)
    images = load_images(args.images, mode="crop")
    queries = args.query or [f"0:{images.transforms[0].orig_w / 2:.0f},{images.transforms[0].orig_h / 2:.0f}"]
    bf16 = torch.bfloat16 if device == "cuda" and torch.cuda.get_device_capability()[0] >= 8 else None

    result, _ = record_attention(model, images, queries, recording=rec, autocast_dtype=bf16,
                                 options=RecordingOptions(kinds=("global", "frame")))  # fmt: skip
    rows = result.rows
    mass = rows.frame_mass("global")[:, 0].mean(1)  # [L, S]: head-mean mass per view, first query
    # On stderr: with --stdout, standard output carries the recording.
    print("global attention mass per view at the last block:", [f"{m:.2f}" for m in mass[-1].tolist()], file=sys.stderr)
    script_teardown(args)
    if args.save:
        print(f"wrote {args.save}: open it with  rerun {args.save}")


if __name__ == "__main__":
    main()
