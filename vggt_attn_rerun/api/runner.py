"""One whole run as the command line does it: ``run(RunOptions(...), RunCallbacks(...))``.

Checks before the model, the model, ``record_attention`` streamed to the sinks (``viz.sinks``),
and the ``--save`` and ``--export`` files committed together (``io.atomic``). The CLI builds one
RunOptions and calls ``run`` once.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import rerun as rr
import torch
from torch import nn

from vggt_attn_rerun.api.record import query_grid, record_attention
from vggt_attn_rerun.core import loading, resources
from vggt_attn_rerun.core.adapters import ModelAdapter
from vggt_attn_rerun.core.capture import CaptureResult, capture
from vggt_attn_rerun.core.images import (
    LoadedImages,
    check_image_size,
    expand_image_paths,
    load_images,
)
from vggt_attn_rerun.core.introspect import (
    model_adapter,
    model_depth,
    model_heads,
    model_layout,
    model_num_cameras,
    model_num_registers,
    model_patch_size,
)
from vggt_attn_rerun.core.loading import DEFAULT_MODEL
from vggt_attn_rerun.core.resources import resolve_device, translate_oom
from vggt_attn_rerun.core.tokens import (
    VGGT_IMAGE_SIZE,
    VGGT_NUM_REGISTERS,
    VGGT_PATCH_SIZE,
    Query,
    TokenLayout,
    parse_index_list,
    parse_query,
)
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.io.atomic import PendingFile, commit, discard, produce_pending
from vggt_attn_rerun.io.pipe import StdoutFailed
from vggt_attn_rerun.io.runfile import RUN_SUFFIX, save_run
from vggt_attn_rerun.viz.options import RecordingOptions
from vggt_attn_rerun.viz.paths import APPLICATION_ID
from vggt_attn_rerun.viz.sinks import (
    INTERACTIVE_PORT,
    Outputs,
    SinkPlan,
    check_output_path,
    check_port_free,
    open_sinks,
    plan_sinks,
    serve_forever,
)

# ------------------------------------------------------------------------------------------------
# One whole run, as the command line asks for it: RunOptions in, files and viewers out
# ------------------------------------------------------------------------------------------------


# Any depth a real model could have: checks the syntax of a block list before the model loads.
_ANY_DEPTH = 1 << 20


class BadInput(UserError):
    """A UserError caused by what the user asked for (paths, options, queries; also a block or
    head the model turns out not to have): the command line's exit code 2."""


@dataclass(frozen=True)
class RunOptions:
    """Everything one run needs, typed; ``run`` checks it all (cheap checks before the model).

    Attributes:
        images: image files, folders or glob patterns (frame 0 first).
        queries: ``(query text, where it came from)`` pairs (tokens.QUERY_SYNTAX); ``where``
            prefixes error messages (``--query 0:1,2``, ``--queries-file q.txt line 3``).
        query_grid: ``(frame, rows, cols)``: a grid of patch queries over one frame, or None.
        blocks: block list text (``all``, ``0-23``, ``0,12,-1``: tokens.parse_index_list).
        recording: what to log (kinds, focus head and block, points, colors...).
        model, device, dtype: loading.SPEC_SYNTAX, resources.resolve_device's names.
        arch: the model's architecture (core.architectures: vggt, pi3, pi3x, streamvggt, vggt-omega)
            or "auto" (from a known Hub id or the model's type).
        mode, image_size: how photos become model input (images.load_images).
        outputs: where the recording goes (``viz.sinks.Outputs``: save, stdout, connect, serve,
            spawn, headless, overwrite).
        export: also write the run file (io.runfile), committed with ``outputs.save``: both or
            neither; ``outputs.overwrite`` lets it replace a file.
        ask: keep the q/k cache for ``RunCallbacks.ask``; force: run past the memory estimate.
        interactive: keep the q/k cache and the recording's bytes for ``RunCallbacks.serve_clicks``
            (click-to-query in a browser page on ``port``).
    """

    images: tuple[str | os.PathLike[str], ...]
    queries: tuple[tuple[str, str], ...] = ()
    query_grid: tuple[int, int, int] | None = None
    blocks: str = "all"
    recording: RecordingOptions = field(default_factory=RecordingOptions)
    model: str = DEFAULT_MODEL
    arch: str = "auto"
    device: str = "auto"
    dtype: str = "auto"
    mode: str = "crop"
    image_size: int = VGGT_IMAGE_SIZE
    outputs: Outputs = field(default_factory=Outputs)
    export: str | os.PathLike[str] | None = None
    ask: bool = False
    force: bool = False
    interactive: bool = False
    port: int = INTERACTIVE_PORT


class ProgressBar(Protocol):
    def update(self, n: int = 1) -> object: ...

    def close(self) -> object: ...


class _Silent:
    def update(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


@dataclass
class RunCallbacks:
    """How a run talks to its user; the defaults are silent.

    Attributes:
        echo: one line of text (warnings, the final summary).
        progress: ``progress(description, total)`` opens a bar (``total`` None: a status line).
        ask: after the run is logged, add more queries: ``ask(recording, result, images, options)``
            returns how many it added (the command line's --ask prompt).
        serve_clicks: after the run is logged, serve it for clicks (``--interactive``):
            ``serve_clicks(recording, result, images, options, relay, port)``, where ``relay`` is the
            ``rr.BinaryStream`` holding the recording's bytes, returns the run with every added
            query (``QuerySession.merged_result``): what ``--export`` then writes.
    """

    echo: Callable[[str], object] = lambda line: None
    progress: Callable[[str, int | None], ProgressBar] = lambda desc, total: _Silent()
    ask: Callable[[rr.RecordingStream, CaptureResult, LoadedImages, RecordingOptions], int] | None = None
    serve_clicks: Callable[..., CaptureResult] | None = None


@dataclass
class RunSummary:
    """What a run did: the capture, and one line that says it (``describe``)."""

    result: CaptureResult
    queries: int
    outputs: str


def plural(n: int, word: str, words: str | None = None) -> str:
    """``plural(1, "view")`` -> ``1 view``, ``plural(3, "query", "queries")`` -> ``3 queries``."""
    return f"{n} {word if n == 1 else words or word + 's'}"


@contextmanager
def as_bad_input() -> Iterator[None]:
    """Turn a UserError raised inside into BadInput (exit code 2): it was caused by what was asked
    (not a standard output that fails: io.pipe.StdoutFailed stays an error while running)."""
    try:
        yield
    except (BadInput, StdoutFailed):
        raise
    except UserError as e:
        raise BadInput(str(e)) from e


@dataclass
class Prepared:
    """What ``run`` checked and loaded before the model."""

    images: LoadedImages
    queries: list[Query]
    device: str
    autocast: torch.dtype | None
    sinks: SinkPlan
    export: Path | None


def run(options: RunOptions, callbacks: RunCallbacks | None = None) -> RunSummary:
    """Do one whole run: check, load the images and the model, capture, log, write the files.

    In order: every check that needs no model (images, queries, options, output paths, viewer),
    the model, the checks against it (blocks, heads), the memory estimate, ONE forward pass
    with the recording streamed to its sinks, then the files (--save, --export) moved in place
    together: both or neither (``io.atomic.commit``). Errors: ``BadInput`` for what the user
    asked, UserError for the rest (out of memory, a viewer that went away, a full disk).
    """
    callbacks = callbacks if callbacks is not None else RunCallbacks()
    with as_bad_input():
        prep = _prepare(options, callbacks)
    model = load_model_for_run(options.model, prep.device, callbacks, options.arch)
    adapter = model_adapter(model)  # resolved once; every step below reads the model through it
    with as_bad_input():
        blocks, queries, recording = check_against_model(model, prep, options, callbacks, adapter)
    h, w = prep.images.layout_hw
    line = resources.check_forward_memory(
        model, model_layout(model, prep.images.tensor.shape[0], h, w, adapter), autocast=prep.autocast,
        queries=len(queries), blocks=len(blocks), kinds=recording.kinds, device=prep.device,
        keep_qk=options.ask or options.interactive, force=options.force, arch=adapter,
    )  # fmt: skip
    if line:
        callbacks.echo(line)
    with translate_oom(prep.device):
        result, added = _capture_and_log(model, prep, options, blocks, queries, recording, callbacks, adapter)
    count = len(queries) + added
    outputs = ", ".join(p for p in (prep.sinks.describe(), f"exported {prep.export}" if prep.export else "") if p)
    views, kinds = prep.images.tensor.shape[0], "+".join(recording.kinds)
    callbacks.echo(f"{plural(views, 'view')}, {plural(count, 'query', 'queries')}, {plural(len(blocks), 'block')} of "
               f"{kinds} attention: {outputs}")  # fmt: skip
    return RunSummary(result, count, outputs)


def _prepare(options: RunOptions, callbacks: RunCallbacks) -> Prepared:
    """Every check that needs no model: inputs first, then where the output goes."""
    loading.check_model_spec(options.model)
    paths = expand_image_paths(list(options.images))
    check_image_size(options.image_size, VGGT_PATCH_SIZE)
    try:
        parse_index_list(options.blocks, _ANY_DEPTH)  # syntax only; the range once the model is known
    except UserError as e:
        syntax = "use e.g. 0-23, 0,12,23, -1 (the last) or all"
        raise UserError(f"cannot parse --blocks {options.blocks!r}: {syntax}") from e
    device, autocast = resolve_device(options.device, options.dtype)
    if options.query_grid is not None:
        frame = options.query_grid[0]
        if not 0 <= frame < len(paths):
            raise UserError(f"--frame {frame}: valid frames are 0..{len(paths) - 1}")
    grid_view = options.recording.grid_view
    if grid_view is not None and grid_view >= len(paths):
        raise UserError(f"--grid-view {grid_view}: valid frames are 0..{len(paths) - 1}")
    images = load_photos(paths, options, VGGT_PATCH_SIZE, callbacks)
    # Provisional VGGT layout: catches bad and out-of-range queries now; resolved again for the model.
    queries = resolve_queries(options, images, VGGT_PATCH_SIZE, VGGT_NUM_REGISTERS, None)
    export = check_output_path(options.export, "--export", RUN_SUFFIX, "the run file format",
                               options.outputs.overwrite) if options.export else None  # fmt: skip
    sinks = plan_sinks(options.outputs, allow_none=export is not None, relay=options.interactive)
    if options.interactive:
        if options.ask:
            raise UserError("--ask and --interactive both add queries after the run: give one")
        check_port_free(options.port, "page", "--interactive")
    if options.ask and sinks.empty:
        raise UserError("--ask with --export alone has nowhere to show new queries: add --save, --connect or --serve")
    return Prepared(images, queries, device, autocast, sinks, export)


def load_photos(paths: Sequence[Path], options: RunOptions, patch: int, callbacks: RunCallbacks) -> LoadedImages:
    """The photos as model input (``options.mode``, ``options.image_size``); warns about tiny photos."""
    loaded = load_images(paths, mode=options.mode, target_size=options.image_size, patch_size=patch)
    for path, t in zip(paths, loaded.transforms, strict=True):
        if min(t.orig_w, t.orig_h) < patch:  # handled, not refused: vggt's preprocessing upscales too
            callbacks.echo(
                f"warning: image {path} is only {t.orig_w}x{t.orig_h} pixels: upscaled to "
                f"{round(t.orig_w * t.scale_x)}x{round(t.orig_h * t.scale_y)}"
            )
    return loaded


def resolve_queries(options: RunOptions, images: LoadedImages, patch: int, registers: int,
                     callbacks: RunCallbacks | None, cameras: int = 1) -> list[Query]:  # fmt: skip
    """The queries in order: the texts, then the grid (default: the centre pixel of frame 0).
    A token named twice is used once; ``callbacks`` gets one warning line for all repeats."""
    h, w = images.layout_hw
    layout = TokenLayout.for_image_size(len(images.transforms), h, w, patch, registers, cameras)
    texts = list(options.queries)
    if not texts and options.query_grid is None:
        cw, ch = images.transforms[0].original_size
        texts = [(f"0:{cw / 2:g},{ch / 2:g}", "the default query")]
    found: list[tuple[Query, str]] = []
    for text, where in texts:
        try:
            found.append((parse_query(text, layout, images.transforms), text))
        except UserError as e:
            raise UserError(f"{where}: {e}") from e
    if options.query_grid is not None:
        frame, rows, cols = options.query_grid
        try:
            cells = query_grid(layout, frame, rows, cols)
        except UserError as e:
            raise UserError(f"--query-grid {rows}x{cols}: {e}") from e
        found += [(q, "{}:p{},{}".format(q.frame, *q.patch(layout))) for q in cells]
    out: list[Query] = []
    seen: dict[tuple[int, int], str] = {}
    repeats: list[tuple[str, str]] = []
    for q, text in found:
        key = (q.frame, q.local)
        if key in seen:
            repeats.append((text, seen[key]))
            continue
        seen[key] = text
        out.append(q)
    if repeats and callbacks is not None:  # one line however many: a file of 10,000 equal queries is one mistake
        text, first = repeats[0]
        same = f"query {text!r} is the same token as {first!r}"
        if len(repeats) == 1:
            callbacks.echo(f"warning: {same}: using it once")
        else:
            callbacks.echo(
                f"warning: {len(repeats)} queries name a token already queried ({same}, ...): each is used once"
            )
    return out


def load_model_for_run(spec: str, device: str, callbacks: RunCallbacks, arch: str = "auto") -> nn.Module:
    """``loading.load_model`` behind a progress line; its warnings become one line each."""
    bar = callbacks.progress(f"loading model {spec}", None)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = loading.load_model(spec, device=device, arch=arch)
    finally:
        bar.close()
    for w in caught:
        callbacks.echo(f"warning: {' '.join(str(w.message).split())}")
    return model


def check_against_model(
    model: nn.Module, prep: Prepared, options: RunOptions, callbacks: RunCallbacks, adapter: ModelAdapter | None = None
) -> tuple[tuple[int, ...], list[Query], RecordingOptions]:
    """Blocks, heads and queries against the loaded model (a custom model may differ from VGGT).
    ``adapter``: the model's, if already resolved."""
    patch = model_patch_size(model, adapter)
    if patch != VGGT_PATCH_SIZE:  # a custom model with another patch size needs its own resize
        prep.images = load_photos(prep.images.paths or [], options, patch, RunCallbacks())
    registers, cameras = model_num_registers(model, adapter), model_num_cameras(model, adapter)
    queries = resolve_queries(options, prep.images, patch, registers, callbacks, cameras)
    depth, heads = model_depth(model, adapter), model_heads(model, adapter)
    try:
        blocks = parse_index_list(options.blocks, depth)
    except UserError as e:
        raise UserError(f"--blocks {options.blocks}: {e}") from e
    rec = options.recording
    if rec.focus_head is not None and not 0 <= rec.focus_head < heads:
        valid = f"the model has {heads} heads, valid are 0..{heads - 1}"
        raise UserError(f"--focus-head {rec.focus_head} does not exist: {valid}")
    if rec.focus_block is not None:
        if not 0 <= rec.focus_block < depth:
            raise UserError(f"--focus-block {rec.focus_block} does not exist: valid blocks are 0..{depth - 1}")
        if rec.focus_block not in blocks:
            shown = ",".join(map(str, blocks))
            raise UserError(
                f"--focus-block {rec.focus_block} was not captured: captured blocks are {shown} (see --blocks)"
            )
    return blocks, queries, rec


def _capture_and_log(model: nn.Module, prep: Prepared, options: RunOptions, blocks: Sequence[int],
                     queries: list[Query], recording: RecordingOptions, callbacks: RunCallbacks,
                     adapter: ModelAdapter) -> tuple[CaptureResult, int]:  # fmt: skip
    """ONE forward pass, logged to the sinks; then the files, committed together. Returns the
    capture and the number of queries ``callbacks.ask`` added."""
    progress = BlockProgress(callbacks, len(blocks) * len(recording.kinds))
    pending: list[PendingFile] = []
    added = 0
    try:
        if prep.sinks.empty:  # --export alone: capture, no recording
            result = capture(model, prep.images, queries, blocks=blocks, kinds=recording.kinds,
                                 autocast_dtype=prep.autocast, on_block=progress, arch=adapter)  # fmt: skip
        else:
            rec = rr.RecordingStream(APPLICATION_ID, recording_id=uuid.uuid4())
            # No default blueprint on the sinks: record_attention sends its layout into the stream as
            # the active one, which lands in the file too and replaces a running viewer's stale layout.
            with open_sinks(rec, prep.sinks) as sinks:
                result, _ = record_attention(
                    model, prep.images, queries, blocks=blocks, options=recording, recording=rec,
                    autocast_dtype=prep.autocast, keep_qk=options.ask or options.interactive, on_block=progress,
                    arch=adapter,
                )  # fmt: skip
                progress.close()
                if options.ask and callbacks.ask is not None:
                    added = callbacks.ask(rec, result, prep.images, recording)
                if options.interactive and callbacks.serve_clicks is not None:
                    before = len(result.rows.queries)
                    result = callbacks.serve_clicks(
                        rec, result, prep.images, recording, sinks.page_stream, options.port
                    )
                    added = len(result.rows.queries) - before  # --export below holds them too
                pending += sinks.finish()
        progress.close()
        if prep.export is not None:
            bar = callbacks.progress(f"exporting {prep.export}", None)
            try:
                pending += _pending_export(prep.export, result, prep.images, options.outputs.overwrite)
            finally:
                bar.close()
        commit(pending)  # both files or neither
    except BaseException:
        progress.close()
        discard(pending)
        raise
    if prep.sinks.outputs.serve:
        serve_forever(sinks, echo=callbacks.echo)
    return result, added


def _pending_export(path: Path, result: CaptureResult, images: LoadedImages, overwrite: bool) -> list[PendingFile]:
    """The run file under a temporary name beside ``path`` (``save_run`` writes it whole)."""

    def produce(temp: Path) -> None:
        try:
            save_run(temp, result, images)
        except UserError as e:  # name the file the user asked for, not the temporary one
            raise UserError(str(e).replace(str(temp), str(path))) from e

    return [produce_pending(path, produce, overwrite=overwrite, action=f"export the run to {path}")]


class BlockProgress:
    """A bar that advances as each captured attention module runs (capture's ``on_block``),
    then a status line while the run is logged."""

    def __init__(self, callbacks: RunCallbacks, total: int) -> None:
        self.callbacks, self.total, self.done = callbacks, total, 0
        self.bar: ProgressBar | None = callbacks.progress("forward pass", total)

    def __call__(self, kind: str, block: int) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        if self.done == self.total and self.bar is not None:
            self.bar.close()
            self.bar = self.callbacks.progress("logging to Rerun", None)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
