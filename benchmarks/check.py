"""The CUDA check profile (``run.py --gpu-check``): settings, step context, budgets, interleaved
measurements; steps 2 (overhead), 3 (scale) and "ablate".

Step 1 lives in exact.py, steps 4 and 5 in rrd_suites.py; run.py runs them in order. Every step
writes what it measured into ``entry`` and calls ``ctx.save()`` after each measurement, so a step
stopped by its time budget (or a run killed from outside) keeps what it had. Steps check the time
left before each costly call and skip what would not fit; ``time_limit`` stops the rest.
"""

from __future__ import annotations

import gc
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vggt_attn_rerun.api.ablation import ablate
from vggt_attn_rerun.core.adapters import adapter_for
from vggt_attn_rerun.core.interventions import CrossViewKnockout, HeadAblation, intervene
from vggt_attn_rerun.core.introspect import KINDS, model_depth, model_heads, model_layout

from .baseline import baseline_bytes, first_frames_over_budget
from .common import (
    DTYPES,
    GIB,
    MemoryMeter,
    load_bench_model,
    make_call,
    make_images,
    median,
    model_bytes,
    rotated,
    rows_bytes,
    spread_queries,
    sync,
)
from .suites import host_limit_bytes


class StepTimeout(Exception):
    """The step's time budget ran out while it was running."""


class StepSkipped(Exception):
    """The step cannot run (no time left, nothing to measure)."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise StepTimeout in the main thread once ``seconds`` have passed (checked between Python bytecodes)."""

    def alarm(signum: int, frame: Any) -> None:
        raise StepTimeout(f"time budget of {seconds:.0f} s spent")

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class CheckSettings:
    """What the check measures; the defaults are the GPU run (random-weight VGGT-1B, bf16, 518x518)."""

    model: str = "random"
    device: str = "cuda"
    dtype: str = "bfloat16"  # autocast dtype of steps 2-5; weights stay fp32
    size: tuple[int, int] = (518, 518)
    exact_dtypes: tuple[str, ...] = ("float32", "bfloat16")
    exact_frames: int = 4
    exact_blocks: tuple[int, ...] = (0, 12, 23)
    exact_queries: int = 4
    overhead_frames: int = 8
    queries: tuple[int, ...] = (1, 16)
    rounds: int = 10
    scale_frames: tuple[int, ...] = (32, 100, 200)
    scale_queries: int = 16
    scale_rounds: int = 1
    baseline_budget_gb: float | None = None  # None: 90% of the device memory free (CUDA), 8 GiB (CPU)
    host_memory_gb: float | None = None  # None: half of MemAvailable on CPU, unchecked on CUDA
    recording_frames: tuple[int, ...] = (8, 100)
    recording_queries: int = 1
    ablate_frames: int = 8
    ablate_batch_sizes: tuple[int, ...] = (1, 4)
    cli_photos: int = 8
    cli_size: int = 518
    photos: str = ""  # a folder of photos for step 5; "": synthetic photos
    work_dir: str = ""

    @property
    def autocast(self) -> torch.dtype | None:
        return DTYPES[self.dtype]


@dataclass
class Ctx:
    """What a step needs: settings, the model (loaded once), its step's deadline, and ``save``."""

    settings: CheckSettings
    save: Callable[[], None]
    log: Callable[[str], None] = print
    deadline: float = float("inf")
    measured: dict[str, Any] = field(default_factory=dict)  # forward times seen so far, by frames
    _model: nn.Module | None = None

    @property
    def device(self) -> torch.device:
        return torch.device(self.settings.device)

    @property
    def model(self) -> nn.Module:
        return self.load_model()

    def load_model(self) -> nn.Module:
        """The model (loaded on first use; the load time goes to ``measured['model_load_s']``)."""
        if self._model is None:
            self.log(f"loading model {self.settings.model!r} on {self.settings.device}")
            t0 = time.perf_counter()
            self._model = load_bench_model(self.settings.model, self.settings.device)
            self.measured["model_load_s"] = time.perf_counter() - t0
        return self._model

    def drop_hooks(self) -> None:
        """Remove every forward hook from the model. A timeout that struck while a capture removed its
        hooks could leave some behind; the check's model has none of its own."""
        for module in self._model.modules() if self._model is not None else ():
            module._forward_hooks.clear()
            module._forward_pre_hooks.clear()

    def release_model(self) -> None:
        self._model = None
        free(self.device)

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def predict_forward_s(self, frames: int) -> float | None:
        """A forward at ``frames``: the time of the smallest measured S >= frames (an upper bound), else
        the largest measured one scaled by (S / measured)^2 (global attention is quadratic in S)."""
        seen = {s: t for s, t in self.measured.items() if isinstance(s, int)}
        if not seen:
            return None
        above = [s for s in seen if s >= frames]
        if above:
            return seen[min(above)]
        base = max(seen)
        return seen[base] * (frames / base) ** 2

    def note_forward(self, frames: int, seconds: float) -> None:
        self.measured[frames] = seconds


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# Timing and memory of calls, interleaved
# --------------------------------------------------------------------------------------------


class _CudaMeter:
    """Peak of one call on a GPU: ``reset_peak_memory_stats`` before, ``max_memory_allocated`` after.

    Unlike ``common.MemoryMeter`` it leaves torch's cache alone (no ``empty_cache``), so that timed
    calls do not pay for fresh cudaMallocs that a user's repeated calls would not pay.
    """

    method = "torch.cuda.max_memory_allocated (peak stats reset before each call)"

    def __init__(self, device: torch.device) -> None:
        self.device, self.before = device, 0

    def start(self) -> None:
        sync(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.before = torch.cuda.memory_allocated(self.device)

    def stop(self) -> dict[str, int]:
        sync(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        return {"extra_bytes": max(0, peak - self.before), "device_peak_bytes": peak}


def measure_calls(
    ctx: Ctx,
    calls: dict[str, Callable[[], tuple[Any, int]]],
    rounds: int,
    input_bytes: int,
    warmup: Sequence[str] = (),
) -> dict[str, dict[str, Any]]:
    """Run ``warmup`` calls once untimed (the allocator then holds blocks of this size for every call),
    then every call once per round (order rotated each round), each timed (synchronized) and with its
    own peak memory (CUDA: ``_CudaMeter``; CPU: ``common.MemoryMeter``, peak = weights + input + peak
    RSS growth, as ``common.probe`` counts it). Stops early when the next round would not fit the time
    left; ``rounds_run`` says how many ran."""
    names = list(calls)
    weights = model_bytes(ctx.model)
    for name in warmup:
        kept = calls[name]()
        del kept
    out = {n: {"times_s": [], "peaks": [], "extras": [], "stored_bytes": 0} for n in names}
    round_s = None
    for r in range(rounds):
        if round_s is not None and round_s > ctx.remaining():
            break
        t_round = time.perf_counter()
        for name in rotated(names, r):
            meter = _CudaMeter(ctx.device) if ctx.device.type == "cuda" else MemoryMeter(ctx.device)
            meter.start()
            t0 = time.perf_counter()
            kept, stored = calls[name]()
            sync(ctx.device)
            seconds = time.perf_counter() - t0
            mem = meter.stop()
            del kept
            peak = mem.get("device_peak_bytes", weights + input_bytes + mem["extra_bytes"])
            out[name]["times_s"].append(seconds)
            out[name]["peaks"].append(peak)
            out[name]["extras"].append(mem["extra_bytes"])
            out[name]["stored_bytes"] = stored
            out[name]["memory_method"] = meter.method
        round_s = time.perf_counter() - t_round
    for name in names:
        m = out[name]
        m.update(
            rounds_run=len(m["times_s"]),
            time_s=median(m["times_s"]),
            peak_bytes=median(m["peaks"]),
            extra_bytes=median(m["extras"]),
        )
    return out


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def compare(m: dict[str, dict[str, Any]], name: str, plain: str = "plain") -> dict[str, Any]:
    """Ratios of ``name`` to ``plain``: time (median of paired ratios per round), peak memory."""
    a, p = m[name], m[plain]
    paired = [x / y for x, y in zip(a["times_s"], p["times_s"], strict=False) if y > 0]
    return {
        "time_s": a["time_s"],
        "times_s": a["times_s"],
        "time_ratio": median(paired) if paired else None,
        "time_ratio_of_medians": a["time_s"] / p["time_s"] if p["time_s"] > 0 else None,
        "peak_bytes": a["peak_bytes"],
        "memory_ratio": a["peak_bytes"] / p["peak_bytes"] if p["peak_bytes"] > 0 else None,
        "extra_bytes": a["extra_bytes"],
        "extra_over_plain_bytes": a["extra_bytes"] - p["extra_bytes"],
        "stored_bytes": a["stored_bytes"],
        "rounds_run": a["rounds_run"],
    }


def _plain_summary(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("time_s", "times_s", "peak_bytes", "extra_bytes", "rounds_run", "memory_method")
    return {k: m[k] for k in keys}


# --------------------------------------------------------------------------------------------
# 2. Overhead
# --------------------------------------------------------------------------------------------


def step_overhead(ctx: Ctx, entry: dict[str, Any]) -> None:
    s, model = ctx.settings, ctx.model
    (h, w), frames = s.size, s.overhead_frames
    images = make_images(frames, h, w, ctx.device)
    layout = model_layout(model, frames, h, w)
    calls = {"plain": make_call("plain", model, images, [], s.autocast)}
    for q in s.queries:
        calls[f"Q={q}"] = make_call("ours", model, images, spread_queries(layout, q), s.autocast)
    entry.update(
        frames=frames,
        size=[h, w],
        tokens=layout.num_tokens,
        blocks=model_depth(model),
        heads=model_heads(model),
        kinds=list(KINDS),
        dtype=s.dtype,
    )
    ctx.log(f"[overhead] S={frames} {h}x{w}: warm-up of {', '.join(calls)}")
    warm = measure_calls(ctx, calls, 1, _nbytes(images))
    entry["warmup_s"] = {n: m["time_s"] for n, m in warm.items()}
    ctx.note_forward(frames, warm["plain"]["time_s"])
    ctx.save()
    round_s = sum(entry["warmup_s"].values())
    rounds = min(s.rounds, int(0.9 * ctx.remaining() / max(round_s, 1e-6)))
    if rounds < 1:
        raise StepSkipped(f"one round takes {round_s:.1f} s, {ctx.remaining():.0f} s left")
    ctx.log(f"[overhead] {rounds} interleaved rounds")
    m = measure_calls(ctx, calls, rounds, _nbytes(images))
    ctx.note_forward(frames, m["plain"]["time_s"])
    entry["plain"] = _plain_summary(m["plain"])
    entry["rows"] = [{"queries": q, **compare(m, f"Q={q}")} for q in s.queries]


# --------------------------------------------------------------------------------------------
# 3. Scale
# --------------------------------------------------------------------------------------------


def _host_limit(s: CheckSettings) -> int | None:
    if s.host_memory_gb is not None:
        return int(s.host_memory_gb * GIB)
    return host_limit_bytes() if not s.device.startswith("cuda") else None


def _baseline_budget(ctx: Ctx) -> int:
    if ctx.settings.baseline_budget_gb is not None:
        return int(ctx.settings.baseline_budget_gb * GIB)
    if ctx.device.type == "cuda":
        from vggt_attn_rerun.core.resources import available_memory_bytes

        return int(0.9 * (available_memory_bytes(ctx.device) or 0))
    return 8 * GIB


def step_scale(ctx: Ctx, entry: dict[str, Any]) -> None:
    s, model = ctx.settings, ctx.model
    h, w = s.size
    heads, depth = model_heads(model), model_depth(model)
    host_limit = _host_limit(s)
    entry.update(size=[h, w], queries=s.scale_queries, dtype=s.dtype, rows=[])
    for frames in s.scale_frames:
        layout = model_layout(model, frames, h, w)
        row: dict[str, Any] = {
            "frames": frames,
            "tokens": layout.num_tokens,
            "rows_bytes": rows_bytes(layout, heads, depth, s.scale_queries),
            "baseline_predicted_bytes": baseline_bytes(layout, heads, depth),
        }
        entry["rows"].append(row)
        predicted = ctx.predict_forward_s(frames)
        need = None if predicted is None else 1.1 * predicted * (1 + 2 * s.scale_rounds)
        if need is not None and need > ctx.remaining():
            row["status"] = f"skipped: predicted {need:.0f} s > {ctx.remaining():.0f} s left"
            break
        if host_limit is not None and row["rows_bytes"] > host_limit:
            row["status"] = f"skipped: rows need {row['rows_bytes'] / GIB:.1f} GiB of host memory"
            break
        ctx.log(f"[scale] S={frames} ({layout.num_tokens} tokens): plain and capture, Q={s.scale_queries}")
        images = make_images(frames, h, w, ctx.device)
        calls = {
            "plain": make_call("plain", model, images, [], s.autocast),
            "capture": make_call("ours", model, images, spread_queries(layout, s.scale_queries), s.autocast),
        }
        try:
            m = measure_calls(ctx, calls, s.scale_rounds, _nbytes(images), warmup=["plain"])
        except torch.OutOfMemoryError as e:
            row["status"] = f"out of memory: {str(e).splitlines()[0]}"
            break
        finally:
            del images, calls
            free(ctx.device)
        ctx.note_forward(frames, m["plain"]["time_s"])
        row.update(status="ok", plain=_plain_summary(m["plain"]), capture=compare(m, "capture"))
        ctx.save()
    ok = [r["frames"] for r in entry["rows"] if r.get("status") == "ok"]
    entry["largest_captured_frames"] = max(ok) if ok else None
    ctx.save()
    _baseline_attempt(ctx, entry, heads, depth)


def _baseline_attempt(ctx: Ctx, entry: dict[str, Any], heads: int, depth: int) -> None:
    """Where the full-matrix baseline stops fitting, and one real run at the largest S that fits."""
    s, model = ctx.settings, ctx.model
    h, w = s.size
    budget = _baseline_budget(ctx)
    stop = first_frames_over_budget(model_layout(model, 1, h, w), heads, depth, budget)
    base: dict[str, Any] = {"budget_bytes": budget, "over_budget_from_frames": stop}
    entry["baseline"] = base
    frames = (stop - 1) if stop else None
    if not frames:
        base["attempt"] = {"status": "skipped: not even S = 1 fits the budget"}
        return
    layout = model_layout(model, frames, h, w)
    attempt: dict[str, Any] = {"frames": frames, "predicted_bytes": baseline_bytes(layout, heads, depth)}
    base["attempt"] = attempt
    predicted = ctx.predict_forward_s(frames)
    if predicted is not None and 3 * predicted > ctx.remaining():
        attempt["status"] = f"skipped: predicted {3 * predicted:.0f} s > {ctx.remaining():.0f} s left"
        return
    ctx.log(f"[scale] full-matrix baseline at S={frames} (predicted {attempt['predicted_bytes'] / GIB:.1f} GiB)")
    images = make_images(frames, h, w, ctx.device)
    calls = {
        "plain": make_call("plain", model, images, [], s.autocast),
        "baseline": make_call("baseline", model, images, [], s.autocast),
    }
    try:
        m = measure_calls(ctx, calls, 1, _nbytes(images), warmup=["plain"])
        attempt.update(status="ok", plain=_plain_summary(m["plain"]), baseline=compare(m, "baseline"))
    except torch.OutOfMemoryError as e:
        attempt["status"] = f"out of memory: {str(e).splitlines()[0]}"
    finally:
        del images, calls
        free(ctx.device)


# --------------------------------------------------------------------------------------------
# Step "ablate": interventions on the real model's code path, and their cost
# --------------------------------------------------------------------------------------------
# Checks (on the check's model, under its autocast): ``intervene`` with no intervention leaves every
# prediction bit-identical; a zero ablation of one head equals the forward of the same model with
# that head's columns of ``proj.weight`` set to 0 (max abs difference of the predictions). Cost:
# ``api.ablate`` over head ablations of the last global block at each batch size, seconds per
# intervention against one plain forward, and the peak memory (CUDA); one cross-view knockout of
# every patch token in the last global block, seconds and peak.


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
