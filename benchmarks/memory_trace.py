"""Resident memory after each query of ``--save``, at VGGT-1B's size: where a run's memory grows.

The synthetic run of ``memory_at_vggt_size`` (``fake_run``: random rows, a synthetic point map),
logged by ``log_run`` into the sinks of ``--save``; a thread samples the resident memory every
2 ms. After each (query, kind) logged it prints the resident memory then and the highest sample
since the previous line. ``save`` keeps Rerun's footer (its index of every chunk, held in memory
until the file closes); ``save-nofooter`` leaves it out (``SinkPlan(footer=False)``).

    python -m benchmarks.memory_trace --frames 8 --side 4 --blocks 24 --mode save

Writes ``benchmarks/results/memory-trace-<mode>.md`` (``--out`` for another folder).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.memory_at_vggt_size import RESULTS, fake_images, fake_run

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class _Sampler:
    """The highest resident memory since the last ``take`` (sampled every 2 ms)."""

    def __init__(self) -> None:
        self.high = 0
        self.stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.stop:
            self.high = max(self.high, _rss())
            time.sleep(0.002)

    def take(self) -> tuple[int, int]:
        now = _rss()
        high, self.high = max(self.high, now), 0
        return now, high


def trace(frames: int, side: int, blocks: int, footer: bool) -> list[tuple[str, int, int]]:
    """(step, resident memory after it, highest during it) for each logged (query, kind)."""
    import rerun as rr

    from vggt_attn_rerun.io.atomic import commit
    from vggt_attn_rerun.viz import log_run as lr
    from vggt_attn_rerun.viz.options import RecordingOptions
    from vggt_attn_rerun.viz.sinks import Outputs, SinkPlan, open_sinks

    sampler = _Sampler()
    result, images = fake_run(frames, side, blocks), fake_images(frames)
    steps = [("rows and scene built", *sampler.take())]
    log_kind = lr.log_query_kind

    def logged(rec, result, target, scene, options):  # noqa: ANN001, ANN202 - log_query_kind's own signature
        out = log_kind(rec, result, target, scene, options)
        steps.append((f"q{target.i} {target.kind}", *sampler.take()))
        return out

    lr.log_query_kind = logged
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rec = rr.RecordingStream("vggt_attn_rerun")
            plan = SinkPlan(Outputs(save=Path(tmp) / "out.rrd"), footer=footer)
            with open_sinks(rec, plan) as sinks:
                lr.log_run(rec, result, images, RecordingOptions(kinds=("global", "frame")))
                steps.append(("every query logged", *sampler.take()))
                commit(sinks.finish())
            steps.append(("file closed", *sampler.take()))
    finally:
        lr.log_query_kind = log_kind
        sampler.stop = True
    return steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--side", type=int, default=4, help="side x side queries on frame 0")
    parser.add_argument("--blocks", type=int, default=24)
    parser.add_argument("--mode", choices=("save", "save-nofooter"), default="save")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    steps = trace(args.frames, args.side, args.blocks, footer=args.mode == "save")
    mib = 2**20
    lines = [
        f"# Resident memory after each query of {args.mode} ({args.frames} frames, {args.side * args.side} "
        f"queries, {args.blocks} blocks)",
        "",
        f"`python -m benchmarks.memory_trace --frames {args.frames} --side {args.side} --blocks {args.blocks} "
        f"--mode {args.mode}`; {time.perf_counter() - start:.0f} s. MiB.",
        "",
        "| step | resident after | highest during |",
        "|---|---|---|",
        *(f"| {step} | {now / mib:.0f} | {high / mib:.0f} |" for step, now, high in steps),
        "",
    ]
    text = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"memory-trace-{args.mode}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
