"""Step "ablate" of the GPU check: interventions on the real model's code path, and their cost.

Checks (on the check's model, under its autocast): ``intervene`` with no intervention leaves every
prediction bit-identical; a zero ablation of one head equals the forward of the same model with
that head's columns of ``proj.weight`` set to 0 (max abs difference of the predictions). Cost:
``api.ablate`` over head ablations of the last global block at each batch size, seconds per
intervention against one plain forward, and the peak memory (CUDA); one cross-view knockout of
every patch token in the last global block, seconds and peak.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from vggt_attn_rerun.api.ablation import ablate
from vggt_attn_rerun.core.adapters import adapter_for
from vggt_attn_rerun.core.interventions import CrossViewKnockout, HeadAblation, intervene
from vggt_attn_rerun.core.introspect import model_depth, model_heads, model_layout

from .common import make_images, sync
from .gpu_steps import Ctx, StepSkipped, free


def _forward(ctx: Ctx, images: torch.Tensor) -> dict[str, torch.Tensor]:
    s, model = ctx.settings, ctx.model
    with torch.no_grad(), torch.autocast(ctx.device.type, dtype=s.autocast, enabled=s.autocast is not None):
        out = adapter_for(model).run(model, images[None])
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor) and k != "images"}


def _peak_start(ctx: Ctx) -> None:
    sync(ctx.device)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)


def _peak(ctx: Ctx) -> int | None:
    sync(ctx.device)
    return torch.cuda.max_memory_allocated(ctx.device) if ctx.device.type == "cuda" else None


def step_ablate(ctx: Ctx, entry: dict[str, Any]) -> None:
    s, model = ctx.settings, ctx.model
    (h, w), frames = s.size, s.ablate_frames
    images = make_images(frames, h, w, ctx.device)
    layout = model_layout(model, frames, h, w)
    last = model_depth(model) - 1
    entry.update(frames=frames, size=[h, w], tokens=layout.num_tokens, dtype=s.dtype, block=last)

    _peak_start(ctx)
    t0 = time.perf_counter()
    plain = _forward(ctx, images)
    sync(ctx.device)
    entry["plain_forward_s"], entry["plain_peak_bytes"] = time.perf_counter() - t0, _peak(ctx)
    ctx.note_forward(frames, entry["plain_forward_s"])
    with intervene(model, [], layout):
        inside = _forward(ctx, images)
    entry["noop_bit_identical"] = all(torch.equal(plain[k], inside[k]) for k in plain)
    ctx.save()

    attn = adapter_for(model).attention(model, "global", last)
    d = attn.proj.weight.shape[1] // int(attn.num_heads)
    with intervene(model, [HeadAblation("global", last, 0)], layout):
        ablated = _forward(ctx, images)
    saved = attn.proj.weight.detach()[:, :d].clone()
    try:
        with torch.no_grad():
            attn.proj.weight[:, :d] = 0
        zeroed = _forward(ctx, images)
    finally:
        with torch.no_grad():
            attn.proj.weight[:, :d] = saved
    entry["head_vs_zeroed_proj_max_abs"] = max(float((ablated[k] - zeroed[k]).abs().max()) for k in ablated)
    entry["head_changed_output_max_abs"] = max(float((ablated[k] - plain[k]).abs().max()) for k in ablated)
    del plain, inside, ablated, zeroed
    ctx.save()

    heads = model_heads(model)
    entry["sweeps"] = []
    for bs in s.ablate_batch_sizes:
        count = min(heads, 2 * bs)
        predicted = entry["plain_forward_s"] * (1 + count) * 1.5
        if predicted > ctx.remaining():
            entry["sweeps"].append({"batch_size": bs, "status": f"skipped: predicted {predicted:.0f} s"})
            break
        free(ctx.device)
        _peak_start(ctx)
        ivs = [HeadAblation("global", last, hh) for hh in range(count)]
        try:
            effects = ablate(model, images, ivs, batch_size=bs, autocast_dtype=s.autocast)
        except torch.OutOfMemoryError as e:
            entry["sweeps"].append({"batch_size": bs, "status": f"out of memory: {str(e).splitlines()[0]}"})
            break
        per = effects.seconds / len(ivs)
        entry["sweeps"].append({
            "batch_size": bs, "interventions": len(ivs), "status": "ok", "seconds_per_intervention": per,
            "over_plain_forward": per / entry["plain_forward_s"], "peak_bytes": _peak(ctx),
            "max_points_effect": float(effects.values["points"].max()),
        })  # fmt: skip
        ctx.save()
    if 2 * entry["plain_forward_s"] > ctx.remaining():
        raise StepSkipped("no time left for the knockout")
    free(ctx.device)
    _peak_start(ctx)
    effects = ablate(model, images, [CrossViewKnockout(last)], autocast_dtype=s.autocast)
    entry["knockout"] = {"seconds": effects.seconds, "peak_bytes": _peak(ctx),
                         "points_effect": float(effects.values["points"][0])}  # fmt: skip
