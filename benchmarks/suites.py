"""The settings of a benchmark run and the two benchmarks of the model alone.

1. ``overhead``: plain forward vs forward with capture (all blocks x heads x kinds), Q queries.
2. ``scaling``: extra memory over a plain forward vs S, ours against the full-matrix baseline.

The two that write .rrd files (3. ``recording``, 4. ``end_to_end``) are in rrd_suites.py.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from vggt_attn_rerun.core.introspect import KINDS, model_depth, model_heads, model_layout

from .baseline import baseline_bytes, first_frames_over_budget
from .common import (
    DTYPES,
    GIB,
    ProbeConfig,
    make_call,
    make_images,
    measure_memory,
    median,
    rotated,
    rows_bytes,
    spread_queries,
    sync,
)

TIME_TARGET = 1.05
MEMORY_TARGET = 1.05
TARGET_QUERIES = 16
# The CLI call of benchmark 4: {images} {model} {device} {dtype} {image_size} {rrd} are filled in.
DEFAULT_CLI_ARGS = (
    "{images} --model {model} --device {device} --dtype {dtype} --kinds frame,global --blocks all "
    "--image-size {image_size} --save {rrd} --overwrite --headless"
)


@dataclass
class Settings:
    """What one benchmark run measures. ``profile`` presets fill the sizes (see ``run.py``)."""

    model: str = "tiny"
    device: str = "cpu"
    dtype: str = "float32"  # autocast dtype of the forward; weights stay fp32
    budget_gb: float = 8.0
    isolate: bool = True  # CPU memory: one fresh child process per configuration
    warmup: bool = True  # CPU memory probes: warm the call up once before measuring
    # 1. overhead
    frames: int = 8
    size: tuple[int, int] = (224, 224)
    queries: tuple[int, ...] = (1, 16, 256)
    repeats: int = 15
    # 2. scaling
    scaling_frames: tuple[int, ...] = (2, 4, 8, 16)
    scaling_size: tuple[int, int] = (224, 224)
    scaling_queries: tuple[int, ...] = (16, 256)
    # 3. recording
    recording_frames: tuple[int, ...] = (2, 4, 8)
    recording_size: tuple[int, int] = (224, 224)
    recording_queries: int = 4
    # 4. end to end: (model spec, photos, --image-size) per row; photos are square, that size
    e2e: tuple[tuple[str, int, int], ...] = (("tiny", 4, 518),)
    cli_args: str = DEFAULT_CLI_ARGS
    work_dir: str | None = None  # where .rrd files of benchmarks 3 and 4 go (None: a temporary folder, removed)
    log: Callable[[str], None] = field(default=print, repr=False)
    _measured: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    @property
    def autocast(self) -> torch.dtype | None:
        return DTYPES[self.dtype]

    @property
    def budget_bytes(self) -> int:
        return int(self.budget_gb * GIB)

    def probe(self, frames: int, size: tuple[int, int], mode: str, queries: int = 0) -> ProbeConfig:
        return ProbeConfig(self.model, self.device, frames, size[0], size[1], mode, queries, self.dtype, self.warmup)

    def measure(self, cfg: ProbeConfig, model: nn.Module) -> dict[str, Any]:
        """``measure_memory``, once per configuration (benchmarks 1 and 2 share some)."""
        key = json.dumps(asdict(cfg), sort_keys=True)
        if key not in self._measured:
            self._measured[key] = measure_memory(cfg, model, self.isolate)
        return self._measured[key]

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k not in ("log", "_measured")}


def host_limit_bytes() -> int:
    """Half of the RAM available now: the most our stored rows may take (never OOM the machine)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return 8 * GIB


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


# --------------------------------------------------------------------------------------------
# 1. Capture overhead
# --------------------------------------------------------------------------------------------


def _overhead_configs(
    settings: Settings, layout: Any, heads: int, depth: int
) -> tuple[dict[str, tuple[str, int]], list[dict[str, Any]]]:
    """name -> (mode, queries) of the configurations to measure, and the skipped ones (with why)."""
    host_limit = host_limit_bytes()
    configs: dict[str, tuple[str, int]] = {"plain": ("plain", 0)}
    skipped: list[dict[str, Any]] = []
    for q in settings.queries:
        need = rows_bytes(layout, heads, depth, min(q, layout.num_tokens))
        if need > host_limit:
            why = f"rows need {need / GIB:.1f} GiB, over half the available RAM ({host_limit / GIB:.1f} GiB)"
            skipped.append({"mode": "ours", "queries": q, "skipped": why})
        else:
            configs[f"Q={q}"] = ("ours", q)
    need = baseline_bytes(layout, heads, depth)
    if need > settings.budget_bytes:
        why = f"predicted {need / GIB:.1f} GiB > budget {settings.budget_gb:g} GiB"
        skipped.append({"mode": "baseline", "queries": None, "skipped": why})
    else:
        configs["baseline"] = ("baseline", 0)
    return configs, skipped


def _interleaved_times(
    calls: dict[str, Callable[[], Any]], repeats: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds of each call per repeat, after one warm-up each; the order rotates every repeat so
    that no configuration always runs first."""
    names = list(calls)
    for name in names:  # warm-up
        kept = calls[name]()
        del kept
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in rotated(names, r):
            sync(device)
            t0 = time.perf_counter()
            kept = calls[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
            del kept
    return times


def _overhead_row(mode: str, q: int, times: list[float], plain_times: list[float], m: dict[str, Any],
                  plain_m: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """One configuration against the plain forward: time ratio (median of paired ratios) and memory."""
    t, plain_t = median(times), median(plain_times)
    paired = [c / p for c, p in zip(times, plain_times, strict=True)]
    return {
        "mode": mode,
        "queries": q if mode == "ours" else None,
        "queries_used": m["queries"] if mode == "ours" else None,  # capped at the token count
        "time_s": t,
        "times_s": times,
        "time_ratio": median(paired),
        "time_ratio_of_medians": _ratio(t, plain_t),
        "time_ratio_of_minimums": _ratio(min(times), min(plain_times)),
        "peak_bytes": m["peak_bytes"],
        "memory_ratio": _ratio(m["peak_bytes"], plain_m["peak_bytes"]),
        "extra_bytes": m["extra_bytes"],
        "extra_ratio": _ratio(m["extra_bytes"], plain_m["extra_bytes"]),
        "stored_bytes": m["stored_bytes"],
    }


def _overhead_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The time and memory ratios at TARGET_QUERIES against their limits (none when not measured)."""
    at = next((r for r in rows if r["mode"] == "ours" and r["queries"] == TARGET_QUERIES), None)
    if at is None or "skipped" in at:
        return []
    out = []
    for what, key, limit in (("time", "time_ratio", TIME_TARGET), ("memory", "memory_ratio", MEMORY_TARGET)):
        value = at[key]
        out.append({"name": f"{what} ratio at Q={TARGET_QUERIES}", "value": value, "limit": limit,
                    "pass": value is not None and value <= limit})  # fmt: skip
    return out


def overhead(settings: Settings, model: nn.Module) -> dict[str, Any]:
    """Time (interleaved repeats, in this process) and peak memory (per configuration) of capture,
    and of the full-matrix baseline for comparison."""
    log, device = settings.log, torch.device(settings.device)
    (h, w), s = settings.size, settings.frames
    images = make_images(s, h, w, device)
    layout = model_layout(model, s, h, w)
    heads, depth = model_heads(model), model_depth(model)
    configs, skipped = _overhead_configs(settings, layout, heads, depth)
    calls = {
        name: make_call(mode, model, images, spread_queries(layout, q) if mode == "ours" else [], settings.autocast)
        for name, (mode, q) in configs.items()
    }
    log(f"[overhead] {s} frames {h}x{w} ({layout.num_tokens} tokens), {settings.repeats} interleaved repeats")
    times = _interleaved_times(calls, settings.repeats, device)
    mem: dict[str, dict[str, Any]] = {}
    for name, (mode, q) in configs.items():
        log(f"[overhead] memory of {name}")
        mem[name] = settings.measure(settings.probe(s, (h, w), mode, q), model)
    plain_m = mem["plain"]
    rows = [_overhead_row(mode, q, times[name], times["plain"], mem[name], plain_m)
            for name, (mode, q) in configs.items() if mode != "plain"]  # fmt: skip
    rows += skipped
    return {
        "model": settings.model,
        "frames": s,
        "size": [h, w],
        "tokens": layout.num_tokens,
        "blocks": depth,
        "heads": heads,
        "kinds": list(KINDS),
        "dtype": settings.dtype,
        "repeats": settings.repeats,
        "memory_method": plain_m["memory_method"],
        "plain": {
            "time_s": median(times["plain"]),
            "times_s": times["plain"],
            "time_s_min": min(times["plain"]),
            "peak_bytes": plain_m["peak_bytes"],
            "extra_bytes": plain_m["extra_bytes"],
            "weights_bytes": plain_m["weights_bytes"],
            "input_bytes": plain_m["input_bytes"],
        },
        "rows": rows,
        "targets": _overhead_targets(rows),
    }


# --------------------------------------------------------------------------------------------
# 2. Scaling in S: ours vs the full-matrix baseline
# --------------------------------------------------------------------------------------------


def _loglog_slope(xs: Sequence[float], ys: Sequence[float | None]) -> float | None:
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if y is not None and y > 0]
    if len(pts) < 2:
        return None
    return float(np.polyfit([p[0] for p in pts], [p[1] for p in pts], 1)[0])


def scaling(settings: Settings, model: nn.Module) -> dict[str, Any]:
    """Extra memory over a plain forward for S frames at a fixed size, ours vs the baseline."""
    log = settings.log
    h, w = settings.scaling_size
    heads, depth = model_heads(model), model_depth(model)
    host_limit = host_limit_bytes()
    rows = []
    for s in settings.scaling_frames:
        layout = model_layout(model, s, h, w)
        log(f"[scaling] S={s} ({layout.num_tokens} tokens): plain")
        plain = settings.measure(settings.probe(s, (h, w), "plain"), model)
        row: dict[str, Any] = {
            "frames": s,
            "tokens": layout.num_tokens,
            "plain": {k: plain[k] for k in ("time_s", "peak_bytes", "extra_bytes")},
            "ours": {},
        }
        for q in settings.scaling_queries:
            predicted = rows_bytes(layout, heads, depth, min(q, layout.num_tokens))
            entry: dict[str, Any] = {"predicted_bytes": predicted}
            if predicted > host_limit:
                entry["status"] = "over half the available RAM"
            else:
                log(f"[scaling] S={s}: ours Q={q}")
                m = settings.measure(settings.probe(s, (h, w), "ours", q), model)
                entry.update(status="ran", **_over_plain(m, plain))
            row["ours"][str(q)] = entry
        predicted = baseline_bytes(layout, heads, depth)
        base: dict[str, Any] = {"predicted_bytes": predicted}
        if predicted > settings.budget_bytes:
            base["status"] = f"over budget ({predicted / GIB:.1f} GiB predicted > {settings.budget_gb:g} GiB)"
        else:
            log(f"[scaling] S={s}: full-matrix baseline (predicted {predicted / GIB:.2f} GiB)")
            m = settings.measure(settings.probe(s, (h, w), "baseline"), model)
            base.update(status="ran", **_over_plain(m, plain))
        row["baseline"] = base
        rows.append(row)

    frames = [r["frames"] for r in rows]
    slopes: dict[str, float | None] = {
        f"ours_Q{q}": _loglog_slope(frames, [r["ours"][str(q)].get("extra_over_plain_bytes") for r in rows])
        for q in settings.scaling_queries
    }
    slopes["baseline"] = _loglog_slope(frames, [r["baseline"].get("extra_over_plain_bytes") for r in rows])
    over = first_frames_over_budget(model_layout(model, 1, h, w), heads, depth, settings.budget_bytes)
    return {
        "model": settings.model,
        "size": [h, w],
        "blocks": depth,
        "heads": heads,
        "kinds": list(KINDS),
        "dtype": settings.dtype,
        "budget_bytes": settings.budget_bytes,
        "baseline_over_budget_from_frames": over,
        "loglog_slopes": slopes,
        "rows": rows,
    }


def _over_plain(m: dict[str, Any], plain: dict[str, Any]) -> dict[str, Any]:
    return {
        "time_s": m["time_s"],
        "time_ratio_one_run": _ratio(m["time_s"], plain["time_s"]),
        "peak_bytes": m["peak_bytes"],
        "extra_bytes": m["extra_bytes"],
        "extra_over_plain_bytes": m["extra_bytes"] - plain["extra_bytes"],
        "stored_bytes": m["stored_bytes"],
    }
