"""Markdown tables from a results dict: ``python -m benchmarks.report RESULTS.json`` reprints them."""

from __future__ import annotations

import json
import sys
from typing import Any

from .rrd_suites import PARTS
from .suites import TARGET_QUERIES


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    sign, n = ("-" if n < 0 else ""), abs(n)
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{sign}{n / scale:.{2 if scale == 2**30 else 1}f} {unit}"
    return f"{sign}{n:.0f} B"


def fmt_s(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def fmt_ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def _machine(res: dict[str, Any]) -> list[str]:
    m = res["machine"]
    load = m.get("load_average") or []
    end = res.get("load_average_end") or []
    cores = f"{m['cores']}" + (f" ({m['cores_usable']} usable)" if m.get("cores_usable") != m["cores"] else "")
    device = (
        m["device"]
        if m["device_name"] == "CPU"
        else f"{m['device']} ({m['device_name']}, {fmt_bytes(m.get('device_memory_bytes'))})"
    )
    rows = [
        [
            m["cpu"],
            cores,
            fmt_bytes(m.get("ram_bytes")),
            m["torch"],
            str(m["torch_threads"]),
            device,
            m.get("rerun_sdk", "–"),
            " / ".join(f"{x:.2f}" for x in load[:1] + end[:1]) or "–",
        ]
    ]
    lines = ["## Machine", ""]
    lines += _table(["CPU", "cores", "RAM", "torch", "threads", "device", "rerun-sdk", "load avg (start / end)"], rows)
    if res.get("note"):
        lines += ["", f"Note: {res['note']}"]
    return lines


def _overhead(o: dict[str, Any]) -> list[str]:
    if "skipped" in o:
        return ["## 1. Capture overhead", "", f"Skipped: {o['skipped']}"]
    h, w = o["size"]
    p = o["plain"]
    lines = [
        "## 1. Capture overhead",
        "",
        f"{o['model']} model, {o['frames']} frames of {h}x{w} ({o['tokens']} tokens), capture of all "
        f"{o['blocks']} blocks x {o['heads']} heads x frame + global, compute dtype {o['dtype']}. "
        f"Time: {o['repeats']} rounds in one process, each running every configuration once (order rotated "
        "each round); 'time ratio' = median over rounds of (time / plain time in the same round), so that "
        "noise from other jobs hits both sides; 'time (s)' is the median. The full-matrix baseline "
        "(benchmarks/baseline.py, see 2.) is shown for comparison. Memory: " + _memory_caption(o["memory_method"]),
        "",
    ]
    rows = [
        ["plain forward", "–", fmt_s(p["time_s"]), "1.000", fmt_bytes(p["peak_bytes"]), "1.000",
         fmt_bytes(p["extra_bytes"]), "–"],
    ]  # fmt: skip
    for r in o["rows"]:
        name = "capture (ours)" if r["mode"] == "ours" else "full-matrix baseline"
        q = "–" if r["queries"] is None else str(r["queries"])
        if "skipped" in r:
            rows.append([name, q, f"skipped: {r['skipped']}"] + [""] * 5)
            continue
        rows.append(
            [name, q, fmt_s(r["time_s"]), fmt_ratio(r["time_ratio"]), fmt_bytes(r["peak_bytes"]),
             fmt_ratio(r["memory_ratio"]), fmt_bytes(r["extra_bytes"]), fmt_bytes(r["stored_bytes"])]
        )  # fmt: skip
    header = ["", "queries Q", "time (s)", "time ratio", "peak memory", "memory ratio", "extra during call",
              "stored attention"]  # fmt: skip
    lines += _table(header, rows)
    lines += ["", f"Weights {fmt_bytes(p['weights_bytes'])}, input {fmt_bytes(p['input_bytes'])}.", ""]
    lines += [
        f"- {t['name']}: {fmt_ratio(t['value'])} (target <= {t['limit']}) **{'PASS' if t['pass'] else 'FAIL'}**"
        for t in o["targets"]
    ]
    return lines


def _memory_caption(method: str) -> str:
    if method.startswith("torch.cuda"):
        return (
            "torch.cuda.max_memory_allocated after reset_peak_memory_stats (weights, input, activations and "
            "results on the device; captured rows are stored on the host, see 'stored rows'); "
            "'extra during call' is the growth over what was allocated before the call."
        )
    return (
        f"{method}. torch has no CPU allocator statistics and tracemalloc does not see its allocations; "
        "the peak RSS of a fresh process is what a user's machine must have. Per configuration: fix glibc's "
        "mmap threshold (tensor-sized blocks are unmapped on free, so RSS follows live tensors; repeated "
        "runs agree within ~0.5 MiB instead of +-10 MiB), load, warm-up call (unless said otherwise above), "
        "free + malloc_trim, reset the "
        "kernel's peak-RSS mark, measured call. 'extra during call' = peak RSS - RSS before it; "
        "'peak memory' = weights + input + extra, the quantity torch.cuda.max_memory_allocated counts on a "
        "GPU (the interpreter and libraries are left out)."
    )


def _scaling(sc: dict[str, Any]) -> list[str]:
    if "skipped" in sc:
        return ["## 2. Scaling in S", "", f"Skipped: {sc['skipped']}"]
    h, w = sc["size"]
    qs = list(sc["rows"][0]["ours"]) if sc["rows"] else []
    lines = [
        "## 2. Scaling in S: ours vs a full-matrix hook script",
        "",
        f"{sc['model']} model at {h}x{w}, all {sc['blocks']} blocks x {sc['heads']} heads x frame + global. "
        "'extra' = extra memory over a plain forward (peak growth of the call minus that of the plain "
        "forward, measured as in 1.); 'stored' = exact bytes of attention kept (ours: rows [L, Q, H, N]; "
        "baseline: [B, H, N, N] per block). Baseline = benchmarks/baseline.py: forward pre-hooks with kwargs "
        "on every attention module that recompute qkv, q/k norms and RoPE and keep softmax(QK^T). "
        f"Runs are skipped when the predicted bytes exceed the budget of {fmt_bytes(sc['budget_bytes'])} "
        "(baseline) or half the free RAM (ours), checked before running.",
        "",
    ]
    header = ["S", "tokens N", "plain peak"]
    for q in qs:
        header += [f"ours Q={q} extra", f"ours Q={q} stored"]
    header += ["baseline extra", "baseline stored", "baseline predicted"]
    rows = []
    for r in sc["rows"]:
        row = [str(r["frames"]), str(r["tokens"]), fmt_bytes(r["plain"]["peak_bytes"])]
        for q in qs:
            e = r["ours"][q]
            row += (
                [fmt_bytes(e.get("extra_over_plain_bytes")), fmt_bytes(e.get("stored_bytes"))]
                if e["status"] == "ran"
                else [e["status"], fmt_bytes(e["predicted_bytes"]) + " (predicted)"]
            )
        b = r["baseline"]
        if b["status"] == "ran":
            row += [
                fmt_bytes(b["extra_over_plain_bytes"]),
                fmt_bytes(b["stored_bytes"]),
                fmt_bytes(b["predicted_bytes"]),
            ]
        else:
            row += [b["status"], "–", fmt_bytes(b["predicted_bytes"])]
        rows.append(row)
    lines += _table(header, rows)
    over = sc["baseline_over_budget_from_frames"]
    slopes = ", ".join(
        f"{k.replace('_', ' ')} {v:.2f}" if v is not None else f"{k.replace('_', ' ')} –"
        for k, v in sc["loglog_slopes"].items()
    )
    both = [r for r in sc["rows"] if r["baseline"]["status"] == "ran" and qs and r["ours"][qs[0]]["status"] == "ran"]
    if both:
        r = both[-1]
        ours, base = r["ours"][qs[0]]["stored_bytes"], r["baseline"]["stored_bytes"]
        lines += [
            "",
            f"- At S = {r['frames']} the baseline keeps {fmt_bytes(base)} of attention, ours at Q = {qs[0]} "
            f"{fmt_bytes(ours)} ({base / max(ours, 1):.0f}x less).",
        ]
    else:
        lines += [""]
    lines += [
        f"- The baseline no longer fits the {fmt_bytes(sc['budget_bytes'])} budget from **S = {over}** at "
        f"{h}x{w} (predicted)."
        if over
        else "- The baseline fits the budget at every S up to 100000.",
        f"- Growth exponent of the measured extra memory in S (log-log slope; 1 = linear, 2 = quadratic): {slopes}.",
    ]
    return lines


def _recording(rc: dict[str, Any]) -> list[str]:
    if "skipped" in rc:
        return ["## 3. Recording", "", f"Skipped: {rc['skipped']}"]
    h, w = rc["size"]
    lines = [
        "## 3. Recording",
        "",
        f"{rc['model']} model at {h}x{w}, all {rc['blocks']} blocks x {rc['heads']} heads, frame + global. "
        "Log time: the logging call plus flush to an .rrd file (forward excluded). Parts: the recording's "
        "chunks sorted by what they hold (attention: logged on the block/head timelines or under an "
        "attention entity; images: Image/EncodedImage/DepthImage; point clouds: Points3D; other: "
        "cameras, text, blueprint, headers), each part written alone as a compressed .rrd.",
        "",
    ]
    rows = []
    for r in rc["rows"]:
        parts = [fmt_bytes(r["parts"][p]["file_bytes"]) for p in PARTS]
        rows.append(
            [
                str(r["frames"]),
                str(r["tokens"]),
                str(r["queries"]),
                fmt_s(r["log_s"]),
                fmt_s(r["log_s_per_frame"]),
                fmt_bytes(r["rrd_bytes"]),
                fmt_bytes(r["rrd_bytes_per_frame"]),
                *parts,
            ]
        )
    return lines + _table(
        [
            "S",
            "tokens",
            "queries",
            "log (s)",
            "log / frame (s)",
            ".rrd",
            ".rrd / frame",
            *[p.replace("_", " ") for p in PARTS],
        ],
        rows,
    )


def _e2e(e: dict[str, Any]) -> list[str]:
    if "skipped" in e:
        return ["## 4. End to end (CLI)", "", f"Skipped: {e['skipped']}"]
    lines = [
        "## 4. End to end (CLI)",
        "",
        f"`vggt-attn-rerun {e['cli_args']}` in a child process (benchmarks/e2e_driver.py), photos "
        "already at the model size. Wall time of the process, split by timers: import = importing the CLI "
        "(torch, rerun); model load = core.loading.load_model; forward = the model's forward; logging = from the "
        "end of the forward until the CLI returns (recording.log_run, blueprint, writing the .rrd; the "
        "log_run column is the part in log_run); other = interpreter start, reading photos, checks.",
        "",
    ]
    rows = []
    for r in e["rows"]:
        size = f"{r['frames']} x {r['image_size']}²"
        if "skipped" in r:
            rows.append([r["model"], size, f"skipped: {r['skipped']}"] + [""] * 7)
            continue
        rows.append(
            [
                r["model"],
                size,
                fmt_s(r["wall_s"]),
                fmt_s(r["import_s"]),
                fmt_s(r["load_s"]),
                fmt_s(r["forward_s"]),
                fmt_s(r["logging_s"]),
                fmt_s(r["log_run_s"]),
                fmt_s(r["other_s"]),
                fmt_bytes(r.get("rrd_bytes")),
            ]  # fmt: skip
        )
    header = ["model", "photos", "wall (s)", "import", "model load", "forward", "logging", "of which log_run",
              "other", ".rrd"]  # fmt: skip
    return lines + _table(header, rows)


def markdown(res: dict[str, Any]) -> str:
    lines = [
        f"# VGGT attention capture benchmarks: {res['profile']} on {res['machine']['device']}",
        "",
        f"Measured {res['created']} with `{res['command']}`"
        + (" (CPU: absolute times only indicative; compare the ratios)." if res["machine"]["device"] == "cpu" else "."),
        "",
        *_machine(res),
    ]
    sections = {"overhead": _overhead, "scaling": _scaling, "recording": _recording, "e2e": _e2e}
    for key, render in sections.items():
        if key in res:
            lines += ["", *render(res[key])]
    return "\n".join(lines) + "\n"


def verdicts(res: dict[str, Any]) -> list[str]:
    """One PASS/FAIL line per target."""
    o = res.get("overhead", {})
    if "targets" not in o:
        return [f"targets at Q={TARGET_QUERIES}: not measured"]
    return [
        f"{'PASS' if t['pass'] else 'FAIL'}: {t['name']} = {fmt_ratio(t['value'])} (target <= {t['limit']})"
        for t in o["targets"]
    ]


__all__ = ["markdown", "verdicts"]


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        print(markdown(json.load(fh)))
