"""Shared pieces of the benchmarks: inputs, models, timing and memory measurement, machine info.

Memory (see README.md, "How memory is measured"):

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, in the benchmark
  process. ``peak`` is everything torch holds on the device at the peak (weights, input,
  activations, results); ``extra`` is the growth over what was allocated before the call.
- CPU: torch has no CPU allocator statistics, and tracemalloc does not see torch's allocations,
  so each configuration runs in a fresh child process (``python -m benchmarks.probe``) which
  fixes glibc's mmap threshold at 64 KiB (``mallopt``: every tensor-sized block is mapped on
  allocation and unmapped on free, so RSS follows the live tensors), loads the model, builds the
  input, runs the call once to warm up, frees it, returns freed heap to the OS (``malloc_trim``),
  resets the kernel's peak-RSS mark (``/proc/self/clear_refs``) and then runs the call once more:
  ``extra`` = peak RSS (``VmHWM``) minus RSS just before the call.
  ``peak`` = model weights + input bytes + ``extra``, the same quantity the CUDA number counts
  (the interpreter and libraries are left out, as the GPU counter leaves them out).
  Without ``clear_refs`` (non-Linux) the warm-up is skipped and ``ru_maxrss`` is used.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib.metadata as md
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vggt_attn_rerun.core.capture import capture
from vggt_attn_rerun.core.introspect import KINDS, model_layout
from vggt_attn_rerun.core.tokens import Query, TokenLayout

REPO_ROOT = Path(__file__).resolve().parent.parent
DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
GIB = 2**30


# --------------------------------------------------------------------------------------------
# Inputs, queries and models
# --------------------------------------------------------------------------------------------


def make_images(frames: int, height: int, width: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """``[S, 3, H, W]`` in [0, 1]: a textured synthetic scene seen from a sliding camera."""
    from vggt_attn_rerun.testing import synthetic_scene

    pixels = synthetic_scene(frames, height, width, seed=1)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255).contiguous().to(device)


def synthetic_predictions(num_frames: int, size: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """VGGT's predictions for ``num_frames`` square views of ``size`` pixels: cameras stepping
    sideways, a wall at depth 2 with random relief, its point map and random confidences."""
    from vggt_attn_rerun.core.geometry import pose_encoding_to_cameras, unproject_depth

    pose = torch.zeros(1, num_frames, 9)
    pose[..., 0] = -0.2 * torch.arange(num_frames)
    pose[..., 6] = 1.0  # identity rotation (quaternion xyzw)
    pose[..., 7:] = 1.0  # fov
    extr, intr = pose_encoding_to_cameras(pose, (size, size))
    depth = 2 + 0.1 * torch.rand(1, num_frames, size, size, 1, generator=g)
    points = unproject_depth(depth[0, ..., 0].numpy(), extr[0].numpy(), intr[0].numpy())
    conf = 1 + torch.rand(1, num_frames, size, size, generator=g)
    predictions = {"pose_enc": pose, "depth": depth, "depth_conf": conf,
                   "world_points": torch.from_numpy(points)[None], "world_points_conf": conf}  # fmt: skip
    return predictions


def spread_queries(layout: TokenLayout, count: int) -> list[Query]:
    """``count`` distinct patch queries spread evenly over all frames (special tokens if patches run out)."""
    patches = layout.num_frames * layout.num_patches
    if count <= patches:
        picks = np.unique(np.linspace(0, patches - 1, count).round().astype(int))
        return [Query(int(i) // layout.num_patches, layout.patch_start + int(i) % layout.num_patches) for i in picks]
    count = min(count, layout.num_tokens)
    return [Query.from_token(layout, int(t)) for t in np.linspace(0, layout.num_tokens - 1, count).round()]


def load_bench_model(spec: str, device: str) -> nn.Module:
    """``tiny`` or ``random`` (VGGT-1B), fp32 weights (autocast sets the compute dtype), eval mode."""
    from vggt_attn_rerun.core.loading import load_model

    return load_model(spec, device=device, dtype=torch.float32)


def model_bytes(model: nn.Module) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def rows_bytes(layout: TokenLayout, num_heads: int, num_blocks: int, queries: int, kinds: Sequence[str] = KINDS) -> int:
    """Exact bytes of the fp32 rows ``capture`` stores: ``[L, Q, H, S, P]`` per kind."""
    return len(kinds) * num_blocks * queries * num_heads * layout.num_tokens * 4


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def plain_forward(model: nn.Module, images: torch.Tensor, autocast_dtype: torch.dtype | None = None) -> Any:
    """The forward users run without capture (same no_grad/autocast as ``capture``)."""
    with torch.no_grad(), autocast_context(images.device, autocast_dtype):
        return model(images)


def make_call(
    mode: str,
    model: nn.Module,
    images: torch.Tensor,
    queries: Sequence[Query],
    autocast_dtype: torch.dtype | None,
) -> Callable[[], tuple[Any, int]]:
    """A call returning (what it keeps, bytes of attention it stores) for mode plain / ours / baseline."""
    if mode == "plain":
        return lambda: (plain_forward(model, images, autocast_dtype), 0)
    if mode == "ours":

        def ours() -> tuple[Any, int]:
            res = capture(model, images, list(queries), kinds=KINDS, autocast_dtype=autocast_dtype)
            return res, sum(t.numel() * t.element_size() for t in res.rows.probs.values())

        return ours
    if mode == "baseline":
        from .baseline import FullMatrixHooks

        def baseline() -> tuple[Any, int]:
            with FullMatrixHooks(model, kinds=KINDS) as hooks:
                preds = plain_forward(model, images, autocast_dtype)
            return (preds, dict(hooks.maps)), hooks.nbytes()

        return baseline
    raise ValueError(f"unknown mode {mode!r}")


# --------------------------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------------------------


def rotated(names: Sequence[str], round_index: int) -> list[str]:
    """The order of round ``round_index``: every call once, starting one further each round, so that
    noise from other jobs hits all of them and none always runs first."""
    k = round_index % len(names)
    return [*names[k:], *names[:k]]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _proc_status_kb("VmHWM") is not None
    except OSError:
        return False


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _fixed_mmap_threshold() -> bool:
    """Make glibc serve every allocation of 64 KiB or more by its own mmap, returned on free.

    By default glibc raises its mmap threshold as large blocks are freed (up to 32 MiB) and then
    serves them from heaps that keep freed pages resident, so the peak RSS of a call depends on
    what earlier calls left behind (+-10 MiB run to run on the tiny model). With a fixed threshold
    the RSS follows the live tensors: repeated runs agree within a few hundred KiB.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 64 * 1024)) and bool(libc.mallopt(m_trim_threshold, 0))
    except (OSError, AttributeError):
        return False


def _free() -> None:
    gc.collect()
    _malloc_trim()


class MemoryMeter:
    """Peak memory growth of one call on ``device`` (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = ""
        self.before = 0

    def can_reset(self) -> bool:
        return self.device.type == "cuda" or _reset_peak_rss()

    def start(self) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return
        _free()
        if _reset_peak_rss():
            self.before = (_proc_status_kb("VmRSS") or 0) * 1024
            self.method = "peak RSS (VmHWM after clear_refs)"
        else:
            self.before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.method = "ru_maxrss growth"

    def stop(self) -> dict[str, int]:
        if self.device.type == "cuda":
            sync(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            return {"extra_bytes": max(0, peak - self.before), "device_peak_bytes": peak}
        hwm = _proc_status_kb("VmHWM")
        if self.method.startswith("peak RSS") and hwm is not None:
            peak = hwm * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {
            "extra_bytes": max(0, peak - self.before),
            "rss_before_bytes": self.before,
            "rss_peak_bytes": peak,
        }


@dataclass
class ProbeConfig:
    """One memory measurement: a model, an input size and a call (plain / ours / baseline)."""

    model: str
    device: str
    frames: int
    height: int
    width: int
    mode: str
    queries: int = 0
    dtype: str = "float32"
    warmup: bool = True


def probe(cfg: ProbeConfig, model: nn.Module | None = None) -> dict[str, Any]:
    """Measure one configuration in this process (the child of ``measure_memory`` on CPU)."""
    device = torch.device(cfg.device)
    fixed = device.type == "cpu" and _fixed_mmap_threshold()
    if model is None:
        model = load_bench_model(cfg.model, cfg.device)
    images = make_images(cfg.frames, cfg.height, cfg.width, device)
    layout = model_layout(model, cfg.frames, cfg.height, cfg.width)
    queries = spread_queries(layout, cfg.queries) if cfg.mode == "ours" else []
    call = make_call(cfg.mode, model, images, queries, DTYPES[cfg.dtype])
    meter = MemoryMeter(device)
    warmed = cfg.warmup and meter.can_reset()
    if warmed:
        kept = call()
        del kept
    meter.start()
    if not warmed:
        meter.method += ", no warm-up call"
    t0 = time.perf_counter()
    kept, stored = call()
    sync(device)
    seconds = time.perf_counter() - t0
    mem = meter.stop()
    del kept
    if fixed:
        meter.method += ", glibc mmap threshold fixed at 64 KiB"
    weights, inputs = model_bytes(model), images.numel() * images.element_size()
    peak = mem["device_peak_bytes"] if device.type == "cuda" else weights + inputs + mem["extra_bytes"]
    return {
        **asdict(cfg),
        "queries": len(queries),
        "tokens": layout.num_tokens,
        "time_s": seconds,
        "stored_bytes": stored,
        "weights_bytes": weights,
        "input_bytes": inputs,
        "peak_bytes": peak,
        "memory_method": meter.method,
        **mem,
    }


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _probe_dict(cfg: dict[str, Any]) -> dict[str, Any]:
    with warnings.catch_warnings():  # vggt's deprecated torch.cuda.amp call, once per child
        warnings.simplefilter("ignore", FutureWarning)
        return probe(ProbeConfig(**cfg))


_POOL_CONTEXT: Any = None


def _fresh_process_context() -> Any:
    """A forkserver that has imported torch and the project once: every child forked from it is a
    fresh process (own heap, own peak RSS) that starts in milliseconds instead of seconds."""
    global _POOL_CONTEXT
    if _POOL_CONTEXT is None:
        import multiprocessing

        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["benchmarks.common"])
        _POOL_CONTEXT = ctx
    return _POOL_CONTEXT


def measure_memory(cfg: ProbeConfig, model: nn.Module | None = None, isolate: bool = True) -> dict[str, Any]:
    """Measure ``cfg``: in a fresh child process on CPU when ``isolate``, else here (CUDA, smoke tests)."""
    if cfg.device.startswith("cuda") or not isolate:
        result = probe(cfg, model)
        _free()
        if not cfg.device.startswith("cuda"):
            result["memory_method"] += ", in the benchmark process"
        return result
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    try:
        with ProcessPoolExecutor(1, mp_context=_fresh_process_context(), max_tasks_per_child=1) as pool:
            result = pool.submit(_probe_dict, asdict(cfg)).result()
    except (ValueError, BrokenProcessPool):
        # No forkserver here, or its child could not start (e.g. __main__ read from stdin):
        # a new interpreter per configuration.
        result = _probe_subprocess(cfg)
    result["memory_method"] += ", one fresh child process per configuration"
    return result


def _probe_subprocess(cfg: ProbeConfig) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.probe", json.dumps(asdict(cfg))],
        cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"memory probe {asdict(cfg)} failed (exit {proc.returncode}): " + " | ".join(tail))
    return json.loads(lines[-1])


# --------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _ram_bytes() -> int | None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


def machine_info(device: str) -> dict[str, Any]:
    """What the numbers were measured on."""
    dev = torch.device(device)
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_bytes": _ram_bytes(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": str(dev),
        "device_name": "CPU",
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    with contextlib.suppress(ImportError):
        import rerun

        info["rerun_sdk"] = rerun.__version__
    with contextlib.suppress(md.PackageNotFoundError):
        info["vggt"] = md.version("vggt")
    if dev.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(dev)
        info.update(
            device_name=props.name,
            device_memory_bytes=props.total_memory,
            cuda=torch.version.cuda,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            cudnn=torch.backends.cudnn.version(),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            **_nvidia_smi(),
        )
    return info


def _nvidia_smi() -> dict[str, str]:
    query = "name,driver_version,memory.total"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = (
            subprocess.run(
                ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            )
            .stdout.strip()
            .splitlines()
        )
        if out:
            return dict(zip(("smi_name", "driver", "smi_memory"), (v.strip() for v in out[0].split(",")), strict=False))
    return {}
