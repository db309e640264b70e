#!/usr/bin/env python3
"""Offline demo: a synthetic multi-view scene, the tiny random-weight VGGT, a Rerun recording.

Runs without network, GPU or vggt. The tiny model has VGGT's module tree and code path but random
weights, so its attention shows the machinery (RoPE, special tokens, cross-view mass), not learned
correspondence; run `my_photos.py` with VGGT-1B for that.

    python examples/synthetic_scene.py                 # spawn the viewer
    python examples/synthetic_scene.py --save demo.rrd # write a recording instead
"""

from __future__ import annotations

import argparse

import rerun as rr
import torch

from vggt_attn_rerun import RecordingOptions, record_attention
from vggt_attn_rerun.core.images import images_from_tensor
from vggt_attn_rerun.testing import synthetic_scene, tiny_vggt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4, help="number of views (default 4)")
    parser.add_argument("--query", default="0:p2,4", help="default 0:p2,4 (frame 0, patch row 2, col 4)")
    rr.script_add_args(parser)
    args = parser.parse_args()

    photos = synthetic_scene(args.frames, height=112, width=168, seed=0)  # [S, H, W, 3] uint8
    images = images_from_tensor(torch.from_numpy(photos).permute(0, 3, 1, 2).float() / 255)
    # The standard Rerun sink flags (--save/--connect/--serve/--headless); spawning is the default.
    rec = rr.script_setup(args, "vggt_attn_rerun")
    record_attention(tiny_vggt(), images, [args.query], recording=rec,
                     options=RecordingOptions(kinds=("global", "frame")))  # fmt: skip
    rr.script_teardown(args)


if __name__ == "__main__":
    main()
