"""A dataset study from start to end: scenes -> per-scene tables -> the dataset table and recording.

``run_study`` finds the scenes, skips the done ones (resume; a damaged table is run again),
checks the folders of the others before the model loads (``check_scenes``: the ones that cannot
run are failures at once, in one warning line), runs the rest on an engine and saves each as it
arrives (with ``--ablate`` also its effect table, ``job.scene_effects``; a failure goes to
failures.jsonl and the others go on), shows progress
(scenes/s and an ETA), then aggregates every done scene: ``scenes.parquet``, ``summary.parquet``,
``summary.md`` and ``summary.rrd``, and with ``--ablate`` ``effects_summary.parquet`` (store.py
lists the files). Ctrl-C stops at once: the scenes
already saved stay, nothing half-written does, and a re-run goes on from there.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vggt_attn_rerun.api import BadInput
from vggt_attn_rerun.batch.aggregate import (
    aggregate,
    aggregate_effects,
    dataset_views,
    effects_markdown,
    summary_markdown,
)
from vggt_attn_rerun.batch.engines import ENGINES, RaySettings, run_local, run_ray
from vggt_attn_rerun.batch.inputs import Scene, discover_scenes
from vggt_attn_rerun.batch.job import SceneOutcome, StudyOptions, scene_photos
from vggt_attn_rerun.batch.progress import progress as progress_bar
from vggt_attn_rerun.batch.store import FAILURES_FILE, StudyFolder, write_bytes_atomic, write_table_atomic
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
    """scenes.parquet, summary.parquet, summary.md and summary.rrd (and with --ablate
    effects_summary.parquet and its section of summary.md) from every done scene; returns their count."""
    tables = folder.read_tables(scenes)
    if not tables:
        return 0
    folder.write_combined(tables)
    summary = aggregate(tables)
    write_table_atomic(folder.root / "summary.parquet", summary)
    text = summary_markdown(summary, len(tables), len(folder.failures()), folder.options.identity())
    if folder.options.ablate is not None:
        effects = aggregate_effects(folder.read_effects(scenes))
        write_table_atomic(folder.root / "effects_summary.parquet", effects)
        text += effects_markdown(effects)
    write_bytes_atomic(folder.root / "summary.md", text.encode())
    blocks, heads, matrices, curves = dataset_views(summary)
    write_bytes_atomic(folder.root / "summary.rrd", dataset_recording_bytes(blocks, heads, matrices, curves, text))
    return len(tables)


def check_scenes(scenes: Sequence[Scene], options: StudyOptions) -> tuple[list[Scene], list[SceneOutcome]]:
    """The scenes whose folders can give the study its photos, and a failed outcome for each of the
    others (missing, not a folder, a looping link, no photos, fewer than --frames or --frame
    needs). Reads folders only: a manifest of 100,000 wrong paths fails in seconds, not after the model."""
    usable, unusable = [], []
    for scene in scenes:
        try:
            scene_photos(scene, options)
        except UserError as e:
            unusable.append(SceneOutcome(scene, error=str(e)))
        else:
            usable.append(scene)
    return usable, unusable


def _examples(outcomes: Sequence[SceneOutcome]) -> str:
    o = outcomes[0]
    first = o.error or ""
    if not first.startswith(f"scene {o.scene.name}"):
        first = f"scene {o.scene.name}: {first}"
    return first if len(outcomes) == 1 else f"{first}; ..."


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
    with folder.locked():
        folder.open()
        damaged = folder.damaged(scenes)
        if damaged:
            scene, why = damaged[0]
            more = f" and {len(damaged) - 1} more" if len(damaged) > 1 else ""
            warnings.warn(f"the table of finished scene {scene.name}{more} could not be read back ({why}): "
                          "removed, the scene runs again", stacklevel=2)  # fmt: skip
        pending = folder.pending(scenes)
        report = StudyReport(folder.root, len(scenes), len(scenes) - len(pending), 0)
        if pending:
            folder.start_run()
            pending, unusable = check_scenes(pending, options)
            for outcome in unusable:
                folder.save(outcome)
            report.failed += [o.scene.name for o in unusable]
            if unusable and not pending and not report.skipped:
                raise BadInput(f"no scene can run: {_examples(unusable)} (every scene is a line of "
                               f"{folder.root / FAILURES_FILE})")  # fmt: skip
            if unusable:
                warnings.warn(f"{len(unusable)} of {len(scenes)} scenes cannot run ({_examples(unusable)}): each is a "
                              f"line of {folder.root / FAILURES_FILE}", stacklevel=2)  # fmt: skip
        if pending:
            _run_pending(folder, pending, options, engine, ray, model, progress, report)
        write_aggregate(folder, scenes)
    return report


def _run_pending(folder: StudyFolder, pending: list[Scene], options: StudyOptions, engine: str,
                 ray: RaySettings | None, model: Any, progress: bool, report: StudyReport) -> None:  # fmt: skip
    """Run the pending scenes on the engine, saving each as it comes back; updates ``report``."""
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
            # Before update: the line update prints (the last one above all) counts this scene.
            bar.set_postfix(failed=len(report.failed), refresh=False)
            bar.update(1)
    report.seconds = time.perf_counter() - start
