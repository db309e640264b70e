"""The four benchmarks (capture overhead, scaling in S, recording, end to end).

1. ``overhead``: plain forward vs forward with capture (all blocks x heads x kinds), Q queries.
2. ``scaling``: extra memory over a plain forward vs S, ours against the full-matrix baseline.
3. ``recording``: time to log and .rrd size per frame, split into images, point clouds, attention.
4. ``end_to_end``: the CLI, wall time split into model load, forward and logging.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vggt_attn_rerun.core.capture import capture
from vggt_attn_rerun.core.introspect import KINDS, model_heads, model_layout

from .baseline import baseline_bytes, first_frames_over_budget
from .common import (
    DTYPES,
    GIB,
    REPO_ROOT,
    ProbeConfig,
    child_env,
    make_call,
    make_images,
    measure_memory,
    median,
    model_depth,
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


def _host_limit_bytes() -> int:
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


def overhead(settings: Settings, model: nn.Module) -> dict[str, Any]:
    """Time (interleaved repeats, in this process) and peak memory (per configuration) of capture,
    and of the full-matrix baseline for comparison."""
    log, device = settings.log, torch.device(settings.device)
    (h, w), s = settings.size, settings.frames
    images = make_images(s, h, w, device)
    layout = model_layout(model, s, h, w)
    heads, depth = model_heads(model), model_depth(model)
    host_limit = _host_limit_bytes()

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
    calls = {
        name: make_call(mode, model, images, spread_queries(layout, q) if mode == "ours" else [], settings.autocast)
        for name, (mode, q) in configs.items()
    }
    names = list(calls)
    log(f"[overhead] {s} frames {h}x{w} ({layout.num_tokens} tokens), {settings.repeats} interleaved repeats")
    for name in names:  # warm-up
        kept = calls[name]()
        del kept
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(settings.repeats):
        k = r % len(names)
        order = names[k:] + names[:k]  # rotate, so that no configuration always runs first
        for name in order:
            sync(device)
            t0 = time.perf_counter()
            kept = calls[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
            del kept

    mem: dict[str, dict[str, Any]] = {}
    for name, (mode, q) in configs.items():
        log(f"[overhead] memory of {name}")
        mem[name] = settings.measure(settings.probe(s, (h, w), mode, q), model)

    plain_t, plain_m = median(times["plain"]), mem["plain"]
    rows = []
    for name, (mode, q) in configs.items():
        if mode == "plain":
            continue
        t = median(times[name])
        paired = [c / p for c, p in zip(times[name], times["plain"], strict=True)]
        m = mem[name]
        rows.append(
            {
                "mode": mode,
                "queries": q if mode == "ours" else None,
                "queries_used": m["queries"] if mode == "ours" else None,  # capped at the token count
                "time_s": t,
                "times_s": times[name],
                "time_ratio": median(paired),
                "time_ratio_of_medians": _ratio(t, plain_t),
                "time_ratio_of_minimums": _ratio(min(times[name]), min(times["plain"])),
                "peak_bytes": m["peak_bytes"],
                "memory_ratio": _ratio(m["peak_bytes"], plain_m["peak_bytes"]),
                "extra_bytes": m["extra_bytes"],
                "extra_ratio": _ratio(m["extra_bytes"], plain_m["extra_bytes"]),
                "stored_bytes": m["stored_bytes"],
            }
        )
    rows += skipped

    targets = []
    at = next((r for r in rows if r["mode"] == "ours" and r["queries"] == TARGET_QUERIES), None)
    if at is not None and "skipped" not in at:
        for what, key, limit in (("time", "time_ratio", TIME_TARGET), ("memory", "memory_ratio", MEMORY_TARGET)):
            value = at[key]
            targets.append(
                {
                    "name": f"{what} ratio at Q={TARGET_QUERIES}",
                    "value": value,
                    "limit": limit,
                    "pass": value is not None and value <= limit,
                }
            )
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
            "time_s": plain_t,
            "times_s": times["plain"],
            "time_s_min": min(times["plain"]),
            "peak_bytes": plain_m["peak_bytes"],
            "extra_bytes": plain_m["extra_bytes"],
            "weights_bytes": plain_m["weights_bytes"],
            "input_bytes": plain_m["input_bytes"],
        },
        "rows": rows,
        "targets": targets,
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
    host_limit = _host_limit_bytes()
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


# --------------------------------------------------------------------------------------------
# 3. Recording: time to log and .rrd size, split by part
# --------------------------------------------------------------------------------------------

PARTS = ("images", "point_clouds", "attention", "other")
_ATTENTION_TIMELINES = {"block", "head", "layer"}
_ATTENTION_WORDS = ("attn", "attention")
_ATTENTION_ARCHETYPES = ("Tensor", "SegmentationImage")
_IMAGE_ARCHETYPES = ("Image", "EncodedImage", "DepthImage", "EncodedDepthImage")


def chunk_part(entity_path: str, timelines: Sequence[str], archetypes: set[str]) -> str:
    """Which part of a recording a chunk belongs to.

    attention: logged on a block/head timeline, under an entity path naming attention, or a
    Tensor/SegmentationImage (maps); images: Image/EncodedImage/DepthImage; point_clouds: Points3D;
    other: cameras, markers, text, ...
    """
    names = {a.removeprefix("rerun.archetypes.") for a in archetypes}
    if (
        _ATTENTION_TIMELINES & set(timelines)
        or any(w in entity_path.lower() for w in _ATTENTION_WORDS)
        or names & set(_ATTENTION_ARCHETYPES)
    ):
        return "attention"
    if names & set(_IMAGE_ARCHETYPES):
        return "images"
    if "Points3D" in names:
        return "point_clouds"
    return "other"


def rrd_parts(path: Path) -> dict[str, dict[str, int]]:
    """Bytes of each part of an .rrd: ``file_bytes`` (its chunks written alone, compressed as Rerun
    writes them) and ``arrow_bytes`` (uncompressed)."""
    import rerun.chunk as rc

    buckets: dict[str, list[Any]] = {p: [] for p in PARTS}
    arrow = dict.fromkeys(PARTS, 0)
    for chunk in rc.RrdReader(path).stream():
        batch = chunk.to_record_batch()
        archetypes = {(f.metadata or {}).get(b"rerun:archetype", b"").decode() for f in batch.schema if f.metadata} - {
            ""
        }
        part = chunk_part(str(chunk.entity_path), list(chunk.timeline_names), archetypes)
        buckets[part].append(chunk)
        arrow[part] += batch.nbytes
    out: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for part, chunks in buckets.items():
            size = 0
            if chunks:
                p = Path(tmp) / f"{part}.rrd"
                rc.LazyChunkStream.from_iter(chunks).write_rrd(p, application_id="bench", recording_id=part)
                size = p.stat().st_size
            out[part] = {"file_bytes": size, "arrow_bytes": arrow[part], "chunks": len(chunks)}
    return out


def _work_dir(settings: Settings) -> tuple[Path, Any]:
    """The folder for .rrd files and photos: settings.work_dir, or a temporary one removed afterwards."""
    if settings.work_dir:
        Path(settings.work_dir).mkdir(parents=True, exist_ok=True)
        return Path(settings.work_dir), None
    tmp = tempfile.TemporaryDirectory(prefix="vggt-attn-bench-")
    return Path(tmp.name), tmp


def recording(settings: Settings, model: nn.Module) -> dict[str, Any]:
    """Log all blocks and heads, frame and global, for S frames; time it and split the .rrd by part."""
    work, tmp = _work_dir(settings)
    try:
        return _recording(settings, model, work) | {"work_dir": settings.work_dir}
    finally:
        if tmp is not None:
            tmp.cleanup()


def _recording(settings: Settings, model: nn.Module, work: Path) -> dict[str, Any]:
    import rerun as rr

    from vggt_attn_rerun.core.images import images_from_tensor
    from vggt_attn_rerun.viz.log_run import log_run
    from vggt_attn_rerun.viz.options import RecordingOptions

    log, device = settings.log, torch.device(settings.device)
    h, w = settings.recording_size
    rows = []
    for s in settings.recording_frames:
        images = make_images(s, h, w, device)
        loaded = images_from_tensor(images.cpu())
        layout = model_layout(model, s, h, w)
        queries = spread_queries(layout, settings.recording_queries)
        options = RecordingOptions(kinds=KINDS)
        path = work / f"recording_S{s}.rrd"
        rec = rr.RecordingStream("vggt_attn_rerun_bench", recording_id=f"bench-S{s}")
        rec.save(path)
        log(f"[recording] S={s}: {len(queries)} queries, all blocks and heads, frame + global -> {path}")
        result = capture(model, images, queries, kinds=KINDS, autocast_dtype=settings.autocast)
        t0 = time.perf_counter()
        log_run(rec, result, loaded, options)
        rec.flush()
        seconds = time.perf_counter() - t0
        rec.disconnect()
        size = path.stat().st_size
        parts = rrd_parts(path)
        named = sum(parts[p]["file_bytes"] for p in PARTS if p != "other")
        parts["other"]["file_bytes"] = max(0, size - named)  # also blueprint, headers
        rows.append(
            {
                "frames": s,
                "tokens": layout.num_tokens,
                "queries": len(queries),
                "log_s": seconds,
                "log_s_per_frame": seconds / s,
                "rrd_bytes": size,
                "rrd_bytes_per_frame": size / s,
                "parts": parts,
            }
        )
    return {
        "model": settings.model,
        "size": [h, w],
        "blocks": model_depth(model),
        "heads": model_heads(model),
        "kinds": list(KINDS),
        "rows": rows,
    }


# --------------------------------------------------------------------------------------------
# 4. End to end: the CLI, split into load / forward / logging
# --------------------------------------------------------------------------------------------


def _write_photos(folder: Path, frames: int, size: int) -> list[Path]:
    from PIL import Image

    from vggt_attn_rerun.testing import synthetic_scene

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, pixels in enumerate(synthetic_scene(frames, size, size, seed=1)):
        p = folder / f"view_{i:03d}.png"
        Image.fromarray(pixels).save(p)
        paths.append(p)
    return paths


def cli_argv(template: str, photos: Sequence[Path], **fields: Any) -> list[str]:
    """The CLI's argv from ``template``: ``{images}`` becomes the photo paths, other fields are filled in."""
    out: list[str] = []
    for token in shlex.split(template):
        if token == "{images}":
            out.extend(str(p) for p in photos)
        else:
            out.append(token.format(**fields))
    return out


def _plain_text(text: str) -> str:
    """Without ANSI colour codes (rerun's log lines carry them)."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def end_to_end(settings: Settings) -> dict[str, Any]:
    """Run the CLI in a child process per row; the driver splits its wall time (see e2e_driver.py)."""
    work, tmp = _work_dir(settings)
    try:
        return _end_to_end(settings, work)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _end_to_end(settings: Settings, work: Path) -> dict[str, Any]:
    log = settings.log
    rows = []
    for spec, frames, size in settings.e2e:
        photos = _write_photos(work / f"photos_{frames}x{size}", frames, size)
        rrd = work / f"e2e_{spec}_S{frames}.rrd"
        argv = cli_argv(settings.cli_args, photos, model=spec, device=settings.device, dtype=settings.dtype,
                        image_size=size, rrd=rrd)  # fmt: skip
        timings = work / f"e2e_{spec}_S{frames}.json"
        timings.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "benchmarks.e2e_driver", str(timings), "--", *argv]
        log(f"[e2e] {spec}: {frames} photos of {size}x{size}: vggt-attn-rerun {settings.cli_args}")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        row: dict[str, Any] = {
            "model": spec,
            "frames": frames,
            "image_size": size,
            "argv": argv[len(photos) :],
        }
        if proc.returncode != 0 or not timings.exists():
            tail = " | ".join(_plain_text(proc.stderr or proc.stdout).strip().splitlines()[-3:])
            row["skipped"] = f"the CLI exited with {proc.returncode}: {tail}"
        else:
            t = json.loads(timings.read_text())
            known = t["import_s"] + t["load_s"] + t["forward_s"] + t["logging_s"]
            row.update(
                wall_s=wall, import_s=t["import_s"], load_s=t["load_s"], forward_s=t["forward_s"],
                logging_s=t["logging_s"], log_run_s=t["log_run_s"], other_s=max(0.0, wall - known),
                forward_calls=t["forward_calls"], rrd_bytes=rrd.stat().st_size if rrd.exists() else None,
            )  # fmt: skip
        rows.append(row)
    return {"cli_args": settings.cli_args, "work_dir": settings.work_dir, "rows": rows}
