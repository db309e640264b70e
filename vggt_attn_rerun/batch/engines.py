"""Where the scenes run: ``local`` (this process, one model) or ``ray`` (Ray Data, one model per worker).

Both yield one ``SceneOutcome`` per scene, in any order, and the caller writes them: workers never
touch the output folder, so only the table rows (and .rrd bytes) travel back to the driver.

Ray: ``ray.data.from_items`` holds one item per scene (name and folder path; the folder must be
readable at the same path on every node, e.g. a shared file system), and ``map_batches`` runs
``_RayWorker``, a callable class, so each Ray actor loads the model ONCE in its constructor and then
runs one scene per batch; ``compute=ActorPoolStrategy(size=workers)`` fixes the number of actors
(what ``concurrency=workers`` did before Ray 2.51) and ``num_gpus`` gives each its GPUs. The
results come back as Arrow IPC bytes in a binary column. Before the scenes, one Ray task with a
worker's resources loads the model and checks the options against it (``job.check_against_model``):
a bad ``--blocks`` or ``--query-grid`` is one line, as with the local engine, not a failed worker.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from vggt_attn_rerun.api import BadInput
from vggt_attn_rerun.batch.inputs import Scene
from vggt_attn_rerun.batch.job import SceneOutcome, SceneRunner, StudyOptions
from vggt_attn_rerun.errors import UserError

ENGINES = ("local", "ray")
RAY_HINT = 'the ray engine needs Ray Data: pip install "vggt-attn-rerun[ray]"'


def run_local(scenes: Sequence[Scene], options: StudyOptions, model: Any = None) -> Iterator[SceneOutcome]:
    """In this process, in scene order; the model is loaded once (or ``model`` is used)."""
    runner = SceneRunner(options, model)
    for scene in scenes:
        yield runner(scene)


@dataclass(frozen=True)
class RaySettings:
    """``address``: a running cluster (``ray start --head`` prints it), None: start Ray here.
    ``gpus_per_worker`` None: 1 when the cluster has GPUs, else 0; ``workers`` None: as many as
    the GPUs allow (GPUs // gpus_per_worker), 1 without GPUs."""

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None


def table_to_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def table_from_bytes(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.BufferReader(data)).read_all()


class _RayWorker:
    """One Ray actor: the model is loaded once here, then ``__call__`` runs one batch of scenes."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.runner = SceneRunner(StudyOptions.from_json(options))

    def __call__(self, batch: pa.Table) -> pa.Table:
        keys = ("name", "path", "table", "effects", "rrd", "error", "details", "seconds")
        out: dict[str, list[Any]] = {k: [] for k in keys}
        for name, path in zip(batch["name"].to_pylist(), batch["path"].to_pylist(), strict=True):
            o = self.runner(Scene(name, Path(path)))
            out["name"].append(name)
            out["path"].append(path)
            out["table"].append(table_to_bytes(o.table) if o.table is not None else None)
            out["effects"].append(table_to_bytes(o.effects) if o.effects is not None else None)
            out["rrd"].append(_take_bytes(o.rrd))
            out["error"].append(o.error)
            out["details"].append(o.details)
            out["seconds"].append(o.seconds)
        types = {"table": pa.binary(), "effects": pa.binary(), "rrd": pa.binary(), "error": pa.string()}
        return pa.table({k: pa.array(v, type=types.get(k)) for k, v in out.items()})


def _take_bytes(rrd: Path | bytes | None) -> bytes | None:
    """A scene's recording as bytes to send back (the worker's file removed)."""
    if not isinstance(rrd, Path):
        return rrd
    data = rrd.read_bytes()
    rrd.unlink()
    return data


def _check_on_a_worker(options: dict[str, Any]) -> str | None:
    """What a worker's constructor does (load the model, check the options against it): the
    BadInput's line, or None when the options fit the model."""
    try:
        SceneRunner(StudyOptions.from_json(options))
    except BadInput as e:
        return str(e)
    return None


def _worker_failed(e: Exception) -> UserError:
    """One line for a Ray worker that died: its model did not load, it was killed, ..."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    cause = lines[-1][:300] if lines else type(e).__name__  # Ray puts the worker's own error last
    return UserError(f"a Ray worker failed ({cause}); the scenes done so far are saved: run the same command again "
                     "to go on")  # fmt: skip


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise UserError(f"{RAY_HINT} ({e})") from None
    return ray


def _plan_workers(ray: Any, settings: RaySettings) -> tuple[int, float]:
    """(workers, GPUs per worker) from the settings and the cluster's resources."""
    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
    per = settings.gpus_per_worker
    per = (1.0 if gpus > 0 else 0.0) if per is None else float(per)
    if per > gpus:
        raise UserError(
            f"--gpus-per-worker {per:g}: the Ray cluster has {gpus:g} GPUs; use --gpus-per-worker 0 for CPU workers"
        )
    workers = settings.workers if settings.workers is not None else (max(1, int(gpus // per)) if per > 0 else 1)
    if workers < 1:
        raise UserError(f"--workers {workers}: must be >= 1")
    return workers, per


def run_ray(scenes: Sequence[Scene], options: StudyOptions, settings: RaySettings) -> Iterator[SceneOutcome]:
    """On Ray Data (module docstring). Starts Ray here unless ``settings.address`` names a cluster."""
    ray = _import_ray()
    if not scenes:
        return
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=settings.address, include_dashboard=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"the Ray cluster at {settings.address}" if settings.address else "a local Ray instance"
            raise UserError(f"cannot start or reach {where} ({' '.join(str(e).split())[:300]})") from None
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the study has its own progress bar
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        workers, per = _plan_workers(ray, settings)
        check = ray.remote(_check_on_a_worker).options(num_gpus=per or None, num_cpus=1)
        try:
            problem = ray.get(check.remote(options.to_json()))
        except ray.exceptions.RayError as e:
            raise _worker_failed(e) from e
        if problem is not None:
            raise BadInput(problem)
        items = [{"name": s.name, "path": str(s.path)} for s in scenes]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            _RayWorker,
            fn_constructor_kwargs={"options": options.to_json()},
            batch_size=1,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers),  # a fixed pool of `workers` actors
            num_gpus=per or None,
            num_cpus=1,
        )
        by_name = {s.name: s for s in scenes}
        rows = iter(ds.iter_rows())
        while True:
            try:
                row = next(rows)
            except StopIteration:
                break
            except ray.exceptions.RayError as e:
                raise _worker_failed(e) from e
            table = table_from_bytes(row["table"]) if row["table"] is not None else None
            effects = table_from_bytes(row["effects"]) if row["effects"] is not None else None
            yield SceneOutcome(by_name[row["name"]], table, row["rrd"], effects, row["error"], row["details"] or "",
                               float(row["seconds"]))  # fmt: skip
    finally:
        if started:
            ray.shutdown()
