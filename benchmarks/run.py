"""Run the benchmarks and write a markdown table and a JSON file.

    python -m benchmarks.run                      # tiny model, CPU, about a minute
    python -m benchmarks.run --vggt1b             # random-weight VGGT-1B (needs vggt), slow on CPU
    python -m benchmarks.run --vggt1b --device cuda --dtype bfloat16   # S = 8, 32, 100 at 518x518

Results go to ``benchmarks/results/<profile>-<device>[-<dtype>].{md,json}`` (``--out DIR``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

SECTIONS = ("overhead", "scaling", "recording", "e2e")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"

# Preset sizes per profile; every one can be overridden on the command line.
PROFILES: dict[str, dict[str, Any]] = {
    "tiny": {},  # Settings' defaults: S=8 at 224x224, S in 2..16, recording S=2,4,8, CLI: 4 x 518
    "vggt1b-cpu": {
        "model": "random",
        "frames": 2,
        "size": (224, 224),
        "repeats": 5,
        "warmup": False,
        "scaling_frames": (1, 2, 4),
        "scaling_size": (294, 518),
        "scaling_queries": (16,),
        "recording_frames": (2, 4, 8),
        "recording_size": (224, 224),
        "e2e": (("tiny", 4, 518), ("random", 2, 224)),
    },
    "vggt1b-cuda": {
        "model": "random",
        "frames": 8,
        "size": (518, 518),
        "repeats": 10,
        "scaling_frames": (8, 32, 100),
        "scaling_size": (518, 518),
        "scaling_queries": (16,),
        "recording_frames": (2, 4, 8),
        "recording_size": (518, 518),
        "e2e": (("tiny", 8, 518), ("random", 8, 518)),
    },
    "quick": {  # smallest sizes: a functional smoke run in seconds
        "frames": 1,
        "size": (28, 28),
        "queries": (1, 2),
        "repeats": 2,
        "scaling_frames": (1, 2),
        "scaling_size": (28, 28),
        "scaling_queries": (2,),
        "recording_frames": (1,),
        "recording_size": (28, 28),
        "recording_queries": 1,
        "e2e": (("tiny", 1, 28),),
    },
}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.replace(" ", "").split(",") if x)


def _size(text: str) -> tuple[int, int]:
    """``HxW`` or ``S`` (square) -> (H, W)."""
    parts = text.lower().split("x")
    if len(parts) == 1:
        return int(parts[0]), int(parts[0])
    return int(parts[0]), int(parts[1])


def _e2e_runs(text: str) -> tuple[tuple[str, int, int], ...]:
    runs = []
    for item in text.split(","):
        model, photos, size = item.strip().split(":")
        runs.append((model, int(photos), int(size)))
    return tuple(runs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the .md and .json (default: %(default)s)")
    p.add_argument("--vggt1b", action="store_true", help="random-weight VGGT-1B instead of the tiny model (needs vggt)")
    p.add_argument("--quick", action="store_true", help="smallest sizes (functional smoke run)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="autocast dtype of the forward; weights stay fp32 (default: %(default)s)",
    )
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument(
        "--budget-gb",
        type=float,
        default=8.0,
        help="memory budget of the full-matrix baseline, checked on predicted bytes (default: %(default)s)",
    )
    p.add_argument("--frames", type=int, help="1. overhead: frames S")
    p.add_argument("--size", type=_size, help="1. overhead: image HxW (multiples of 14)")
    p.add_argument("--queries", type=_ints, help="1. overhead: query counts, e.g. 1,16,256")
    p.add_argument("--repeats", type=int, help="1. overhead: interleaved timing repeats")
    p.add_argument("--scaling-frames", type=_ints, help="2. scaling: S values, e.g. 2,4,8,16")
    p.add_argument("--scaling-size", type=_size, help="2. scaling: image HxW")
    p.add_argument("--scaling-queries", type=_ints, help="2. scaling: query counts of our capture")
    p.add_argument("--recording-frames", type=_ints, help="3. recording: S values")
    p.add_argument("--recording-size", type=_size, help="3. recording: image HxW")
    p.add_argument("--recording-queries", type=int, help="3. recording: queries logged")
    p.add_argument("--e2e-runs", type=_e2e_runs, help="4. e2e: MODEL:PHOTOS:SIZE,... e.g. tiny:4:518,random:2:224")
    p.add_argument("--cli-args", help="4. e2e: CLI arguments (default: suites.DEFAULT_CLI_ARGS)")
    p.add_argument("--no-isolate", action="store_true", help="CPU memory in this process, not one child per config")
    p.add_argument("--no-warmup", action="store_true", help="memory probes: skip the warm-up call")
    p.add_argument("--work-dir", help="where .rrd files of 3. and 4. go (default: a temporary folder)")
    p.add_argument("--note", help="a line for the report, e.g. 'machine shared with other jobs'")
    p.add_argument("--name", help="base name of the result files (default: <profile>-<device>[-<dtype>])")
    return p


def settings_from_args(args: argparse.Namespace):
    from .suites import Settings

    device_kind = "cuda" if args.device.startswith("cuda") else "cpu"
    profile = "quick" if args.quick else (f"vggt1b-{device_kind}" if args.vggt1b else "tiny")
    preset = dict(PROFILES[profile])
    if args.vggt1b:
        preset["model"] = "random"
    overrides = {
        "frames": args.frames,
        "size": args.size,
        "queries": args.queries,
        "repeats": args.repeats,
        "scaling_frames": args.scaling_frames,
        "scaling_size": args.scaling_size,
        "scaling_queries": args.scaling_queries,
        "recording_frames": args.recording_frames,
        "recording_size": args.recording_size,
        "recording_queries": args.recording_queries,
        "cli_args": args.cli_args,
        "work_dir": args.work_dir,
        "e2e": args.e2e_runs,
    }
    preset.update({k: v for k, v in overrides.items() if v is not None})
    if args.no_warmup:
        preset["warmup"] = False
    settings = Settings(
        device=args.device, dtype=args.dtype, budget_gb=args.budget_gb, isolate=not args.no_isolate, **preset
    )
    return profile, settings


def run_benchmarks(
    settings, sections=SECTIONS, profile: str = "custom", command: str = "", note: str | None = None
) -> dict[str, Any]:
    """Run ``sections`` with ``settings``; returns the results dict (what the JSON file holds)."""
    import torch

    from . import rrd_suites, suites
    from .common import load_bench_model, machine_info

    torch.manual_seed(0)
    res: dict[str, Any] = {
        "schema": 1,
        "profile": profile,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "note": note,
        "machine": machine_info(settings.device),
        "settings": settings.as_dict(),
        "section_seconds": {},
    }
    t0 = time.perf_counter()
    model = None
    if any(s in sections for s in ("overhead", "scaling", "recording")):
        settings.log(f"loading model {settings.model!r} on {settings.device}")
        model = load_bench_model(settings.model, settings.device)
    runners = {
        "overhead": lambda: suites.overhead(settings, model),
        "scaling": lambda: suites.scaling(settings, model),
        "recording": lambda: rrd_suites.recording(settings, model),
        "e2e": lambda: rrd_suites.end_to_end(settings),
    }
    for name, runner in runners.items():
        if name in sections:
            started = time.perf_counter()
            res[name] = runner()
            res["section_seconds"][name] = time.perf_counter() - started
    res["seconds"] = time.perf_counter() - t0
    res["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return res


def write_results(res: dict[str, Any], out: Path, name: str) -> tuple[Path, Path]:
    from .report import markdown

    out.mkdir(parents=True, exist_ok=True)
    md, js = out / f"{name}.md", out / f"{name}.json"
    js.write_text(json.dumps(res, indent=2, default=str) + "\n")
    md.write_text(markdown(res))
    return md, js


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sections = tuple(s.strip() for s in args.only.split(",") if s.strip())
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        print(f"unknown section {bad[0]!r}: valid are {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    profile, settings = settings_from_args(args)
    base = "quick" if args.quick else ("vggt1b" if args.vggt1b else "tiny")
    name = args.name or "-".join(
        [base, args.device.replace(":", "")] + ([args.dtype] if args.dtype != "float32" else [])
    )
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    from vggt_attn_rerun.errors import UserError

    from .report import markdown, verdicts

    try:
        res = run_benchmarks(settings, sections, profile, command.strip(), args.note)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    md, js = write_results(res, args.out, name)
    print()
    print(markdown(res))
    for line in verdicts(res):
        print(line)
    print(f"\nwrote {md} and {js} ({res['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):  # `python benchmarks/run.py`: run it as the module benchmarks.run
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from benchmarks.run import main as module_main

        raise SystemExit(module_main())
    raise SystemExit(main())
