"""Run the CLI once, unchanged, in this process: ``python -m benchmarks.cli_child OUT.json -- ARGS...``.

Timers are wrapped around what the CLI calls, and ``OUT.json`` receives:

- ``timings``: ``import_s`` (importing ``vggt_attn_rerun.cli``: torch, rerun, ...), ``load_s``
  (``vggt_attn_rerun.core.loading.load_model``), ``forward_s`` (the loaded model's top-level forward
  calls, through forward pre/post hooks), ``logging_s`` (from the end of the last forward until the
  CLI returns: logging, the blueprint, writing the .rrd), ``log_run_s`` (the part of it spent in
  ``vggt_attn_rerun.viz.log_run.log_run``) and ``cli_s``;
- ``estimate``: the ``estimate_memory`` the CLI computed before the forward (it prints it only when
  the run comes close to the memory available);
- ``peak_bytes``: ``torch.cuda.max_memory_allocated`` when CUDA was used (weights, input,
  activations, results), else the growth of the process's peak RSS (``VmHWM``) over its RSS once
  torch, rerun and the package are imported (what the estimate counts);
- ``exit_code``.

The parent (``rrd_suites.run_cli``) measures the process's wall time; what the timers leave of it is
"other" (interpreter start, reading photos, writing the file at exit, ...).
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

_T0 = time.perf_counter()


class _Timers:
    def __init__(self) -> None:
        self.load_s = 0.0
        self.forward_s = 0.0
        self.forward_calls = 0
        self.log_run_s = 0.0
        self.log_calls = 0
        self.last_forward_end: float | None = None
        self._forward_t0 = 0.0
        self.device = None

    def _sync(self) -> None:
        import torch

        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def forward_pre(self, *_: Any) -> None:
        self._sync()
        self._forward_t0 = time.perf_counter()

    def forward_post(self, *_: Any) -> None:
        self._sync()
        self.last_forward_end = time.perf_counter()
        self.forward_s += self.last_forward_end - self._forward_t0
        self.forward_calls += 1


def _patch_everywhere(original: Callable, replacement: Callable) -> None:
    """Replace ``original`` in every loaded vggt_attn_rerun module (``from x import f`` copies too)."""
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "vggt_attn_rerun" or name.startswith("vggt_attn_rerun.")):
            continue
        for attr, value in list(vars(module).items()):
            if value is original:
                setattr(module, attr, replacement)


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _peak(rss_after_imports: int | None) -> dict[str, Any]:
    """The CLI's peak: on CUDA all torch allocated there; on CPU the peak RSS growth after the imports."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return {
            "peak_bytes": int(torch.cuda.max_memory_allocated()),
            "memory_method": "torch.cuda.max_memory_allocated",
        }
    hwm = _status_bytes("VmHWM")
    if hwm is None or rss_after_imports is None:
        return {"peak_bytes": None, "memory_method": "unavailable"}
    return {
        "peak_bytes": hwm - rss_after_imports,
        "vmhwm_bytes": hwm,
        "memory_method": "peak RSS (VmHWM) of the CLI process minus its RSS after the imports (torch, rerun, ...)",
    }


def _wrap_timed(original: Callable, on_done: Callable[[float], None]) -> None:
    @functools.wraps(original)
    def timed(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            on_done(time.perf_counter() - t0)

    _patch_everywhere(original, timed)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out, cli_args = Path(args[0]), args[args.index("--") + 1 :] if "--" in args else args[1:]
    timers = _Timers()

    import vggt_attn_rerun.cli.main as cli
    import vggt_attn_rerun.core.loading as loading
    import vggt_attn_rerun.core.resources as resources
    import vggt_attn_rerun.viz.log_run as recording

    import_s = time.perf_counter() - _T0
    rss_after_imports = _status_bytes("VmRSS")

    original_load = loading.load_model

    @functools.wraps(original_load)
    def load_model(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        model = original_load(*a, **k)
        timers.load_s += time.perf_counter() - t0
        timers.device = next(model.parameters()).device
        model.register_forward_pre_hook(timers.forward_pre)
        model.register_forward_hook(timers.forward_post)
        return model

    _patch_everywhere(original_load, load_model)

    def log_run_done(seconds: float) -> None:
        timers.log_run_s += seconds
        timers.log_calls += 1

    _wrap_timed(recording.log_run, log_run_done)

    estimates: list[Any] = []
    original_estimate = resources.estimate_memory

    def estimate_memory(*a: Any, **k: Any) -> Any:
        estimate = original_estimate(*a, **k)
        estimates.append(estimate)
        return estimate

    resources.estimate_memory = estimate_memory  # the CLI looks it up on the module when it checks

    code: int | str | None = 0
    try:
        result = cli.main(cli_args)
        code = result if isinstance(result, int) else 0
    except SystemExit as e:
        code = e.code
    end = time.perf_counter()
    exit_code = 0 if code is None else code if isinstance(code, int) else 1
    report: dict[str, Any] = {"exit_code": exit_code, **_peak(rss_after_imports)}
    if estimates:
        est = estimates[-1]
        report["estimate"] = asdict(est) | {"total": est.total, "transient": est.transient}
    report["timings"] = {
        "import_s": import_s,
        "load_s": timers.load_s,
        "forward_s": timers.forward_s,
        "forward_calls": timers.forward_calls,
        "logging_s": end - (timers.last_forward_end or end),
        "log_run_s": timers.log_run_s,
        "log_run_calls": timers.log_calls,
        "cli_s": end - _T0,
    }
    out.write_text(json.dumps(report, indent=2))
    if exit_code != 0:
        print(f"cli_child: the CLI exited with {code}", file=sys.stderr)
    return exit_code


if __name__ == "__main__":
    raise SystemExit(main())
