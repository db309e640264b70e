"""The benchmarks' one runner: it writes a markdown report and a JSON file per run.

    python -m benchmarks.run                      # tiny model, CPU, about a minute
    python -m benchmarks.run --vggt1b             # random-weight VGGT-1B (needs vggt), slow on CPU
    python -m benchmarks.run --vggt1b --device cuda --dtype bfloat16   # S = 8, 32, 100 at 518x518
    python -m benchmarks.run --gpu-check          # the CUDA check: VGGT-1B, bf16, 518x518, in steps
    python -m benchmarks.run --gpu-check --dry    # the same code on CPU, tiny model, toy sizes

Profiles tiny, vggt1b and quick run the sections overhead, scaling, recording and e2e; the CUDA
check runs the steps exact, overhead, scale, recording, ablate and cli, each under a time budget,
writing its results after every measurement (see benchmarks/README.md). Results go to
``benchmarks/results/<name>.{md,json}`` (``--out DIR``, ``--name``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, replace
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


# The CUDA check (--gpu-check). Sized for one H100/H200 (VGGT-1B bf16 forward: well under a second
# at S = 8, tens of seconds at S = 200): the whole run stays under 8 minutes.
STEP_BUDGET_S = {"exact": 60.0, "overhead": 60.0, "scale": 180.0, "recording": 75.0, "ablate": 60.0, "cli": 120.0}
TOTAL_BUDGET_S = 420.0
MODEL_STEPS = ("exact", "overhead", "scale", "recording", "ablate")
# --gpu-check --dry: the same code paths on CPU with the tiny model at toy sizes (seconds; run by the test suite).
DRY = {
    "model": "tiny",
    "device": "cpu",
    "size": (56, 56),
    "exact_frames": 3,
    "overhead_frames": 2,
    "rounds": 3,
    "scale_frames": (2, 4, 8),
    "scale_queries": 4,
    "baseline_budget_gb": 2 / 1024,
    "recording_frames": (2, 3),
    "ablate_frames": 2,
    "ablate_batch_sizes": (1, 2),
    "cli_photos": 2,
    "cli_size": 56,
}


def _steps() -> dict[str, Any]:
    """The check's step functions, by name, in the order they run."""
    from .check import step_ablate, step_overhead, step_scale
    from .exact import step_exact
    from .rrd_suites import step_cli, step_recording

    return {
        "exact": step_exact,
        "overhead": step_overhead,
        "scale": step_scale,
        "recording": step_recording,
        "ablate": step_ablate,
        "cli": step_cli,
    }


STEPS: dict[str, Any] = {}  # filled on first use (tests replace entries)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.replace(" ", "").split(",") if x)


def _size(text: str) -> tuple[int, int]:
    """``HxW`` or ``S`` (square) -> (H, W)."""
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def _e2e_runs(text: str) -> tuple[tuple[str, int, int], ...]:
    runs = []
    for item in text.split(","):
        model, photos, size = item.strip().split(":")
        runs.append((model, int(photos), int(size)))
    return tuple(runs)


def _budgets(text: str) -> dict[str, float]:
    out = {}
    for item in text.split(","):
        name, _, seconds = item.partition("=")
        if name.strip() not in STEP_BUDGET_S or not seconds:
            raise argparse.ArgumentTypeError(f"{item!r}: expected STEP=SECONDS with STEP in {', '.join(STEP_BUDGET_S)}")
        out[name.strip()] = float(seconds)
    return out


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, list[str]]]:
    """The parser, and the destinations of the options that only one kind of profile reads."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the .md and .json (default: %(default)s)")
    p.add_argument("--name", help="base name of the result files (default: <profile>-<device>[-<dtype>])")
    p.add_argument("--vggt1b", action="store_true", help="random-weight VGGT-1B instead of the tiny model (needs vggt)")
    p.add_argument("--quick", action="store_true", help="smallest sizes (functional smoke run)")
    p.add_argument("--gpu-check", action="store_true", help="the CUDA check: steps under time budgets (see README)")
    p.add_argument("--only", help=f"a subset: sections {','.join(SECTIONS)}, or with --gpu-check steps "
                   f"{','.join(STEP_BUDGET_S)}")  # fmt: skip
    p.add_argument("--device", help="cpu or cuda[:N] (default: cpu; cuda with --gpu-check)")
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        help="autocast dtype of the forward; weights stay fp32 (default: float32; bfloat16 with --gpu-check)",
    )
    p.add_argument("--size", type=_size, help="model image HxW of the overhead section / steps 1-4 (multiples of 14)")
    p.add_argument("--queries", type=_ints, help="overhead: query counts, e.g. 1,16,256")
    p.add_argument("--recording-frames", type=_ints, help="recording: S values, e.g. 2,4,8")
    p.add_argument("--work-dir", help="where .rrd files and photos go (default: a temporary folder, removed)")
    p.add_argument("--note", help="a line for the report, e.g. 'machine shared with other jobs'")

    suite = p.add_argument_group("profiles tiny, --vggt1b and --quick")
    suite.add_argument("--budget-gb", type=float, help="memory budget of the full-matrix baseline, checked on "
                       "predicted bytes (default: 8)")  # fmt: skip
    suite.add_argument("--frames", type=int, help="1. overhead: frames S")
    suite.add_argument("--repeats", type=int, help="1. overhead: interleaved timing repeats")
    suite.add_argument("--scaling-frames", type=_ints, help="2. scaling: S values, e.g. 2,4,8,16")
    suite.add_argument("--scaling-size", type=_size, help="2. scaling: image HxW")
    suite.add_argument("--scaling-queries", type=_ints, help="2. scaling: query counts of our capture")
    suite.add_argument("--recording-size", type=_size, help="3. recording: image HxW")
    suite.add_argument("--recording-queries", type=int, help="3. recording: queries logged")
    suite.add_argument("--e2e-runs", type=_e2e_runs, help="4. e2e: MODEL:PHOTOS:SIZE,... e.g. tiny:4:518,random:2:224")
    suite.add_argument("--cli-args", help="4. e2e: CLI arguments (default: suites.DEFAULT_CLI_ARGS)")
    suite.add_argument("--no-isolate", action="store_true", help="CPU memory in this process, not one child per config")
    suite.add_argument("--no-warmup", action="store_true", help="memory probes: skip the warm-up call")

    check = p.add_argument_group("profile --gpu-check")
    check.add_argument("--dry", action="store_true", help="tiny model on CPU at toy sizes (the test suite runs this)")
    check.add_argument("--budget-s", type=float, help=f"total time budget (default: {TOTAL_BUDGET_S:g})")
    check.add_argument("--step-budget-s", type=_budgets, help="per step, e.g. scale=300,cli=100 "
                       f"(defaults: {', '.join(f'{k}={v:g}' for k, v in STEP_BUDGET_S.items())})")  # fmt: skip
    check.add_argument("--model", help="random (VGGT-1B, needs vggt) or tiny")
    check.add_argument("--exact-dtypes", help="1: dtypes, e.g. float32,bfloat16")
    check.add_argument("--exact-frames", type=int, help="1: frames S")
    check.add_argument("--exact-blocks", type=_ints, help="1: blocks (clamped to the model's depth), e.g. 0,12,23")
    check.add_argument("--overhead-frames", type=int, help="2: frames S")
    check.add_argument("--rounds", type=int, help="2: interleaved rounds at most (fewer when the budget is short)")
    check.add_argument("--scale-frames", type=_ints, help="3: frames, e.g. 32,100,200")
    check.add_argument("--scale-queries", type=int, help="3: queries Q")
    check.add_argument("--scale-rounds", type=int, help="3: rounds per S")
    check.add_argument("--baseline-budget-gb", type=float, help="3: memory budget of the full-matrix baseline")
    check.add_argument("--host-memory-gb", type=float, help="3: host memory the kept rows may take")
    check.add_argument("--ablate-frames", type=int, help="ablate: frames S")
    check.add_argument("--ablate-batch-sizes", type=_ints, help="ablate: interventions per forward, e.g. 1,4")
    check.add_argument("--cli-photos", type=int, help="5: photos (cycled when the folder has fewer)")
    check.add_argument("--cli-size", type=int, help="5: --image-size of the CLI")
    check.add_argument("--photos", help="5: folder of photos (default: synthetic photos)")
    check.add_argument("--threads", type=int, help="torch CPU threads")
    only = {"suite": [a.dest for a in suite._group_actions], "check": [a.dest for a in check._group_actions]}
    return p, only


# --------------------------------------------------------------------------------------------
# Profiles tiny, vggt1b, quick: the sections
# --------------------------------------------------------------------------------------------


def settings_from_args(args: argparse.Namespace):
    from .suites import Settings

    device = args.device or "cpu"
    device_kind = "cuda" if device.startswith("cuda") else "cpu"
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
    budget = 8.0 if args.budget_gb is None else args.budget_gb
    settings = Settings(
        device=device, dtype=args.dtype or "float32", budget_gb=budget, isolate=not args.no_isolate, **preset
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
    """Write ``name.md`` and ``name.json``, each replaced whole, so a kill never leaves half a file."""
    from vggt_attn_rerun.io.atomic import write_file

    from .report import check_targets, markdown

    out.mkdir(parents=True, exist_ok=True)
    md_path, js_path = out / f"{name}.md", out / f"{name}.json"
    try:
        if "steps" in res:
            res["targets"] = check_targets(res)
        md = markdown(res)
    except Exception as e:  # a bug in the report must not lose the measurements: the JSON is written anyway
        md = f"# Benchmarks\n\nThe report failed ({type(e).__name__}: {e}); {name}.json holds the results.\n"
    for path, text in ((js_path, json.dumps(res, indent=2, default=str) + "\n"), (md_path, md)):
        write_file(path, lambda f, text=text: f.write(text.encode()))
    return md_path, js_path


# --------------------------------------------------------------------------------------------
# Profile --gpu-check: the steps, each under its time budget
# --------------------------------------------------------------------------------------------


def check_settings_from_args(args: argparse.Namespace):
    from .check import CheckSettings

    settings = CheckSettings(**DRY) if args.dry else CheckSettings()
    names = (
        "model", "device", "dtype", "size", "exact_frames", "exact_blocks", "overhead_frames", "queries", "rounds",
        "scale_frames", "scale_queries", "scale_rounds", "baseline_budget_gb", "host_memory_gb", "recording_frames",
        "ablate_frames", "ablate_batch_sizes", "cli_photos", "cli_size", "photos",
    )  # fmt: skip
    overrides = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    if args.exact_dtypes:
        overrides["exact_dtypes"] = tuple(t.strip() for t in args.exact_dtypes.split(",") if t.strip())
    return replace(settings, **overrides)


def _run_step(ctx: Any, name: str, entry: dict[str, Any], budget: float) -> None:
    import torch

    from .check import StepSkipped, StepTimeout, free, time_limit

    entry.update(status="running", budget_s=budget)
    ctx.deadline = time.perf_counter() + budget
    t0 = time.perf_counter()
    try:
        with time_limit(budget):
            STEPS[name](ctx, entry)
        entry["status"] = "ok"
    except StepTimeout as e:
        entry["status"] = f"stopped: {e} (what it measured is kept)"
        ctx.drop_hooks()
    except StepSkipped as e:
        entry["status"] = f"skipped: {e}"
    except torch.OutOfMemoryError as e:
        entry["status"] = f"out of memory: {str(e).splitlines()[0]}"
    except Exception as e:  # one step's failure must not cost the others their results
        entry["status"] = f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        entry["traceback"] = traceback.format_exc().splitlines()[-12:]
    finally:
        entry["seconds"] = time.perf_counter() - t0
        with contextlib.suppress(Exception):
            free(ctx.device)


def run_check(
    settings: Any,
    out: Path,
    name: str,
    steps: list[str],
    budget_s: float,
    step_budgets: dict[str, float],
    command: str = "",
    note: str | None = None,
    dry: bool = False,
    log=print,
) -> dict[str, Any]:
    """Run ``steps`` in the fixed order, writing the results after each measurement; returns them."""
    from .check import Ctx
    from .common import machine_info

    if not STEPS:
        STEPS.update(_steps())
    t_end = time.perf_counter() + budget_s
    res: dict[str, Any] = {
        "schema": "gpu_check/1",
        "title": f"{settings.model} on {settings.device}, {settings.dtype}",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "note": note,
        "dry": dry,
        "settings": asdict(settings),
        "budget_s": budget_s,
        "machine": machine_info(settings.device),
        "steps": {s: {"status": "not run"} for s in steps},
    }
    ctx = Ctx(settings, save=lambda: write_results(res, out, name), log=log)
    ctx.save()
    t0 = time.perf_counter()
    if set(steps) & set(MODEL_STEPS):  # loaded once, outside the steps' budgets (inside the total)
        try:
            ctx.load_model()
        except Exception as e:  # each step that needs it then reports the error itself
            res["model_error"] = f"{type(e).__name__}: {e}"
        res["model_load_s"] = ctx.measured.get("model_load_s")
    for step in steps:
        budget = min(step_budgets.get(step, STEP_BUDGET_S[step]), t_end - time.perf_counter())
        entry = res["steps"][step]
        if budget <= 1:
            entry["status"] = "skipped: no time left in --budget-s"
        else:
            log(f"== step {step} (budget {budget:.0f} s)")
            _run_step(ctx, step, entry, budget)
            log(f"== step {step}: {entry['status']} in {entry['seconds']:.1f} s")
        ctx.save()
    res["seconds"] = time.perf_counter() - t0
    ctx.save()
    return res


def _main_check(args: argparse.Namespace, command: str) -> int:
    import torch

    from .report import markdown

    steps = [s.strip() for s in (args.only or ",".join(STEP_BUDGET_S)).split(",") if s.strip()]
    bad = [s for s in steps if s not in STEP_BUDGET_S]
    if bad:
        print(f"unknown step {bad[0]!r}: valid are {', '.join(STEP_BUDGET_S)}", file=sys.stderr)
        return 2
    steps = [s for s in STEP_BUDGET_S if s in steps]  # the fixed order, whatever order was given
    settings = check_settings_from_args(args)
    if settings.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"--device {settings.device}: torch {torch.__version__} sees no CUDA device; use --device cpu or --dry",
            file=sys.stderr,
        )
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    model_tag = {"random": "vggt1b"}.get(settings.model, settings.model)
    name = args.name or f"gpu-check-{model_tag}-{settings.device.replace(':', '')}-{settings.dtype}"
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    settings = replace(settings, work_dir=str(work))
    budget_s = TOTAL_BUDGET_S if args.budget_s is None else args.budget_s
    try:
        res = run_check(
            settings, args.out, name, steps, budget_s, args.step_budget_s or {}, command, args.note, args.dry
        )
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(markdown(res))
    print(f"wrote {args.out / name}.json and .md ({res['seconds']:.0f} s)")
    return 0


def _main_suite(args: argparse.Namespace, command: str) -> int:
    from vggt_attn_rerun.errors import UserError

    from .report import markdown, verdicts

    sections = tuple(s.strip() for s in (args.only or ",".join(SECTIONS)).split(",") if s.strip())
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        print(f"unknown section {bad[0]!r}: valid are {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    profile, settings = settings_from_args(args)
    base = "quick" if args.quick else ("vggt1b" if args.vggt1b else "tiny")
    name = args.name or "-".join(
        [base, settings.device.replace(":", "")] + ([settings.dtype] if settings.dtype != "float32" else [])
    )
    try:
        res = run_benchmarks(settings, sections, profile, command, args.note)
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


def main(argv: list[str] | None = None) -> int:
    parser, only = build_parser()
    args = parser.parse_args(argv)
    profile, other = ("--gpu-check", "suite") if args.gpu_check else ("profiles tiny, --vggt1b, --quick", "check")
    given = [d for d in only[other] if getattr(args, d) not in (None, False)]
    if args.gpu_check and (args.vggt1b or args.quick):
        given.insert(0, "vggt1b" if args.vggt1b else "quick")
    if given:
        print(f"--{given[0].replace('_', '-')} does not apply to {profile}; see --help", file=sys.stderr)
        return 2
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    return (_main_check if args.gpu_check else _main_suite)(args, command.strip())


if __name__ == "__main__":
    if __package__ in (None, ""):  # `python benchmarks/run.py`: run it as the module benchmarks.run
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from benchmarks.run import main as module_main

        raise SystemExit(module_main())
    raise SystemExit(main())
