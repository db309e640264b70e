"""Run the CLI once, unchanged, and record the memory estimate it computed and the peak it reached.

    python -m benchmarks.gpu_cli_child OUT.json -- CLI ARGS...

Step 5 of the GPU check runs this in a fresh process, so that the peak is the CLI's alone.
``benchmarks.e2e_driver`` runs the CLI and splits its wall time; here, on top, the
``estimate_memory`` the CLI calls before the forward is wrapped to keep its result (the CLI
prints it only when the run comes close to the memory available), and at the end the peak is
read: ``torch.cuda.max_memory_allocated`` when CUDA was used (weights, input, activations,
results), else the growth of the process's peak RSS (``VmHWM``) over its RSS once torch, rerun and
the package are imported (what the estimate counts: weights, forward, results).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any


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


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out, cli_args = Path(args[0]), args[args.index("--") + 1 :]
    import vggt_attn_rerun.core.resources as resources
    from benchmarks import e2e_driver  # first: its clock starts at its import

    estimates: list[Any] = []
    original = resources.estimate_memory

    def estimate_memory(*a: Any, **k: Any) -> Any:
        estimate = original(*a, **k)
        estimates.append(estimate)
        return estimate

    resources.estimate_memory = estimate_memory  # the CLI imports it from the module when it checks
    rss_after_imports = _status_bytes("VmRSS")
    timings = out.with_name(out.stem + "_timings.json")
    code = e2e_driver.main([str(timings), "--", *cli_args])
    report: dict[str, Any] = {"exit_code": code, **_peak(rss_after_imports)}
    if estimates:
        est = estimates[-1]
        report["estimate"] = asdict(est) | {"total": est.total, "transient": est.transient}
    if timings.exists():
        report["timings"] = json.loads(timings.read_text())
    out.write_text(json.dumps(report, indent=2))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
