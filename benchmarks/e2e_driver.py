"""Run the CLI once and split its wall time: ``python -m benchmarks.e2e_driver OUT.json -- ARGS...``.

The CLI runs unchanged, in this process; timers are wrapped around what it calls:

- import: importing ``vggt_attn_rerun.cli`` (torch, rerun, ...);
- load: ``vggt_attn_rerun.core.loading.load_model`` (building or reading the model);
- forward: the loaded model's top-level forward calls (forward pre/post hooks);
- logging: from the end of the last forward until the CLI returns (logging, the blueprint and
  writing the .rrd); ``log_run_s`` is the part spent in ``vggt_attn_rerun.viz.log_run.log_run``.

The parent (``rrd_suites.end_to_end``) measures the process wall time; the rest is "other"
(interpreter start, reading photos, writing the file at exit, ...).
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
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


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out, cli_args = args[0], args[args.index("--") + 1 :] if "--" in args else args[1:]
    timers = _Timers()

    import vggt_attn_rerun.cli.main as cli
    import vggt_attn_rerun.core.loading as loading

    try:
        import vggt_attn_rerun.viz.log_run as recording
    except ImportError:
        recording = None
    import_s = time.perf_counter() - _T0

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

    if recording is not None and hasattr(recording, "log_run"):
        original_log = recording.log_run

        @functools.wraps(original_log)
        def log_run(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original_log(*a, **k)
            finally:
                timers.log_run_s += time.perf_counter() - t0
                timers.log_calls += 1

        _patch_everywhere(original_log, log_run)

    code: int | str | None = 0
    try:
        result = cli.main(cli_args)
        code = result if isinstance(result, int) else 0
    except SystemExit as e:
        code = e.code
    end = time.perf_counter()
    if code not in (0, None):
        print(f"e2e_driver: the CLI exited with {code}", file=sys.stderr)
        return code if isinstance(code, int) else 1
    with open(out, "w") as f:
        json.dump(
            {
                "import_s": import_s,
                "load_s": timers.load_s,
                "forward_s": timers.forward_s,
                "forward_calls": timers.forward_calls,
                "logging_s": end - (timers.last_forward_end or end),
                "log_run_s": timers.log_run_s,
                "log_run_calls": timers.log_calls,
                "cli_s": end - _T0,
            },
            f,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
