"""Side by side: two or more models on the same photos and queries, in ONE recording.

Each model is captured on its own (one forward pass each; on the command line the model is
dropped before the next one loads) and logged by ``viz.log_run`` under its own entity root
``models/{name}/...`` (``viz.paths.rooted``): ``models/{name}/world/...``,
``models/{name}/queries/...``, ``models/{name}/heads/...``. Inside a root every path is the
single-model recording's (viz/paths.py), so whatever reads one model's recording reads a root.

Depth: models of different depth (VGGT 24 global blocks, pi3 18) do not line up on the
``block`` timeline, so every row that is on ``block`` is also put on ``depth_percent``
(``paths.DEPTH_TIMELINE``): block b of a model with L blocks at ``round(100 * b / (L - 1))``,
0 = every model's first block, 100 = its last. Scrubbing that timeline shows, for each model, its
latest block at or before that fraction of its depth. The ``block`` timeline keeps each model's
own block numbers; the layout makes ``depth_percent`` active when the depths differ.

``record_comparison``: the Python API (models in memory). ``compare(CompareOptions)``: one
whole comparison as the command line does it (``vggt-attn-rerun compare``), with ``runner.run``'s
checks, sinks and all-or-nothing files.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import rerun as rr
import rerun.blueprint as rrb
import torch
from torch import nn

from vggt_attn_rerun.analysis.maps import analyze_run
from vggt_attn_rerun.api.runner import (
    BlockProgress,
    Prepared,
    RunCallbacks,
    RunOptions,
    as_bad_input,
    check_against_model,
    load_model_for_run,
    load_photos,
    plural,
    resolve_queries,
)
from vggt_attn_rerun.core import resources
from vggt_attn_rerun.core.capture import CaptureResult, QueriesLike, capture
from vggt_attn_rerun.core.images import ImagesLike, LoadedImages, as_loaded_images, check_image_size, expand_image_paths
from vggt_attn_rerun.core.introspect import model_adapter, model_depth, model_layout
from vggt_attn_rerun.core.loading import check_model_spec
from vggt_attn_rerun.core.resources import resolve_device, translate_oom
from vggt_attn_rerun.core.tokens import VGGT_IMAGE_SIZE, VGGT_NUM_REGISTERS, VGGT_PATCH_SIZE
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.io.atomic import PendingFile, commit, discard
from vggt_attn_rerun.viz.blueprint import frames_without_camera
from vggt_attn_rerun.viz.compare_blueprint import ComparedModel, compare_blueprint
from vggt_attn_rerun.viz.log_run import log_run
from vggt_attn_rerun.viz.options import RecordingOptions
from vggt_attn_rerun.viz.paths import APPLICATION_ID, rooted
from vggt_attn_rerun.viz.sinks import Outputs, open_sinks, plan_sinks, serve_forever

#: the parent of every model's entity root: ``models/{name}``
MODELS_ROOT = "models"
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")  # no leading dot: "models/.." is no root


@dataclass
class Compared:
    """One compared model's capture: ``name`` (its root is ``models/{name}``), the capture, the
    images it saw (its own patch size), and its depth (blocks of the captured kind)."""

    name: str
    result: CaptureResult
    images: LoadedImages
    depth: int

    @property
    def root(self) -> str:
        return model_root(self.name)


def model_root(name: str) -> str:
    """``models/{name}``: the entity root of a compared model."""
    return f"{MODELS_ROOT}/{name}"


def model_names(specs: Sequence[str], archs: Sequence[str] = ()) -> list[str]:
    """One entity-safe, unique name per model spec: its last path part (``facebook/VGGT-1B`` ->
    ``VGGT-1B``), the architecture when it names one (``tiny`` with ``--arch pi3`` -> ``tiny-pi3``),
    characters outside ``[A-Za-z0-9_.-]`` as ``_``, and ``_2``, ``_3``... on repeats."""
    archs = list(archs) or ["auto"] * len(specs)
    out: list[str] = []
    for spec, arch in zip(specs, archs, strict=True):
        base = re.split(r"[/\\:]", str(spec).rstrip("/\\"))[-1] or "model"
        base = "_".join(_NAME.findall(base)) or "model"
        if arch not in ("auto", "vggt"):
            base = f"{base}-{arch}"
        name, n = base, 1
        while name in out:
            n += 1
            name = f"{base}_{n}"
        out.append(name)
    return out


def _check_names(names: Sequence[str]) -> None:
    if len(names) < 2:
        raise UserError(f"a comparison needs at least 2 models, got {len(names)}")
    bad = [n for n in names if not _NAME.fullmatch(n)]
    if bad:
        valid = "use letters, digits, '_', '-' and '.' (not first)"
        raise UserError(f"model name {bad[0]!r} is not an entity name: {valid}")
    if len(set(names)) != len(names):
        raise UserError(f"model names must differ, got {list(names)}")


def log_comparison(rec: rr.RecordingStream, compared: Sequence[Compared], options: RecordingOptions,
                   send_blueprint: bool = True) -> None:  # fmt: skip
    """Log each capture under its model's root (+ the depth timeline); then the side-by-side layout."""
    _check_names([c.name for c in compared])
    if send_blueprint:
        rec.send_blueprint(comparison_blueprint(compared, options), make_active=True, make_default=True)
    for c in compared:
        analysis = analyze_run(c.result, options.kinds, options.top_k, options.consistency_radius,
                               c.images.transforms)  # fmt: skip
        with rooted(c.root, depth=c.depth):
            log_run(rec, c.result, c.images, options, analysis=analysis)


def comparison_blueprint(compared: Sequence[Compared], options: RecordingOptions | None = None) -> rrb.Blueprint:
    """The side-by-side layout of these captures (viz.compare_blueprint); ``depth_percent`` active
    when the depths differ."""
    options = options if options is not None else RecordingOptions()
    models = [
        ComparedModel(c.name, c.root, c.result.layout.num_frames,
                      c.result.model_label.title if c.result.model_label is not None else "",
                      frames_without_camera(c.result))
        for c in compared
    ]  # fmt: skip
    queries = min(len(c.result.rows.queries) for c in compared)
    by_depth = len({c.depth for c in compared}) > 1
    return compare_blueprint(models, options.kinds, queries, by_depth=by_depth)


def record_comparison(
    models: Sequence[tuple[str, nn.Module]],
    images: ImagesLike,
    queries: QueriesLike,
    *,
    blocks: Sequence[int] | None = None,
    options: RecordingOptions | None = None,
    recording: rr.RecordingStream | None = None,
    send_blueprint: bool = True,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[list[Compared], rr.RecordingStream]:
    """Capture each ``(name, model)`` on the same images and queries; log all into one recording.

    Args:
        models: two or more ``(name, model)``; ``name`` is the entity root ``models/{name}``.
        images, queries, blocks, options, autocast_dtype: as for ``record.record_attention`` (the
            images must suit every model's patch size; queries are resolved per model layout).
        recording: log into this stream; None: a new ``rr.RecordingStream(APPLICATION_ID)``.

    Returns:
        (one Compared per model, in order; the recording).
    """
    _check_names([n for n, _ in models])
    options = options if options is not None else RecordingOptions()
    loaded = as_loaded_images(images)
    compared = []
    for name, model in models:
        result = capture(model, loaded, queries, blocks=blocks, kinds=options.kinds, autocast_dtype=autocast_dtype)
        compared.append(Compared(name, result, loaded, model_depth(model)))
    rec = recording if recording is not None else rr.RecordingStream(APPLICATION_ID)
    log_comparison(rec, compared, options, send_blueprint)
    return compared, rec


# ------------------------------------------------------------------------------------------------
# One whole comparison, as the command line asks for it
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompareOptions:
    """A comparison run: ``RunOptions``' fields for the photos, queries and outputs, and
    several models. ``archs``: one per model, or none (all ``auto``); ``names``: one per model,
    or none (``model_names``)."""

    images: tuple[str | os.PathLike[str], ...]
    models: tuple[str, ...]
    archs: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    queries: tuple[tuple[str, str], ...] = ()
    query_grid: tuple[int, int, int] | None = None
    blocks: str = "all"
    recording: RecordingOptions = field(default_factory=RecordingOptions)
    device: str = "auto"
    dtype: str = "auto"
    mode: str = "crop"
    image_size: int = VGGT_IMAGE_SIZE
    outputs: Outputs = field(default_factory=Outputs)
    force: bool = False

    def for_model(self, k: int) -> RunOptions:
        """The single-model run options of model ``k`` (no outputs: the comparison has them)."""
        return RunOptions(
            images=self.images, queries=self.queries, query_grid=self.query_grid, blocks=self.blocks,
            recording=self.recording, model=self.models[k], arch=self.archs[k] if self.archs else "auto",
            device=self.device, dtype=self.dtype, mode=self.mode, image_size=self.image_size, force=self.force,
        )  # fmt: skip


def _check_options(options: CompareOptions) -> list[str]:
    """The models' names; UserError for too few models or a count of --arch / --name that fits none."""
    n = len(options.models)
    for flag, values in (("--arch", options.archs), ("--name", options.names)):
        if values and len(values) != n:
            raise UserError(f"{flag} given {len(values)} times for {n} models: give it once per --model, in order")
    names = list(options.names) or model_names(options.models, options.archs)
    _check_names(names)
    return names


def _capture_one(k: int, name: str, options: CompareOptions, base: Prepared, callbacks: RunCallbacks) -> Compared:
    """Load model k, check the options against it, capture, and let it go (the next may be big)."""
    run_options = options.for_model(k)
    model = load_model_for_run(run_options.model, base.device, callbacks, run_options.arch)
    adapter = model_adapter(model)  # resolved once per model
    prep = Prepared(base.images, [], base.device, base.autocast, base.sinks, None)
    with as_bad_input():
        blocks, queries, recording = check_against_model(model, prep, run_options, callbacks, adapter)
    h, w = prep.images.layout_hw
    line = resources.check_forward_memory(
        model, model_layout(model, prep.images.tensor.shape[0], h, w, adapter), autocast=prep.autocast,
        queries=len(queries), blocks=len(blocks), kinds=recording.kinds, device=prep.device, keep_qk=False,
        force=options.force, arch=adapter,
    )  # fmt: skip
    if line:
        callbacks.echo(line)
    progress = BlockProgress(callbacks, len(blocks) * len(recording.kinds))
    try:
        with translate_oom(prep.device):
            result = capture(model, prep.images, queries, blocks=blocks, kinds=recording.kinds,
                                     autocast_dtype=prep.autocast, on_block=progress, arch=adapter)  # fmt: skip
    finally:
        progress.close()
    return Compared(name, result, prep.images, model_depth(model, adapter))


def compare(options: CompareOptions, callbacks: RunCallbacks | None = None) -> list[Compared]:
    """Record two or more models on the same photos and queries into ONE recording.

    In order: the checks that need no model (photos, queries, sinks), then per model: load,
    check, capture (the model is let go before the next loads); then everything is logged
    (``log_comparison``) to the sinks and the --save file is committed whole or not at all.
    Errors: ``runner.BadInput`` for what the user asked, UserError for the rest.
    """
    callbacks = callbacks if callbacks is not None else RunCallbacks()
    with as_bad_input():
        names = _check_options(options)
        for spec in options.models:  # every model before the first one runs
            check_model_spec(spec)
        paths = expand_image_paths(list(options.images))
        check_image_size(options.image_size, VGGT_PATCH_SIZE)
        device, autocast = resolve_device(options.device, options.dtype)
        sinks = plan_sinks(options.outputs)
        first = options.for_model(0)
        images = load_photos(paths, first, VGGT_PATCH_SIZE, callbacks)
        resolve_queries(first, images, VGGT_PATCH_SIZE, VGGT_NUM_REGISTERS, None)  # syntax, range
    base = Prepared(images, [], device, autocast, sinks, None)
    compared = [_capture_one(k, name, options, base, callbacks) for k, name in enumerate(names)]
    pending: list[PendingFile] = []
    rec = rr.RecordingStream(APPLICATION_ID, recording_id=uuid.uuid4())
    try:
        with open_sinks(rec, sinks) as opened:
            bar = callbacks.progress("logging to Rerun", None)
            try:
                log_comparison(rec, compared, options.recording)
            finally:
                bar.close()
            pending += opened.finish()
        commit(pending)
    except BaseException:
        discard(pending)
        raise
    depths = ", ".join(f"{c.name} ({plural(c.depth, 'block')})" for c in compared)
    callbacks.echo(f"{plural(len(compared), 'model')} compared: {depths}: {sinks.describe()}")
    if sinks.outputs.serve:
        serve_forever(opened, echo=callbacks.echo)
    return compared
