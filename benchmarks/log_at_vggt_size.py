"""Time ``log_run`` for a VGGT-1B-sized run without the model.

518x518 input (37x37 patches), 24 blocks x 16 heads x frame + global, one query, random rows and a
synthetic point map: this measures logging alone (the part that must stay well under a forward pass).

    python -m benchmarks.log_at_vggt_size 4 8      # S = 4 and S = 8
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import rerun as rr
import torch

from benchmarks.common import synthetic_predictions
from vggt_attn_rerun.core.capture import CaptureResult
from vggt_attn_rerun.core.images import images_from_tensor
from vggt_attn_rerun.core.rows import AttentionRows
from vggt_attn_rerun.core.tokens import Query, TokenLayout
from vggt_attn_rerun.testing import synthetic_scene
from vggt_attn_rerun.viz.log_run import log_run
from vggt_attn_rerun.viz.options import RecordingOptions

SIZE, GRID, BLOCKS, HEADS = 518, 37, 24, 16


def fake_run(num_frames: int) -> CaptureResult:
    """A CaptureResult of VGGT-1B's shapes: random softmax rows, cameras stepping sideways, a wavy wall."""
    lay = TokenLayout(num_frames, GRID, GRID)
    g = torch.Generator().manual_seed(0)
    probs = {}
    for kind in ("global", "frame"):
        logits = torch.randn(BLOCKS, 1, HEADS, num_frames, lay.tokens_per_frame, generator=g) * 3
        if kind == "global":
            probs[kind] = logits.flatten(-2).softmax(-1).reshape(logits.shape)
        else:  # frame attention only reaches the query's own frame (0)
            probs[kind] = torch.zeros_like(logits)
            probs[kind][:, :, :, 0] = logits[:, :, :, 0].softmax(-1)
    rows = AttentionRows(lay, (Query.from_patch(lay, 0, 18, 18),), tuple(range(BLOCKS)), HEADS, probs)
    predictions = synthetic_predictions(num_frames, SIZE, g)
    return CaptureResult(predictions, rows, lay)


def main() -> None:
    for num_frames in [int(a) for a in sys.argv[1:]] or [4, 8]:
        result = fake_run(num_frames)
        photos = torch.from_numpy(synthetic_scene(num_frames, SIZE, SIZE)).permute(0, 3, 1, 2).float() / 255
        path = os.path.join(tempfile.gettempdir(), f"vggt_size_s{num_frames}.rrd")
        rec = rr.RecordingStream("vggt_attn_rerun")
        rec.save(path)
        start = time.perf_counter()
        log_run(rec, result, images_from_tensor(photos), RecordingOptions(kinds=("global", "frame")))
        rec.flush()
        rec.disconnect()
        seconds = time.perf_counter() - start
        print(f"S={num_frames}: log_run + flush {seconds:.2f} s, .rrd {os.path.getsize(path) / 2**20:.1f} MiB ({path})")


if __name__ == "__main__":
    main()
