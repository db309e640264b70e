"""Dataset mode throughput: scenes per second, local engine vs Ray Data, and the cost of the tables.

    python -m benchmarks.batch_bench                       # tiny model, 24 scenes, local + ray (2 workers)
    python -m benchmarks.batch_bench --scenes 4 --no-ray   # a quick local-only run

Each engine runs the same synthetic scenes (``--frames`` photos of ``--size`` pixels each, an
``--grid`` query grid over frame 0, both attention kinds, all blocks) into a fresh study folder.
The local engine runs once per ``--local-threads`` count (torch threads; Ray's workers get one
each, OMP_NUM_THREADS=1). Reported per run: the wall time of ``run_study``'s scene loop (model
loading included: once for local, once per worker for Ray), scenes/s, and the mean time per
scene spent writing its table (``StudyFolder.save``: Arrow table -> Parquet, atomically); Ray's own start-up
(``ray.init``) is reported apart. The aggregate step (scenes.parquet, summary.parquet/.md/.rrd)
is timed once. Results: ``benchmarks/results/batch-tiny-cpu.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from benchmarks.common import REPO_ROOT, machine_info
from vggt_attn_rerun.batch.engines import RaySettings
from vggt_attn_rerun.batch.job import StudyOptions
from vggt_attn_rerun.batch.store import StudyFolder
from vggt_attn_rerun.batch.study import prepare, run_study, write_aggregate
from vggt_attn_rerun.testing import synthetic_scene


def make_scenes(root: Path, count: int, frames: int, size: int) -> Path:
    for i in range(count):
        folder = root / f"scene{i:03d}"
        folder.mkdir(parents=True)
        for k, img in enumerate(synthetic_scene(frames, size, size, seed=i)):
            Image.fromarray(img).save(folder / f"{k:02d}.png")
    return root


def _engine_row(name: str, report: Any, workers: int, threads: int, startup: float = 0.0) -> dict[str, Any]:
    ran = report.done + len(report.failed)
    return {
        "engine": name,
        "workers": workers,
        "torch_threads": threads,
        "scenes": ran,
        "seconds": report.seconds,
        "scenes_per_s": ran / report.seconds,
        # Ray Data hands results back in bursts, so this is an upper bound of the start-up cost there
        "first_scene_s": report.first_seconds,
        "table_write_ms_per_scene": 1000 * report.table_seconds / max(ran, 1),
        "ray_init_s": startup,
    }


def table_costs(rows: int, repeats: int = 20) -> tuple[float, int]:
    """One scene's table of ``rows`` rows (random values): median ms to write it (atomic Parquet),
    and its size in bytes as it travels from a Ray worker (Arrow IPC)."""
    import numpy as np
    import pyarrow as pa

    from vggt_attn_rerun.batch.job import COUNT_COLUMNS, METRIC_COLUMNS, SCHEMA
    from vggt_attn_rerun.batch.store import write_table_atomic

    rng = np.random.default_rng(0)
    data = {"scene": ["s"] * rows, "kind": ["global"] * rows, "block": np.arange(rows) // 16,
            "head": np.arange(rows) % 16, **{c: np.zeros(rows, np.int32) for c in COUNT_COLUMNS},
            **{m: rng.uniform(size=rows) for m in METRIC_COLUMNS}}  # fmt: skip
    table = pa.Table.from_pydict(data, schema=SCHEMA)
    times = []
    with tempfile.TemporaryDirectory() as d:
        for i in range(repeats):
            t0 = time.perf_counter()
            write_table_atomic(Path(d) / f"{i}.parquet", table)
            times.append(time.perf_counter() - t0)
    from vggt_attn_rerun.batch.engines import table_to_bytes

    return 1000 * sorted(times)[len(times) // 2], len(table_to_bytes(table))


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="batch_bench_"))
    try:
        scenes = make_scenes(work / "scenes", args.scenes, args.frames, args.size)
        options = StudyOptions(model="tiny", grid=(args.grid, args.grid), image_size=args.size, device="cpu")
        rows = []
        default_threads = torch.get_num_threads()
        for threads in args.local_threads:
            torch.set_num_threads(threads)
            report = run_study(scenes, work / f"local{threads}", options, progress=False)
            rows.append(_engine_row("local", report, 1, threads))
        torch.set_num_threads(default_threads)
        scene_list, folder = prepare(scenes, work / f"local{args.local_threads[-1]}", options)
        t0 = time.perf_counter()
        write_aggregate(StudyFolder(folder.root, options), scene_list)
        aggregate_s = time.perf_counter() - t0
        if args.ray:
            import ray

            t0 = time.perf_counter()
            ray.init(num_cpus=args.ray_cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
            startup = time.perf_counter() - t0
            try:
                report = run_study(scenes, work / "ray", options, engine="ray", ray=RaySettings(workers=args.workers),
                                   progress=False)  # fmt: skip
                rows.append(_engine_row("ray", report, args.workers, 1, startup))  # Ray: OMP_NUM_THREADS=1
            finally:
                ray.shutdown()
        settings = {"scenes": args.scenes, "frames": args.frames, "size": args.size, "grid": args.grid}
        return {
            "command": "python -m benchmarks.batch_bench " + " ".join(args.argv),
            "settings": {**settings, "kinds": list(options.kinds), "model": "tiny"},
            "machine": machine_info("cpu"),
            "engines": rows,
            "aggregate_s": aggregate_s,
            "table_vggt": dict(zip(("write_ms", "ipc_bytes"), table_costs(2 * 24 * 16), strict=True)),
            "rows_per_scene": 2 * 4 * 4,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def markdown(data: dict[str, Any]) -> str:
    s, m = data["settings"], data["machine"]
    lines = [
        "# Dataset mode: scenes per second (tiny model, CPU)",
        "",
        f"Command: `{data['command']}`",
        f"Machine: {m['cpu']}, {m['cores_usable']} usable cores, torch {m['torch']} (torch threads {m['torch_threads']}"
        f" in the driver), load average at start {m['load_average']}.",
        f"Scenes: {s['scenes']} synthetic scenes of {s['frames']} photos of {s['size']}x{s['size']}, {s['grid']}x"
        f"{s['grid']} query grid over frame 0, kinds {'+'.join(s['kinds'])}, all blocks and heads "
        f"({data['rows_per_scene']} table rows per scene).",
        "",
        "| engine | workers | torch threads each | scenes | seconds | scenes/s | first scene back | table write per"
        " scene | ray.init |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["engines"]:
        init = f"{r['ray_init_s']:.1f} s" if r["engine"] == "ray" else "-"
        lines.append(
            f"| {r['engine']} | {r['workers']} | {r['torch_threads']} | {r['scenes']} | {r['seconds']:.2f} | "
            f"{r['scenes_per_s']:.2f} | {r['first_scene_s']:.2f} s | {r['table_write_ms_per_scene']:.1f} ms | {init} |"
        )
    lines += [
        "",
        f"Aggregate (scenes.parquet, summary.parquet, summary.md, summary.rrd): {data['aggregate_s']:.2f} s.",
        f"Writing one scene's table at VGGT-1B's size (2 kinds x 24 blocks x 16 heads = 768 rows, atomic Parquet):"
        f" {data['table_vggt']['write_ms']:.1f} ms (median of 20); {data['table_vggt']['ipc_bytes'] / 1024:.0f} KiB"
        " as Arrow IPC (what a Ray worker sends back).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=24)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--size", type=int, default=224, help="square photos, also the model input width")
    p.add_argument("--grid", type=int, default=8, help="G: a GxG query grid")
    p.add_argument("--workers", type=int, default=2, help="Ray workers")
    p.add_argument("--ray-cpus", type=int, default=2, help="CPUs of the local Ray instance")
    p.add_argument("--local-threads", type=lambda t: [int(v) for v in t.split(",")], default=[1, 2],
                   help="torch threads of the local runs, e.g. 1,2")  # fmt: skip
    p.add_argument("--no-ray", dest="ray", action="store_false")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    p.add_argument("--name", default="batch-tiny-cpu")
    args = p.parse_args(argv)
    args.argv = argv
    data = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(data))
    print(markdown(data))
    print(f"torch threads: {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
