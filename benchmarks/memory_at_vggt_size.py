"""Peak memory of ``--save`` and of the importer against the size of what they write, at VGGT-1B's size.

Synthetic runs, as ``log_at_vggt_size`` makes them: 518x518 input (37x37 patches), 16 heads,
frame + global rows of random softmax logits, a grid of Q queries over frame 0 and a synthetic
point map; no model. Each case runs in a child process of its own and reports that process's
peak resident memory (``ru_maxrss``):

- ``save``: ``log_run`` into the sinks of ``--save`` (``viz.sinks.open_sinks``), then the file
  committed (``io.atomic.commit``), as the command line does after the forward pass;
- ``save-nofooter``: the same without Rerun's footer (``SinkPlan(footer=False)``), whose index of
  every chunk Rerun holds in memory until the file closes;
- ``import``: ``rerun-importer-vggt-attn run.npz > /dev/null`` on the ``--export`` of the same run
  (``io.runfile.save_run``; written by another child, not measured).

"growth" is a case's peak minus the peak of the 1-query case with the same frames and blocks; the
target is a growth of at most the rows themselves (``rows`` minus the 1-query rows): what the
capture holds anyway, not a multiple of the file.

    python -m benchmarks.memory_at_vggt_size --label after          # this tree
    cd /some/other/tree && PYTHONPATH=$PWD python /path/to/benchmarks/memory_at_vggt_size.py --label before
    python -m benchmarks.memory_at_vggt_size --cases 8x1x24,8x4x24 --modes save,import   # a subset

``--cases``: FRAMESxSIDExBLOCKS (SIDE x SIDE queries); a growth needs the case's 1-query case.

Writes ``benchmarks/results/memory-<label>.json`` and ``.md`` (``--out`` for another folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZE, GRID, HEADS = 518, 37, 16
RESULTS = Path(__file__).resolve().parent / "results"

#: (frames, query grid side, blocks): query grids at 8 frames, frame counts at one query
CASES = [(8, 1, 24), (8, 2, 24), (8, 4, 24), (100, 1, 2), (100, 2, 2), (200, 1, 2)]
#: the importer's cases (save_run compresses the rows: the biggest runs would take minutes to export)
IMPORT_CASES = [(8, 1, 24), (8, 2, 24), (8, 4, 24), (100, 1, 2), (100, 2, 2)]
MODES = ("save", "save-nofooter", "import")


def _cases(text: str) -> list[tuple[int, int, int]]:
    try:
        cases = [tuple(int(n) for n in case.split("x")) for case in text.split(",")]
    except ValueError:
        cases = []
    if not cases or any(len(c) != 3 or min(c) < 1 for c in cases):
        raise argparse.ArgumentTypeError(f"expected FRAMESxSIDExBLOCKS,... (e.g. 8x1x24,8x4x24), got {text!r}")
    return cases  # type: ignore[return-value]


def fake_run(num_frames: int, side: int, blocks: int):  # noqa: ANN201 - CaptureResult, imported late
    """A CaptureResult of VGGT-1B's shapes with ``side x side`` queries on frame 0 (random rows)."""
    import torch

    from benchmarks.common import synthetic_predictions
    from vggt_attn_rerun.core.capture import CaptureResult
    from vggt_attn_rerun.core.rows import AttentionRows
    from vggt_attn_rerun.core.tokens import Query, TokenLayout

    lay = TokenLayout(num_frames, GRID, GRID)
    g = torch.Generator().manual_seed(0)
    cells = [(1 + (GRID - 2) * r // max(side - 1, 1), 1 + (GRID - 2) * c // max(side - 1, 1))
             for r in range(side) for c in range(side)]  # fmt: skip
    queries = tuple(Query.from_patch(lay, 0, r, c) for r, c in cells)
    probs = {}
    shape = (blocks, len(queries), HEADS, num_frames, lay.tokens_per_frame)
    for kind in ("global", "frame"):
        # One block at a time, in place: the rows are all this run holds of them (no temporaries
        # that would set the peak before logging starts).
        probs[kind] = torch.zeros(shape)
        for b in range(blocks):
            logits = torch.randn(shape[1:], generator=g) * 3
            if kind == "global":
                probs[kind][b] = logits.flatten(-2).softmax(-1).reshape(logits.shape)
            else:  # frame attention only reaches the query's own frame (0)
                probs[kind][b, :, :, 0] = logits[:, :, 0].softmax(-1)
    rows = AttentionRows(lay, queries, tuple(range(blocks)), HEADS, probs)
    predictions = synthetic_predictions(num_frames, SIZE, g)
    return CaptureResult(predictions, rows, lay)


def fake_images(num_frames: int):  # noqa: ANN201 - LoadedImages
    import torch

    from vggt_attn_rerun.core.images import images_from_tensor
    from vggt_attn_rerun.testing import synthetic_scene

    photos = torch.from_numpy(synthetic_scene(num_frames, SIZE, SIZE)).permute(0, 3, 1, 2).float() / 255
    return images_from_tensor(photos)


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _rows_bytes(result) -> int:  # noqa: ANN001
    return sum(p.numel() * p.element_size() for p in result.rows.probs.values())


def child_save(frames: int, side: int, blocks: int, out: Path, footer: bool = True) -> dict:
    import rerun as rr

    from vggt_attn_rerun.io.atomic import commit
    from vggt_attn_rerun.viz.log_run import log_run
    from vggt_attn_rerun.viz.options import RecordingOptions
    from vggt_attn_rerun.viz.sinks import Outputs, SinkPlan, open_sinks

    result, images = fake_run(frames, side, blocks), fake_images(frames)
    before = _peak_bytes()
    rec = rr.RecordingStream("vggt_attn_rerun")
    start = time.perf_counter()
    with open_sinks(rec, SinkPlan(Outputs(save=out, overwrite=True), footer=footer)) as sinks:
        log_run(rec, result, images, RecordingOptions(kinds=("global", "frame")))
        commit(sinks.finish())
    return {"seconds": time.perf_counter() - start, "peak": _peak_bytes(), "peak_before_logging": before,
            "rows": _rows_bytes(result), "file": out.stat().st_size}  # fmt: skip


def child_export(frames: int, side: int, blocks: int, out: Path) -> dict:
    from vggt_attn_rerun.io.runfile import save_run

    result = fake_run(frames, side, blocks)
    save_run(out, result, fake_images(frames))
    return {"rows": _rows_bytes(result), "file": out.stat().st_size}


def child_import(path: Path) -> dict:
    from vggt_attn_rerun.cli import importer

    start = time.perf_counter()
    fd = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(1)
    os.dup2(fd, 1)  # the recording goes where the viewer would read it; here nowhere
    try:
        code = importer.main([str(path), "--application-id", "vggt_attn_rerun"])
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
    return {"seconds": time.perf_counter() - start, "peak": _peak_bytes(), "exit": code}


def _child(args: list[str], env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", *args],
                          capture_output=True, text=True, env=env)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _code_version() -> dict:
    import vggt_attn_rerun

    tree = Path(vggt_attn_rerun.__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        rev = "unknown"
    return {"commit": rev}


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f}"


def _with_growth(rows: list[dict]) -> None:
    base = {(r["mode"], r["frames"], r["blocks"]): r for r in rows if r["queries"] == 1}
    for r in rows:
        b = base.get((r["mode"], r["frames"], r["blocks"]))
        r["growth"] = None if b is None else r["peak"] - b["peak"]
        r["rows_growth"] = None if b is None else r["rows"] - b["rows"]


def _markdown(report: dict) -> str:
    lines = [
        f"# Peak memory of --save and of the importer ({report['label']})",
        "",
        f"Code: commit {report['code']['commit']}; {report['machine']}; rerun-sdk {report['rerun']}. "
        "Synthetic runs at VGGT-1B's size (518 px, 37x37 patches, 16 heads, frame + global rows); "
        "peak RSS of a child process per case. growth: peak minus the 1-query peak (same frames, blocks); "
        "rows growth: the rows' own growth (the target bound).",
        "",
        "| mode | frames | queries | blocks | rows MiB | file MiB | peak MiB | growth MiB | rows growth MiB | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["cases"]:
        growth = "-" if r["growth"] is None or r["queries"] == 1 else _mib(r["growth"])
        rows_growth = "-" if r["rows_growth"] is None or r["queries"] == 1 else _mib(r["rows_growth"])
        lines.append(
            f"| {r['mode']} | {r['frames']} | {r['queries']} | {r['blocks']} | {_mib(r['rows'])} | {_mib(r['file'])} | "
            f"{_mib(r['peak'])} | {growth} | {rows_growth} | {r['seconds']:.1f} |"
        )
    lines += ["", f"Total wall time: {report['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def compare(before_path: Path, after_path: Path) -> str:
    """A markdown table of two reports' cases side by side (the cases both measured)."""
    before, after = (json.loads(Path(p).read_text()) for p in (before_path, after_path))
    key = ("mode", "frames", "queries", "blocks")
    old = {tuple(r[k] for k in key): r for r in before["cases"]}
    lines = [
        f"# Peak memory, {before['label']} ({before['code']['commit']}) and {after['label']} "
        f"({after['code']['commit']})",
        "",
        f"{after['machine']}; rerun-sdk {after['rerun']}; `python -m benchmarks.memory_at_vggt_size`. MiB; growth: "
        "peak minus the 1-query peak with the same frames and blocks; the target is a growth of at most the rows' "
        "own growth.",
        "",
        f"| mode | frames | queries | blocks | file | rows growth | peak {before['label']} | growth {before['label']} "
        f"| peak {after['label']} | growth {after['label']} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in after["cases"]:
        b = old.get(tuple(r[k] for k in key))  # None: a mode the earlier code did not have
        one = r["queries"] == 1
        lines.append(
            f"| {r['mode']} | {r['frames']} | {r['queries']} | {r['blocks']} | {_mib(r['file'])} | "
            f"{'-' if one else _mib(r['rows_growth'])} | {'-' if b is None else _mib(b['peak'])} | "
            f"{'-' if one or b is None else _mib(b['growth'])} | {_mib(r['peak'])} | "
            f"{'-' if one else _mib(r['growth'])} |"
        )
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="after", help="names the result files: memory-<label>.json/.md")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true", help="two small cases only (a smoke test)")
    parser.add_argument("--cases", type=_cases, help="a subset: FRAMESxSIDExBLOCKS,... (default: every case)")
    parser.add_argument("--modes", default=",".join(MODES), type=lambda t: t.split(","),
                        help=f"a subset of {','.join(MODES)}")  # fmt: skip
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE.json", "AFTER.json"),
                        help="write memory.md: two reports side by side (measures nothing)")  # fmt: skip
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compare:
        text = compare(*args.compare)
        (args.out / "memory.md").write_text(text)
        print(text)
        return
    if args.child:
        mode, *rest = args.child
        if mode == "import":
            out = child_import(Path(rest[0]))
        else:
            frames, side, blocks = map(int, rest[:3])
            if mode == "export":
                out = child_export(frames, side, blocks, Path(rest[3]))
            else:
                out = child_save(frames, side, blocks, Path(rest[3]), footer=mode == "save")
        print(json.dumps(out))
        return
    import rerun as rr

    env = dict(os.environ)
    cases = [(4, 1, 2), (4, 2, 2)] if args.quick else args.cases or CASES
    import_cases = cases if args.quick or args.cases else IMPORT_CASES
    start = time.perf_counter()
    found = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in [m for m in ("save", "save-nofooter") if m in args.modes]:
            for frames, side, blocks in cases:
                got = _child([mode, str(frames), str(side), str(blocks), f"{tmp}/out.rrd"], env)
                found.append({"mode": mode, "frames": frames, "queries": side * side, "blocks": blocks, **got})
                print(found[-1], flush=True)
        for frames, side, blocks in import_cases if "import" in args.modes else []:
            made = _child(["export", str(frames), str(side), str(blocks), f"{tmp}/run.npz"], env)
            got = _child(["import", f"{tmp}/run.npz"], env)
            found.append({"mode": "import", "frames": frames, "queries": side * side, "blocks": blocks, **made, **got})
            print(found[-1], flush=True)
    _with_growth(found)
    report = {"label": args.label, "code": _code_version(), "rerun": rr.__version__,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "seconds": time.perf_counter() - start,
              "cases": found}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"memory-{args.label}.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / f"memory-{args.label}.md").write_text(_markdown(report))
    print(_markdown(report))


if __name__ == "__main__":
    main()
