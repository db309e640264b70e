"""Helpers the test modules share: running the CLI, reading recordings and blueprints back, small study inputs."""

from __future__ import annotations

import contextlib
import gc
import io
import runpy
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import rerun as rr
import rerun.blueprint as rrb
from click.testing import CliRunner, Result
from PIL import Image

from vggt_attn_rerun.batch.job import StudyOptions
from vggt_attn_rerun.testing import synthetic_scene

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_script(path: Path, *args: Any) -> int:
    """Run a repository script as ``python PATH ARGS...`` does, in this process; its exit code."""
    argv = [str(path), *map(str, args)]
    with mock.patch.object(sys, "argv", argv), contextlib.redirect_stdout(io.StringIO()):
        try:
            runpy.run_path(str(path), run_name="__main__")
        except SystemExit as e:
            return 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    return 0


@contextlib.contextmanager
def frozen_gc() -> Iterator[None]:
    """Collections inside see only the objects made inside: a full collection of a test process
    holding torch, rerun and earlier tests' objects takes seconds on a busy machine, and the
    benchmarks collect before every measurement."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


# The CLI on the tiny model with 84x56 input (a 6x4 patch grid): seconds per run.
FAST = ["--model", "tiny", "--image-size", "84"]
HUGE = "9" * 5000  # int() refuses more than 4300 digits with a ValueError


def invoke(*args: Any, **kwargs: Any) -> Result:
    """The CLI in this process; arguments may be paths."""
    from vggt_attn_rerun.cli import main as cli

    return CliRunner().invoke(cli.cli, [str(a) for a in args], **kwargs)


def assert_error(result: Result, code: int, message: str | None = None, *, prefix: str | None = None) -> str:
    """Exactly one line on stderr, `error: ...`, the exit code, and no traceback anywhere."""
    assert "Traceback" not in result.output, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert result.exit_code == code, result.output
    if message is not None:
        assert lines[0] == f"error: {message}"
    if prefix is not None:
        assert lines[0].startswith(f"error: {prefix}"), lines[0]
    return lines[0]


def assert_nothing_saved(out: Path) -> None:
    """Neither the final file nor a partial one exists (the folder may hold only what was there)."""
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    assert leftovers == []


def save_args(out: Path) -> list:
    """``--headless --save out`` (its folder created)."""
    out.parent.mkdir(exist_ok=True)
    return ["--headless", "--save", out]


# A dataset study small enough for a unit test: the tiny model, 2x2 queries, 84-pixel-wide input.
STUDY_OPTIONS = StudyOptions(model="tiny", grid=(2, 2), image_size=84, device="cpu")


class Recording:
    """Every chunk of an .rrd, by entity path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reader = rr.chunk.RrdReader(path)
        self.chunks: dict[str, list] = {}
        for ch in self.reader.stream():
            self.chunks.setdefault(ch.entity_path.lstrip("/"), []).append((ch.is_static, ch.to_record_batch()))

    def entities(self) -> set[str]:
        return set(self.chunks)

    def static(self, entity: str, component: str):
        """The last static value (a batch, as a Python list) of a component."""
        values = [
            v
            for is_static, rb in self.chunks.get(entity, [])
            if is_static and component in rb.schema.names
            for v in rb.column(component).to_pylist()
            if v is not None
        ]
        assert values, f"no static {component} at {entity}"
        return values[-1]

    def temporal(self, entity: str, component: str, timeline: str) -> dict[int, list]:
        """time -> value of a component on one timeline."""
        out = {}
        for is_static, rb in self.chunks.get(entity, []):
            if is_static or component not in rb.schema.names or timeline not in rb.schema.names:
                continue
            for t, v in zip(rb.column(timeline).to_pylist(), rb.column(component).to_pylist(), strict=True):
                if t is not None and v is not None:
                    out[t] = v
        return out


def has_footer(path: Path) -> bool:
    """Whether an .rrd ends with Rerun's footer (the index of its chunks): only then can it be
    opened lazily (``RrdReader.store``), and ``rerun rrd verify`` passes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Rerun warns that a file without a footer is read whole
        reader = rr.chunk.RrdReader(path)
    try:
        reader.store()
    except RuntimeError:
        return False
    return True


def segmentation_grid(value: Any, layout: Any) -> np.ndarray:
    """A logged SegmentationImage's value as its ``[grid_h, grid_w]`` uint8 patch grid."""
    return np.asarray(value[0], np.uint8).reshape(layout.grid_h, layout.grid_w)


def entities(path: Path) -> set[str]:
    """The entity paths of an .rrd (with their leading ``/``)."""
    return {str(ch.entity_path) for ch in rr.chunk.RrdReader(path).stream()}


def info_text(path: Path, query: int) -> str:
    """The text of query ``query``'s info document in an .rrd."""
    for ch in rr.chunk.RrdReader(path).stream().filter(content=f"/queries/q{query}/info"):
        rb = ch.to_record_batch()
        return rb.column(rb.schema.get_field_index("TextDocument:text")).to_pylist()[0][0]
    raise AssertionError(f"no info for query {query}")


def blueprint_values(path: str | Path, entity: str, component: str) -> list[Any]:
    """Every value of one component of one blueprint entity in an .rbl/.rrd (``"/time_panel"``,
    ``"TimePanelBlueprint:timeline"``), in the order they were sent."""
    reader = rr.chunk.RrdReader(path)
    return [
        value
        for store in reader.blueprints()
        for chunk in reader.stream(store=store)
        if chunk.entity_path == entity
        for batch in [chunk.to_record_batch()]
        if component in batch.schema.names
        for value in batch.column(component).to_pylist()
        if value is not None
    ]


def blueprint_strings(path: str | Path) -> set[str]:
    """Every string a blueprint in an .rbl/.rrd holds: view names, origins, entity filters, ..."""
    reader = rr.chunk.RrdReader(path)
    found: set[str] = set()
    for store in reader.blueprints():
        for chunk in reader.stream(store=store):
            for row in chunk.to_record_batch().to_pylist():
                found.update(_strings(row))
    return found


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def views(node) -> list:
    """Every view of a blueprint or container, depth first."""
    if isinstance(node, rrb.Blueprint):
        return views(node.root_container)
    if isinstance(node, rrb.Container):
        return [v for child in node.contents for v in views(child)]
    return [node]


def make_scenes(root: Path, names, frames=2) -> Path:
    """One folder of ``frames`` synthetic 84x56 photos per name under ``root``."""
    for i, name in enumerate(names):
        folder = root / name
        folder.mkdir(parents=True)
        for k, img in enumerate(synthetic_scene(frames, 56, 84, seed=i)):
            Image.fromarray(img).save(folder / f"{k:02d}.png")
    return root
