"""The known-answer benchmark of the dataset scores: rendered scenes with exact geometry.

    python -m benchmarks.known_answer                 # 8 scenes per camera path, 200 null trials
    python -m benchmarks.known_answer --scenes 4 --trials 50   # a quicker run

Scenes: ``testing.render_scene`` (textured wall, floor and boxes, exact cameras and depth) on each
camera path (sideways, forward, orbit), written with their ``cameras.npz``, so every study scores
against the truth (``reference = truth``). Three models, each a full study (global attention, a
4 x 4 query grid over frame 0, every block):

- ``matching``: ``testing.matching_vggt()``, whose global block 2 was constructed to match
  appearance across views. Known answer: block 2 ranks first by every gain (per-block curve:
  mean over heads and scenes), its 95% interval above every other block's interval.
- ``tiny``: the plain ``testing.tiny_vggt()`` (random weights, no matching heads) and
  ``uniform``: ``testing.uniform_vggt()`` (global attention exactly uniform). Reported: the
  block x head cells that are findings after correction (q <= 0.05) per gain; expected none. A
  finding beats both the gain's uniform null and its gain against position (the intersection-union
  test of ``analysis.significance.finding_p``).
- Null trials: the matching model's captured rows, each row's patch probabilities shuffled over
  the patches of each view (the permutation null: the map is unrelated to the geometry), scored
  like a study (per-scene gains, one-sided t-test over the scenes, BH over the cells). Reported
  per gain, for the test against the uniform null alone and for the finding test: the fraction of
  (trial, cell) tests with p <= 0.05 (nominal 0.05) and the fraction of trials with any cell at
  q <= 0.05 (BH: at most 0.05 under the complete null).

Results: ``benchmarks/results/known-answer.{md,json}``; the matching model's sideways study
folder (summary.md, summary.rrd) is kept under ``--keep`` when given.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from benchmarks.common import REPO_ROOT, machine_info
from vggt_attn_rerun.analysis.consistency import geometric_consistency
from vggt_attn_rerun.analysis.epipolar import epipolar_consistency
from vggt_attn_rerun.analysis.significance import ALPHA, bh_qvalues, finding_p, one_sided_p
from vggt_attn_rerun.batch.inputs import Scene
from vggt_attn_rerun.batch.job import (
    GAIN_METRICS,
    POSITION_GAINS,
    StudyOptions,
    capture_scene,
    scene_images,
    scene_truth,
)
from vggt_attn_rerun.batch.study import run_study
from vggt_attn_rerun.core.rows import AttentionRows
from vggt_attn_rerun.testing import CAMERA_PATHS, matching_vggt, render_scene, tiny_vggt, uniform_vggt, write_scene

MODELS = {"matching": matching_vggt, "tiny": tiny_vggt, "uniform": uniform_vggt}
MATCHING_BLOCK = 2
#: the matching block's means reported beside its findings: the gains against position and their parts
CONTEXT_COLUMNS = (*POSITION_GAINS.values(), "peak_dist", "peak_dist_null", "epipolar_dist", "epipolar_control")


def make_scenes(root: Path, path: str, count: int, height: int, width: int) -> Path:
    for i in range(count):
        write_scene(root / f"{path}{i:02d}", render_scene(path, 3, height=height, width=width, seed=100 * i + 7))
    return root


def _summary(out: Path) -> dict[str, np.ndarray]:
    t = pq.read_table(out / "summary.parquet")
    return {name: t[name].to_numpy(zero_copy_only=False) for name in t.column_names}


def block_ranking(summary: dict[str, np.ndarray], gain: str) -> dict[str, Any]:
    """Per-block curve of one gain: blocks by mean, and whether the matching block is first and clear."""
    line = summary["head"] == -1
    blocks = summary["block"][line]
    mean, low, high = (summary[f"{gain}_{s}"][line] for s in ("mean", "low", "high"))
    order = np.argsort(-mean, kind="stable")
    i = int(np.flatnonzero(blocks == MATCHING_BLOCK)[0])
    others = [j for j in range(len(blocks)) if j != i]
    return {
        "ranking": [int(blocks[j]) for j in order],
        "first": bool(blocks[order[0]] == MATCHING_BLOCK),
        "clear": bool(all(low[i] > high[j] for j in others)),
        "matching": [float(mean[i]), float(low[i]), float(high[i])],
        "best_other_high": float(max(high[j] for j in others)),
    }


def significant_cells(summary: dict[str, np.ndarray], gain: str) -> int:
    cells = summary["head"] >= 0
    return int((np.nan_to_num(summary[f"{gain}_q"][cells], nan=1.0) <= ALPHA).sum())


def significant_list(summary: dict[str, np.ndarray], gain: str) -> list[dict[str, Any]]:
    """The significant cells of a gain, with the correspondence score, its null and its positional control."""
    cells = np.flatnonzero((summary["head"] >= 0) & (np.nan_to_num(summary[f"{gain}_q"], nan=1.0) <= ALPHA))
    return [
        {
            "block": int(summary["block"][i]),
            "head": int(summary["head"][i]),
            "gain": float(summary[f"{gain}_mean"][i]),
            "q": float(summary[f"{gain}_q"][i]),
            "correspondence_score": float(summary["correspondence_score_mean"][i]),
            "correspondence_null": float(summary["correspondence_null_mean"][i]),
            "correspondence_control": float(summary["correspondence_control_mean"][i]),
        }
        for i in cells
    ]


def _shuffled(rows: AttentionRows, gen: torch.Generator) -> AttentionRows:
    """The rows with each row's patch probabilities permuted within each view (special tokens kept)."""
    probs = rows.probs["global"]
    start = rows.layout.patch_start
    patches = probs[..., start:]
    keys = torch.rand(patches.shape, generator=gen)
    perm = keys.argsort(-1)
    shuffled = torch.cat([probs[..., :start], patches.gather(-1, perm)], -1)
    return AttentionRows(rows.layout, rows.queries, rows.blocks, rows.num_heads, {"global": shuffled})


def null_trials(scene_root: Path, options: StudyOptions, trials: int, seed: int = 0) -> dict[str, Any]:
    """Permutation-null trials on the matching model's rows (module docstring)."""
    model = matching_vggt()
    captured = []
    for folder in sorted(p for p in scene_root.iterdir() if p.is_dir()):
        scene = Scene(folder.name, folder)
        images = scene_images(scene, options, 14)
        captured.append((capture_scene(model, images, options), scene_truth(scene, images), images))
    gen = torch.Generator().manual_seed(seed)
    tested = ("null", "finding")
    rejections = {t: {g: 0 for g in GAIN_METRICS} for t in tested}
    any_q = {t: {g: 0 for g in GAIN_METRICS} for t in tested}
    tests = 0
    for _ in range(trials):
        per_scene: dict[str, list[np.ndarray]] = {g: [] for g in (*GAIN_METRICS, *POSITION_GAINS.values())}
        for result, geometry, images in captured:
            rows = _shuffled(result.rows, gen)
            cons = geometric_consistency(rows, result.predictions, radius=options.radius,
                                         transforms=images.transforms, geometry=geometry)  # fmt: skip
            epi = epipolar_consistency(rows, result.predictions, geometry=geometry)
            per_scene["correspondence_gain"].append(cons.gain)
            per_scene["correspondence_beyond_position_gain"].append(cons.beyond_position_gain_score)
            per_scene["peak_dist_gain"].append(cons.peak_gain_score)
            per_scene["epipolar_gain"].append(epi.gain_score)
            per_scene["peak_dist_beyond_position_gain"].append(cons.peak_beyond_position_gain_score)
            per_scene["epipolar_beyond_position_gain"].append(epi.beyond_position_gain_score)
        cells = {g: np.stack(v, -1).reshape(-1, len(v)) for g, v in per_scene.items()}  # [cells, scenes]
        for g in GAIN_METRICS:
            for t, p in (("null", one_sided_p(cells[g])), ("finding", finding_p(cells[g], cells[POSITION_GAINS[g]]))):
                rejections[t][g] += int((p <= ALPHA).sum())
                any_q[t][g] += int((bh_qvalues(p) <= ALPHA).any())
        tests += cells[GAIN_METRICS[0]].shape[0]
    return {
        "trials": trials,
        "tests_per_gain": tests,
        "false_positive_rate": {t: {g: rejections[t][g] / tests for g in GAIN_METRICS} for t in tested},
        "any_significant_cell_rate": {t: {g: any_q[t][g] / trials for g in GAIN_METRICS} for t in tested},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=8, help="scenes per camera path (default 8)")
    ap.add_argument("--trials", type=int, default=200, help="permutation-null trials (default 200)")
    ap.add_argument("--height", type=int, default=84)
    ap.add_argument("--width", type=int, default=126)
    ap.add_argument("--grid", type=int, default=4, help="queries: a grid x grid grid over frame 0 (default 4)")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    ap.add_argument("--keep", type=Path, default=None, help="keep the matching model's sideways study here")
    args = ap.parse_args(argv)
    options = StudyOptions(
        model="tiny", grid=(args.grid, args.grid), image_size=args.width, device="cpu", kinds=("global",)
    )
    start = time.perf_counter()
    command = "python -m benchmarks.known_answer" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    report: dict[str, Any] = {"command": command, "machine": machine_info("cpu"), "scenes_per_path": args.scenes,
                              "image": [args.height, args.width], "grid": args.grid, "paths": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for path in CAMERA_PATHS:
            scenes = make_scenes(root / path, path, args.scenes, args.height, args.width)
            entry: dict[str, Any] = {}
            for name, build in MODELS.items():
                out = root / f"out-{path}-{name}"
                run_study(scenes, out, options, model=build(), progress=False)
                summary = _summary(out)
                entry[name] = {
                    "reference": sorted(set(summary["reference"].tolist()) - {""}),
                    "significant_cells": {g: significant_cells(summary, g) for g in GAIN_METRICS},
                    "significant": {g: significant_list(summary, g) for g in GAIN_METRICS},
                    "cells": int((summary["head"] >= 0).sum()),
                }
                if name == "matching":
                    entry[name]["blocks"] = {g: block_ranking(summary, g) for g in GAIN_METRICS}
                    line = (summary["head"] == -1) & (summary["block"] == MATCHING_BLOCK)
                    entry[name]["matching_block"] = {m: float(summary[f"{m}_mean"][line][0]) for m in CONTEXT_COLUMNS}
                    if args.keep is not None and path == "sideways":
                        shutil.rmtree(args.keep, ignore_errors=True)
                        shutil.copytree(out, args.keep)
            report["paths"][path] = entry
            print(path, json.dumps(entry["matching"]["blocks"]["correspondence_gain"]), flush=True)
        report["null_trials"] = null_trials(root / "sideways", options, args.trials)
    report["seconds"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "known-answer.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "known-answer.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def _cells(report: dict[str, Any]) -> int:
    return next(iter(report["paths"].values()))["tiny"]["cells"]


def _verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


def markdown(report: dict[str, Any]) -> str:
    n = report["scenes_per_path"]
    lines = [
        "# Known-answer benchmark: rendered scenes with exact cameras and depth",
        "",
        f"{n} scenes per camera path, 3 views each, {report['image'][0]} x {report['image'][1]} pixels; global",
        f"attention, {report['grid']} x {report['grid']} query grid over frame 0, every block; reference = truth "
        "(the scenes' cameras.npz).",
        f"Produced by `{report.get('command', 'python -m benchmarks.known_answer')}` "
        f"({report['seconds']:.0f} s on {report['machine'].get('cpu', 'CPU')}, shared with other jobs).",
        "",
        "## The constructed matching block (testing.matching_vggt, block 2)",
        "",
        "Per-block curve (mean over heads and scenes) [95% interval over scenes].",
        "",
        "| path | gain | block ranking | block 2 | best other block's high | first | clear of others |",
        "|---|---|---|---|---|---|---|",
    ]
    for path, entry in report["paths"].items():
        for g, r in entry["matching"]["blocks"].items():
            m, lo, hi = r["matching"]
            lines.append(f"| {path} | {g} | {', '.join(map(str, r['ranking']))} | {m:.4g} [{lo:.4g}, {hi:.4g}] | "
                         f"{r['best_other_high']:.4g} | {_verdict(r['first'])} | {_verdict(r['clear'])} |")  # fmt: skip
    lines += [
        "",
        f"## Findings after correction (q <= 0.05), block x head cells out of {_cells(report)}",
        "",
        "A finding beats both the gain's uniform null and its gain against position (a head on the query's own",
        "(row, col)): the larger of the two one-sided t-test p-values over the scenes, then Benjamini-Hochberg.",
        "",
        "| path | model | " + " | ".join(GAIN_METRICS) + " |",
        "|---|---|" + "---|" * len(GAIN_METRICS),
    ]
    for path, entry in report["paths"].items():
        for name in MODELS:
            cells = entry[name]["significant_cells"]
            lines.append(f"| {path} | {name} | " + " | ".join(str(cells[g]) for g in GAIN_METRICS) + " |")
    lines += [
        "",
        f"The matching block {MATCHING_BLOCK}'s means (over heads and scenes) behind its findings: each gain",
        "against position, and the distances it compares (patches; Sampson distances in pixels).",
        "",
        "| path | " + " | ".join(CONTEXT_COLUMNS) + " |",
        "|---|" + "---|" * len(CONTEXT_COLUMNS),
    ]
    for path, entry in report["paths"].items():
        ctx = entry["matching"]["matching_block"]
        lines.append(f"| {path} | " + " | ".join(f"{ctx[m]:.3g}" for m in CONTEXT_COLUMNS) + " |")
    lines += [
        "",
        "Findings of the plain tiny model (none expected), with the correspondence score, its uniform null and",
        "its positional control (the same window around the query's own (row, col)).",
        "",
        "| path | gain | block | head | gain value | q | score | null | positional control |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path, entry in report["paths"].items():
        for g, found in entry["tiny"]["significant"].items():
            for c in found:
                lines.append(f"| {path} | {g} | {c['block']} | {c['head']} | {c['gain']:.4g} | {c['q']:.2g} | "
                             f"{c['correspondence_score']:.4g} | {c['correspondence_null']:.4g} | "
                             f"{c['correspondence_control']:.4g} |")  # fmt: skip
    nt = report["null_trials"]
    lines += [
        "",
        f"## Permutation-null trials ({nt['trials']} trials, sideways scenes, "
        f"{nt['tests_per_gain']} cell tests per gain)",
        "",
        "Each trial shuffles every captured row of the matching model over the patches of each view.",
        "",
        "Against the null alone: the one-sided t-test of the gain; finding: the intersection-union test with",
        "the gain against position (the larger p).",
        "",
        "| gain | test | false-positive rate (p <= 0.05; nominal 0.05) | trials with any cell q <= 0.05 |",
        "|---|---|---|---|",
    ]
    for g in GAIN_METRICS:
        for t, label in (("null", "against the null alone"), ("finding", "finding")):
            lines.append(f"| {g} | {label} | {nt['false_positive_rate'][t][g]:.4f} | "
                         f"{nt['any_significant_cell_rate'][t][g]:.3f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
