"""A dataset study from start to end: scenes -> per-scene tables -> the dataset table and recording.

``run_study`` finds the scenes, skips the done ones (resume), runs the others on an engine and
saves each as it arrives (a failure goes to failures.jsonl and the others go on), shows progress
(scenes/s and an ETA), then aggregates every done scene: ``scenes.parquet``, ``summary.parquet``,
``summary.md`` and ``summary.rrd`` (store.py lists the files). Ctrl-C stops at once: the scenes
already saved stay, nothing half-written does, and a re-run goes on from there.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vggt_attn_rerun.batch.aggregate import aggregate, dataset_views, summary_markdown
from vggt_attn_rerun.batch.engines import ENGINES, RaySettings, run_local, run_ray
from vggt_attn_rerun.batch.inputs import Scene, discover_scenes
from vggt_attn_rerun.batch.job import StudyOptions, refuse_scene
from vggt_attn_rerun.batch.progress import progress as progress_bar
from vggt_attn_rerun.batch.store import StudyFolder, write_bytes_atomic, write_table_atomic
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.viz.log_dataset import dataset_recording_bytes


@dataclass
class StudyReport:
    """What a run did. ``seconds``: running the pending scenes (model loading and Ray start included)."""

    out: Path
    scenes: int
    skipped: int
    done: int
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    first_seconds: float = 0.0  # until the first scene came back (model loading, Ray workers starting)
    table_seconds: float = 0.0  # writing the per-scene files

    @property
    def scenes_per_second(self) -> float:
        ran = self.done + len(self.failed)
        return ran / self.seconds if self.seconds > 0 else float("nan")


def write_aggregate(folder: StudyFolder, scenes: list[Scene]) -> int:
    """scenes.parquet, summary.parquet, summary.md and summary.rrd from every done scene; returns their count."""
    tables = folder.read_tables(scenes)
    if not tables:
        return 0
    folder.write_combined(tables)
    summary = aggregate(tables)
    write_table_atomic(folder.root / "summary.parquet", summary)
    text = summary_markdown(summary, len(tables), len(folder.failures()), folder.options.identity())
    write_bytes_atomic(folder.root / "summary.md", text.encode())
    blocks, heads, matrices, curves = dataset_views(summary)
    write_bytes_atomic(folder.root / "summary.rrd", dataset_recording_bytes(blocks, heads, matrices, curves, text))
    return len(tables)


def prepare(source: str | Path, out: str | Path, options: StudyOptions) -> tuple[list[Scene], StudyFolder]:
    """The scenes and the output folder, checked and nothing written (UserError on bad input)."""
    scenes = discover_scenes(source)
    folder = StudyFolder(out, options)
    src = Path(source).expanduser().resolve()
    if src.is_dir() and folder.root.resolve().parent == src:
        raise UserError(f"--out {out} is inside SCENES {source}: it would become a scene; put it elsewhere")
    folder.check()
    return scenes, folder


def run_study(
    source: str | Path,
    out: str | Path,
    options: StudyOptions,
    *,
    engine: str = "local",
    ray: RaySettings | None = None,
    model: Any = None,
    progress: bool = True,
) -> StudyReport:
    """Run a study (module docstring) and return what this run did.

    Args:
        source: a folder of scene folders or a manifest (batch.inputs).
        out: the output folder (batch.store); an existing study there is resumed.
        options: the same for every scene; must equal the options of a study being resumed.
        engine: "local" or "ray"; ray: its settings (RaySettings()).
        model: an already loaded model for the local engine (default: load ``options.model``).
        progress: show progress on stderr (batch.progress: a bar on a terminal, else log lines).
    """
    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r}: valid are {', '.join(ENGINES)}")
    scenes, folder = prepare(source, out, options)
    folder.open()
    pending = folder.pending(scenes)
    report = StudyReport(folder.root, len(scenes), len(scenes) - len(pending), 0)
    if pending:
        folder.start_run()
        # Scenes that cannot be scored (fewer than 2 views) are refused before any model loads.
        refused = [(scene, refuse_scene(scene, options)) for scene in pending]
        for scene, outcome in refused:
            if outcome is not None:
                folder.save(outcome)
                report.failed.append(scene.name)
                print(f"warning: scene {scene.name} refused: {outcome.error}", file=sys.stderr)
        pending = [scene for scene, outcome in refused if outcome is None]
    if pending:
        if engine == "local":
            outcomes = run_local(pending, options, model)
        else:
            outcomes = run_ray(pending, options, ray or RaySettings())
        start = time.perf_counter()
        with contextlib.closing(outcomes), progress_bar(len(pending), progress) as bar:
            for outcome in outcomes:
                t0 = time.perf_counter()
                if not report.first_seconds:
                    report.first_seconds = t0 - start
                folder.save(outcome)
                report.table_seconds += time.perf_counter() - t0
                if outcome.error is None:
                    report.done += 1
                else:
                    report.failed.append(outcome.scene.name)
                    bar.write(f"warning: scene {outcome.scene.name} failed: {outcome.error}", file=sys.stderr)
                bar.update(1)
                bar.set_postfix(failed=len(report.failed), refresh=False)
        report.seconds = time.perf_counter() - start
    write_aggregate(folder, scenes)
    return report
