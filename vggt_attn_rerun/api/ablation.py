"""Interventions measured on the 3D output: ``ablate`` (numbers) and ``record_ablation`` (a recording).

``ablate`` runs the model once unablated, then once per intervention (``core.interventions``),
several interventions per forward pass as a batch of copies of the scene (``batch_size``), and
measures each against the unablated prediction (``analysis.effects``).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import rerun as rr
import torch
from torch import nn

from vggt_attn_rerun.analysis.effects import EFFECTS, Effects, baseline, effect, geometry
from vggt_attn_rerun.api.runner import (
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
from vggt_attn_rerun.core.adapters import adapter_for
from vggt_attn_rerun.core.images import (
    ImagesLike,
    LoadedImages,
    as_loaded_images,
    batched_images,
    check_image_size,
    expand_image_paths,
    images_from_tensor,
)
from vggt_attn_rerun.core.interventions import (
    ABLATIONS,
    WHATS,
    Intervention,
    check_interventions,
    intervene,
    sweep,
)
from vggt_attn_rerun.core.introspect import model_layout, model_patch_size
from vggt_attn_rerun.core.loading import model_device
from vggt_attn_rerun.core.resources import resolve_device, translate_oom
from vggt_attn_rerun.core.tokens import (
    QUERY_SYNTAX,
    VGGT_NUM_REGISTERS,
    VGGT_PATCH_SIZE,
    Query,
    TokenLayout,
    parse_query,
)
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.io.atomic import PendingFile, commit, discard
from vggt_attn_rerun.viz.log_effects import effects_blueprint, log_effects
from vggt_attn_rerun.viz.options import RecordingOptions
from vggt_attn_rerun.viz.paths import APPLICATION_ID
from vggt_attn_rerun.viz.sinks import open_sinks, plan_sinks, serve_forever


def _loaded(model: nn.Module, images: ImagesLike, arch: str | None) -> LoadedImages:
    """LoadedImages; a tensor is checked against the model's own patch size (16 for VGGT-Omega)."""
    if isinstance(images, torch.Tensor):
        return images_from_tensor(images, model_patch_size(model, arch))
    return as_loaded_images(images)


def _queries(queries: Sequence[Query | str], layout: TokenLayout, images: object) -> tuple[Query, ...]:
    pixel_maps = getattr(images, "transforms", None) if getattr(images, "paths", None) is not None else None
    out = []
    for q in [queries] if isinstance(queries, (str, Query)) else queries:
        if isinstance(q, str):
            q = parse_query(q, layout, pixel_maps)
        elif not isinstance(q, Query):
            raise UserError(f"query {q!r:.60} is a {type(q).__name__}: valid are Query objects or {QUERY_SYNTAX}")
        q.token(layout)
        out.append(q)
    return tuple(out)


def ablate(
    model: nn.Module,
    images: ImagesLike,
    interventions: Sequence[Intervention],
    *,
    queries: Sequence[Query | str] = (),
    batch_size: int = 4,
    conf_percentile: float = 50.0,
    keep_moved: Sequence[int] | None = None,
    autocast_dtype: torch.dtype | None = None,
    on_forward: Callable[[int, int], None] | None = None,
    arch: str | None = None,
) -> Effects:
    """The effect of each intervention on depth, points, cameras and the queries' 3D points.

    Args:
        model: a model with an adapter (VGGT, pi3, StreamVGGT, VGGT-Omega, a tiny replica), eval mode.
        images: LoadedImages, a tensor ``[S, 3, H, W]`` in [0, 1], or image files/folders/globs.
        interventions: HeadAblation, BlockAblation, CrossViewKnockout (``core.interventions.sweep``
            builds a whole sweep); each one is measured alone. Checked before any forward.
        queries: Query objects or query strings whose own 3D point is followed (Effects.query).
        batch_size: interventions per forward pass (copies of the scene in one batch).
        conf_percentile: the confident pixels of the unablated forward that depth and points count.
        keep_moved: indices of the interventions whose per-pixel shift map is kept (Effects.moved);
            None: the one with the largest point effect.
        autocast_dtype: run every forward under ``torch.autocast`` (e.g. bf16).
        on_forward: ``on_forward(done, total)`` after each forward pass of interventions (progress).
        arch: the model's adapter name; default: from the model's type.
    """
    adapter = adapter_for(model, arch)
    loaded = _loaded(model, images, arch)
    device = model_device(model)
    x = batched_images(loaded).to(device)
    layout = model_layout(model, x.shape[1], x.shape[3], x.shape[4], adapter.name)
    qs = _queries(queries, layout, loaded)
    interventions = tuple(interventions)
    check_interventions(model, interventions, layout, adapter)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    keep = None if keep_moved is None else set(keep_moved)

    def forward(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            return adapter.run(model, batch)

    base = baseline(geometry(forward(x), layout), layout, qs, conf_percentile)
    values = {name: [] for name in EFFECTS}
    query, moved, best = [], {}, (-1.0, -1)
    chunks = [interventions[i : i + batch_size] for i in range(0, len(interventions), batch_size)]
    start = time.perf_counter()
    for c, chunk in enumerate(chunks):
        first = c * batch_size
        items = [dataclasses.replace(iv, item=j) for j, iv in enumerate(chunk)]
        with intervene(model, items, layout, adapter):
            pred = forward(x.expand(len(chunk), *x.shape[1:]).contiguous())
        for j in range(len(chunk)):
            e = effect(base, geometry(pred, layout, j), layout, qs)
            for name in EFFECTS:
                values[name].append(getattr(e, name))
            query.append(e.query)
            i = first + j
            if keep is not None and i in keep:
                moved[i] = e.moved
            elif keep is None and e.points > best[0]:
                moved, best = {i: e.moved}, (e.points, i)
        del pred
        if on_forward is not None:
            on_forward(min(first + len(chunk), len(interventions)), len(interventions))
    seconds = time.perf_counter() - start
    return Effects(
        interventions, {k: np.asarray(v, np.float64) for k, v in values.items()},
        np.asarray(query, np.float64).reshape(len(interventions), len(qs)), qs, layout, base, moved, seconds,
    )  # fmt: skip


def record_ablation(
    model: nn.Module,
    images: ImagesLike,
    interventions: Sequence[Intervention],
    *,
    queries: Sequence[Query | str] = (),
    options: RecordingOptions | None = None,
    recording: rr.RecordingStream | None = None,
    send_blueprint: bool = True,
    **ablate_kwargs: object,
) -> tuple[Effects, rr.RecordingStream]:
    """``ablate`` and log its effects into a recording (viz.log_effects: block x head matrices, the point
    map coloured by how far each point moved); ``ablate_kwargs`` go to ``ablate``.

    ``send_blueprint``: send ``viz.log_effects.effects_blueprint`` as the active layout (a tab of its
    own); with False the recording keeps the layout it has (e.g. the attention layout).
    """
    options = options if options is not None else RecordingOptions()
    loaded = _loaded(model, images, ablate_kwargs.get("arch"))
    effects = ablate(model, loaded, interventions, queries=queries, conf_percentile=options.conf_percentile,
                     **ablate_kwargs)  # fmt: skip
    rec = recording if recording is not None else rr.RecordingStream(APPLICATION_ID)
    if send_blueprint:
        rec.send_blueprint(effects_blueprint(effects), make_active=True, make_default=True)
    log_effects(rec, effects, loaded, options)
    return effects, rec


# ------------------------------------------------------------------------------------------------
# One whole ablation run, as the command line asks for it (``vggt-attn-rerun ablate``)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AblateOptions:
    """An ablation run: the main command's options (photos, queries, blocks, kinds, model, outputs)
    and what to intervene on.

    Attributes:
        run: the photos, queries, ``blocks``, ``recording.kinds``, model and outputs (``RunOptions``).
        what: "heads", "blocks" or "knockout" (core.interventions.sweep).
        ablation: "zero" or "mean" (heads and blocks).
        scope: knockouts: "patches" (every patch token) or "query" (only the queries' tokens).
        batch_size: interventions per forward pass.
        show: ``KIND:BLOCK[:HEAD]``, the intervention whose moved points are shown; None: the
            one with the largest point effect.
    """

    run: RunOptions
    what: str = "heads"
    ablation: str = "zero"
    scope: str = "patches"
    batch_size: int = 4
    show: str | None = None


SCOPES = ("patches", "query")


def _shown(text: str | None, interventions: Sequence[Intervention]) -> list[int] | None:
    """The index of the intervention ``KIND:BLOCK[:HEAD]`` names; None for no choice."""
    if text is None:
        return None
    parts = text.strip().split(":")
    syntax = "use KIND:BLOCK for blocks and knockouts, KIND:BLOCK:HEAD for heads (e.g. global:3:2)"
    if len(parts) not in (2, 3) or not all(p.strip().isdigit() for p in parts[1:]):
        raise UserError(f"--show {text!r}: {syntax}")
    kind, block = parts[0].strip().lower(), int(parts[1])
    head = int(parts[2]) if len(parts) == 3 else None
    for i, iv in enumerate(interventions):
        if iv.kind == kind and iv.block == block and getattr(iv, "head", None) == head:
            return [i]
    raise UserError(f"--show {text}: no such intervention in this run ({len(interventions)} run); {syntax}")


def run_ablation(options: AblateOptions, callbacks: RunCallbacks | None = None) -> Effects:
    """Check, load the photos and the model, run every intervention, log the effects, write the file.

    Every intervention is checked before the first forward pass; the recording is written only
    after the last one (``--save`` whole or not at all: an interrupted run leaves no file).
    """
    callbacks = callbacks if callbacks is not None else RunCallbacks()
    run = options.run
    with as_bad_input():
        if options.what not in WHATS:
            raise UserError(f"--what {options.what}: valid are {', '.join(WHATS)}")
        if options.ablation not in ABLATIONS:
            raise UserError(f"--ablation {options.ablation}: valid are {', '.join(ABLATIONS)}")
        if options.scope not in SCOPES:
            raise UserError(f"--scope {options.scope}: valid are {', '.join(SCOPES)}")
        if options.batch_size < 1:
            raise UserError(f"--batch-size {options.batch_size}: give an integer >= 1")
        paths = expand_image_paths(list(run.images))
        check_image_size(run.image_size, VGGT_PATCH_SIZE)
        device, autocast = resolve_device(run.device, run.dtype)
        sinks = plan_sinks(run.outputs)
        images = load_photos(paths, run, VGGT_PATCH_SIZE, callbacks)
        resolve_queries(run, images, VGGT_PATCH_SIZE, VGGT_NUM_REGISTERS, None)  # syntax, range
    model = load_model_for_run(run.model, device, callbacks, run.arch)
    prep = Prepared(images, [], device, autocast, sinks, None)
    with as_bad_input():
        blocks, queries, recording = check_against_model(model, prep, run, callbacks)
        h, w = prep.images.layout_hw
        layout = model_layout(model, prep.images.tensor.shape[0], h, w)
        tokens = [q.token(layout) for q in queries] if options.scope == "query" else None
        interventions = sweep(model, options.what, recording.kinds, blocks, options.ablation, tokens)
        check_interventions(model, interventions, layout)
        keep = _shown(options.show, interventions)
    bar = callbacks.progress(f"{plural(len(interventions), 'intervention')}", len(interventions))
    state = {"done": 0}

    def on_forward(done: int, total: int) -> None:
        bar.update(done - state["done"])
        state["done"] = done

    try:
        with translate_oom(device):
            effects = ablate(model, prep.images, interventions, queries=queries, batch_size=options.batch_size,
                             conf_percentile=recording.conf_percentile, keep_moved=keep, autocast_dtype=autocast,
                             on_forward=on_forward)  # fmt: skip
    finally:
        bar.close()
    pending: list[PendingFile] = []
    rec = rr.RecordingStream(APPLICATION_ID, recording_id=uuid.uuid4())
    try:
        with open_sinks(rec, sinks) as opened:
            rec.send_blueprint(effects_blueprint(effects), make_active=True, make_default=True)
            log_effects(rec, effects, prep.images, recording)
            pending += opened.finish()
        commit(pending)
    except BaseException:
        discard(pending)
        raise
    top = int(np.nanargmax(np.nan_to_num(effects.values["points"], nan=-1.0)))
    each = effects.seconds / max(len(effects), 1)
    callbacks.echo(
        f"{plural(len(effects), 'intervention')} ({each:.3g} s each); largest point effect: "
        f"{effects.interventions[top].label} ({effects.values['points'][top]:.3g} x scene scale): {sinks.describe()}"
    )
    if sinks.outputs.serve:
        serve_forever(opened, echo=callbacks.echo)
    return effects
