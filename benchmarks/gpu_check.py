"""The GPU check: one script, one command, a few minutes on a CUDA machine (see benchmarks/README.md).

    python -m benchmarks.gpu_check --out DIR                # random-weight VGGT-1B, CUDA, bf16, 518x518
    python -m benchmarks.gpu_check --dry --out DIR          # the same code on CPU, tiny model, toy sizes

Steps, in this order, each under its own time budget and the total one (``--budget-s``):

1. exact: captured rows vs an explicit recomputation for frame and global blocks 0, 12, 23
   (clamped to the model's depth), in fp32 and bf16; predictions with and without capture bit-identical.
2. overhead: S = 8, all blocks x heads x both kinds, Q = 1 and 16: time ratio (synchronized,
   plain and capture interleaved, median) and peak-memory ratio (reset between measurements).
3. scale: S = 32, 100, 200: peak memory of a plain forward and of capture, time ratio; where the
   full-matrix baseline stops fitting (predicted) and one real run at the largest S that fits.
4. recording: forward, log_run time and .rrd size at S = 8 and 100.
5. cli: the CLI on 8 photos (``--photos``) with ``--headless --save``: its memory estimate vs the peak.

The JSON and markdown results are rewritten after every measurement, so a run stopped at any point
returns what it measured. Nothing is installed here; the command line that prepares the machine is
in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata as md
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from vggt_attn_rerun.io.atomic import write_file

from .common import machine_info
from .gpu_ablate import step_ablate
from .gpu_exact import step_exact
from .gpu_record import step_cli, step_recording
from .gpu_report import markdown, targets
from .gpu_steps import CheckSettings, Ctx, StepSkipped, StepTimeout, free, step_overhead, step_scale, time_limit

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
# Sized for one H200 (VGGT-1B bf16 forward: well under a second at S = 8, tens of seconds at S = 200)
# and for a device lease of 15 minutes with the machine's start: the whole run stays under 8 minutes,
# so a second, shorter try still fits.
STEP_BUDGET_S = {"exact": 60.0, "overhead": 60.0, "scale": 180.0, "recording": 75.0, "ablate": 60.0, "cli": 120.0}
TOTAL_BUDGET_S = 420.0
MODEL_STEPS = ("exact", "overhead", "scale", "recording", "ablate")
STEPS = {
    "exact": step_exact,
    "overhead": step_overhead,
    "scale": step_scale,
    "recording": step_recording,
    "ablate": step_ablate,
    "cli": step_cli,
}
# --dry: the same code paths on CPU with the tiny model at toy sizes (seconds; run by the test suite).
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


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(",") if t.strip())


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def _budgets(text: str) -> dict[str, float]:
    out = {}
    for item in text.split(","):
        name, _, seconds = item.partition("=")
        if name.strip() not in STEP_BUDGET_S or not seconds:
            raise argparse.ArgumentTypeError(f"{item!r}: expected STEP=SECONDS with STEP in {', '.join(STEP_BUDGET_S)}")
        out[name.strip()] = float(seconds)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the .json and .md (default: %(default)s)")
    p.add_argument("--name", help="base name of the result files (default: gpu-check-<model>-<device>-<dtype>)")
    p.add_argument("--dry", action="store_true", help="tiny model on CPU at toy sizes (the test suite runs this)")
    p.add_argument("--steps", default=",".join(STEP_BUDGET_S), help="comma-separated subset, run in the fixed order")
    p.add_argument("--budget-s", type=float, default=TOTAL_BUDGET_S, help="total time budget (default: %(default)s)")
    p.add_argument(
        "--step-budget-s",
        type=_budgets,
        default={},
        help="per step, e.g. scale=300,cli=100 "
        f"(defaults: {', '.join(f'{k}={v:g}' for k, v in STEP_BUDGET_S.items())})",
    )
    p.add_argument("--model", help="random (VGGT-1B, needs vggt) or tiny")
    p.add_argument("--device", help="cuda (default), cuda:N or cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="autocast dtype of steps 2-5")
    p.add_argument("--size", type=_size, help="model image HxW of steps 1-4 (multiples of 14), e.g. 518x518")
    p.add_argument("--exact-dtypes", help="1: dtypes, e.g. float32,bfloat16")
    p.add_argument("--exact-frames", type=int, help="1: frames S")
    p.add_argument("--exact-blocks", type=_ints, help="1: blocks (clamped to the model's depth), e.g. 0,12,23")
    p.add_argument("--overhead-frames", type=int, help="2: frames S")
    p.add_argument("--queries", type=_ints, help="2: query counts, e.g. 1,16")
    p.add_argument("--rounds", type=int, help="2: interleaved rounds at most (fewer when the budget is short)")
    p.add_argument("--scale-frames", type=_ints, help="3: frames, e.g. 32,100,200")
    p.add_argument("--scale-queries", type=int, help="3: queries Q")
    p.add_argument("--scale-rounds", type=int, help="3: rounds per S")
    p.add_argument("--baseline-budget-gb", type=float, help="3: memory budget of the full-matrix baseline")
    p.add_argument("--host-memory-gb", type=float, help="3: host memory the kept rows may take")
    p.add_argument("--recording-frames", type=_ints, help="4: frames, e.g. 8,100")
    p.add_argument("--ablate-frames", type=int, help="ablate: frames S")
    p.add_argument("--ablate-batch-sizes", type=_ints, help="ablate: interventions per forward, e.g. 1,4")
    p.add_argument("--cli-photos", type=int, help="5: photos (cycled when the folder has fewer)")
    p.add_argument("--cli-size", type=int, help="5: --image-size of the CLI")
    p.add_argument("--photos", help="5: folder of photos (default: ../shared/data/kitchen beside the repository)")
    p.add_argument("--work-dir", help="where .rrd files and photo links go (default: a temporary folder, removed)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--note", help="a line for the report, e.g. 'machine shared with other jobs'")
    return p


def settings_from_args(args: argparse.Namespace):
    settings = CheckSettings(**DRY) if args.dry else CheckSettings()
    names = (
        "model",
        "device",
        "dtype",
        "size",
        "exact_frames",
        "exact_blocks",
        "overhead_frames",
        "queries",
        "rounds",
        "scale_frames",
        "scale_queries",
        "scale_rounds",
        "baseline_budget_gb",
        "host_memory_gb",
        "recording_frames",
        "ablate_frames",
        "ablate_batch_sizes",
        "cli_photos",
        "cli_size",
        "photos",
    )
    overrides = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    if args.exact_dtypes:
        overrides["exact_dtypes"] = tuple(t.strip() for t in args.exact_dtypes.split(",") if t.strip())
    return replace(settings, **overrides)


def _nvidia_smi() -> dict[str, str]:
    query = "name,driver_version,memory.total"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = (
            subprocess.run(
                ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            )
            .stdout.strip()
            .splitlines()
        )
        if out:
            return dict(zip(("smi_name", "driver", "smi_memory"), (v.strip() for v in out[0].split(",")), strict=False))
    return {}


def machine(device: str) -> dict[str, Any]:
    """common.machine_info plus what the GPU figures depend on: driver, CUDA, cuDNN, capability, vggt."""
    info = machine_info(device)
    info["python_executable"] = sys.executable
    with contextlib.suppress(md.PackageNotFoundError):
        info["vggt"] = md.version("vggt")
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            cudnn=torch.backends.cudnn.version(),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            **_nvidia_smi(),
        )
    return info


def write(res: dict[str, Any], out: Path, name: str) -> tuple[Path, Path]:
    """Write ``name.json`` and ``name.md`` (each replaced whole, so a kill never leaves half a file)."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        res["targets"] = targets(res)
        md = markdown(res)
    except Exception as e:  # a bug in the report must not lose the measurements: the JSON is written anyway
        md = f"# GPU check\n\nThe report failed ({type(e).__name__}: {e}); {name}.json holds the results.\n"
    paths = out / f"{name}.json", out / f"{name}.md"
    for path, text in zip(paths, (json.dumps(res, indent=2, default=str) + "\n", md), strict=True):
        write_file(path, lambda f, text=text: f.write(text.encode()))
    return paths


def _run_step(ctx: Any, name: str, entry: dict[str, Any], budget: float) -> None:
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
        "machine": machine(settings.device),
        "steps": {s: {"status": "not run"} for s in steps},
    }
    ctx = Ctx(settings, save=lambda: write(res, out, name), log=log)
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    bad = [s for s in steps if s not in STEP_BUDGET_S]
    if bad:
        print(f"unknown step {bad[0]!r}: valid are {', '.join(STEP_BUDGET_S)}", file=sys.stderr)
        return 2
    steps = [s for s in STEP_BUDGET_S if s in steps]  # the order, whatever order was given
    settings = settings_from_args(args)
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
    command = "python -m benchmarks.gpu_check " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    settings = replace(settings, work_dir=str(work))
    try:
        res = run_check(
            settings, args.out, name, steps, args.budget_s, args.step_budget_s, command.strip(), args.note, args.dry
        )
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(markdown(res))
    print(f"wrote {args.out / name}.json and .md ({res['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
