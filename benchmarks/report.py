"""Markdown tables from a results dict: ``python -m benchmarks.report RESULTS.json`` reprints them.

One writer for both profiles of ``benchmarks.run``: the suite (sections overhead, scaling,
recording, e2e) and the CUDA check (``--gpu-check``: steps, each with a status and its targets).
"""

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
        f"`vggt-attn-rerun {e['cli_args']}` in a child process (benchmarks/cli_child.py), photos "
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
    if "steps" in res:
        return check_markdown(res)
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


# --------------------------------------------------------------------------------------------
# The CUDA check (``run.py --gpu-check``): targets and report
# --------------------------------------------------------------------------------------------

EXACT_FP32 = 1e-6
OVERHEAD_LIMIT = 1.02


def _target(name: str, value: Any, limit: str, ok: bool | None) -> dict[str, Any]:
    return {"name": name, "value": value, "limit": limit, "pass": ok}


def _check_overhead_row(o: dict[str, Any]) -> dict[str, Any] | None:
    rows = o.get("rows") or []
    return next((r for r in rows if r["queries"] == TARGET_QUERIES), rows[-1] if rows else None)


def check_targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets against what the run measured (``pass`` None: a figure to state, no limit)."""
    steps, out = res.get("steps", {}), []
    for dtype, r in steps.get("exact", {}).get("dtypes", {}).items():
        err = r["max_abs_error"]
        if dtype == "float32":
            out.append(
                _target("fp32 rows vs recomputation, max abs error", err, f"<= {EXACT_FP32:g}", err <= EXACT_FP32)
            )
        else:
            out.append(_target(f"{dtype} rows vs recomputation, max abs error", err, "stated", None))
            if r.get("rows_vs_float32"):
                out.append(
                    _target(f"{dtype} rows vs fp32 rows, max abs", r["rows_vs_float32"]["max_abs"], "stated", None)
                )
        same = r["predictions_bit_identical"]
        out.append(_target(f"{dtype} predictions bit-identical with and without capture", same, "True", same))
    o = steps.get("overhead", {})
    row = _check_overhead_row(o)
    if row is not None:
        s = o["frames"]
        for what, key in (("time", "time_ratio"), ("memory", "memory_ratio")):
            v = row[key]
            ok = v is not None and v <= OVERHEAD_LIMIT
            out.append(_target(f"capture {what} ratio, S = {s}, Q = {row['queries']}", v, f"<= {OVERHEAD_LIMIT}", ok))
    sc = steps.get("scale", {})
    if sc.get("rows"):
        want = max(r["frames"] for r in sc["rows"])
        got = sc.get("largest_captured_frames")
        out.append(_target(f"S = {want} captured", got, f">= {want}", got is not None and got >= want))
    cli = steps.get("cli", {})
    if cli.get("estimate_over_peak") is not None:
        v = cli["estimate_over_peak"]
        out.append(_target("CLI memory estimate / measured peak", v, ">= 1 (the estimate errs high)", v >= 1))
    return out


def _check_value(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 else f"{v:.3f}"
    return str(v)


def _check_machine(res: dict[str, Any]) -> list[str]:
    m = res.get("machine", {})
    keys = (
        "device_name",
        "device_memory_bytes",
        "driver",
        "cuda",
        "cudnn",
        "capability",
        "torch",
        "python",
        "rerun_sdk",
        "vggt",
        "cpu",
        "cores",
        "ram_bytes",
        "load_average",
    )
    rows = [[k, fmt_bytes(m[k]) if k.endswith("bytes") else str(m[k])] for k in keys if m.get(k) is not None]
    return ["## Machine", "", *_table(["", ""], rows)]


def _check_exact(e: dict[str, Any]) -> list[str]:
    lines = [
        f"S = {e.get('frames')} at {e.get('size')}, blocks {e.get('blocks')}, {e.get('queries')} queries "
        "(patches and a camera token); rows recomputed from each module's input with its own qkv, "
        "q/k norms and RoPE with the aggregator's pos, softmax(q k^T / sqrt(D)) in fp32.",
        "",
    ]
    rows = []
    for dtype, r in e.get("dtypes", {}).items():
        vs = r.get("rows_vs_float32") or {}
        rows.append(
            [
                dtype,
                _check_value(r["max_abs_error"]),
                str(r["predictions_bit_identical"]),
                str(r["plain_forwards_bit_identical"]),
                _check_value(r["predictions_max_abs_difference"]),
                _check_value(vs.get("max_abs")),
                _check_value(vs.get("mean_abs")),
                str(all(b["pos_is_grid"] for b in r["blocks"])),
            ]
        )
    header = [
        "dtype",
        "rows: max abs error",
        "predictions bit-identical",
        "plain vs plain identical",
        "predictions max diff",
        "rows vs fp32: max",
        "rows vs fp32: mean",
        "pos = patch grid",
    ]
    return lines + _table(header, rows)


def _ratio_rows(rows: list[dict[str, Any]], label: str) -> list[list[str]]:
    return [
        [
            label.format(**r),
            fmt_s(r["time_s"]),
            fmt_ratio(r["time_ratio"]),
            fmt_bytes(r["peak_bytes"]),
            fmt_ratio(r["memory_ratio"]),
            fmt_bytes(r["extra_over_plain_bytes"]),
            fmt_bytes(r["stored_bytes"]),
            str(r["rounds_run"]),
        ]
        for r in rows
    ]


_RATIO_HEADER = ["", "time (s)", "time ratio", "peak memory", "memory ratio", "extra over plain", "rows kept", "rounds"]


def _check_overhead(o: dict[str, Any]) -> list[str]:
    if "plain" not in o:
        return []
    p = o["plain"]
    lines = [
        f"S = {o['frames']} at {o['size']} ({o['tokens']} tokens), all {o['blocks']} blocks x {o['heads']} heads "
        f"x frame + global, {o['dtype']}. Time ratio: median over rounds of capture / plain in the same round "
        f"(order rotated). Memory: {p['memory_method']}.",
        "",
    ]
    plain = [
        [
            "plain forward",
            fmt_s(p["time_s"]),
            "1.000",
            fmt_bytes(p["peak_bytes"]),
            "1.000",
            "–",
            "–",
            str(p["rounds_run"]),
        ]
    ]
    return lines + _table(_RATIO_HEADER, plain + _ratio_rows(o["rows"], "capture, Q = {queries}"))


def _check_scale(sc: dict[str, Any]) -> list[str]:
    rows = []
    for r in sc.get("rows", []):
        if r.get("status") != "ok":
            rows.append([str(r["frames"]), str(r["tokens"]), r.get("status", "not run")] + [""] * 5)
            continue
        p, c = r["plain"], r["capture"]
        rows.append(
            [
                str(r["frames"]),
                str(r["tokens"]),
                fmt_bytes(p["peak_bytes"]),
                fmt_bytes(c["peak_bytes"]),
                fmt_ratio(c["memory_ratio"]),
                fmt_s(p["time_s"]),
                fmt_ratio(c["time_ratio"]),
                fmt_bytes(r["baseline_predicted_bytes"]),
            ]
        )
    header = [
        "S",
        "tokens",
        "plain peak",
        "capture peak",
        "memory ratio",
        "plain time (s)",
        "time ratio",
        "full-matrix baseline predicted",
    ]
    lines = [
        f"{sc.get('size')}, Q = {sc.get('queries')}, {sc.get('dtype')}; rows kept on the host.",
        "",
        *_table(header, rows),
        "",
        f"Largest S captured: {sc.get('largest_captured_frames')}.",
    ]
    base = sc.get("baseline")
    if base:
        a = base.get("attempt", {})
        lines.append(
            f"Full-matrix baseline: over the {fmt_bytes(base['budget_bytes'])} budget from S = "
            f"{base['over_budget_from_frames']}; attempt at S = {a.get('frames')}: {a.get('status')}"
            + (
                f", predicted {fmt_bytes(a['predicted_bytes'])}, measured extra over plain "
                f"{fmt_bytes(a['baseline']['extra_over_plain_bytes'])}, peak {fmt_bytes(a['baseline']['peak_bytes'])}"
                if a.get("status") == "ok"
                else ""
            )
            + "."
        )
    return lines


def _check_recording(rc: dict[str, Any]) -> list[str]:
    rows = []
    for r in rc.get("rows", []):
        if r.get("status") != "ok":
            rows.append([str(r["frames"]), r.get("status", "not run"), "", "", "", ""])
            continue
        parts = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in r.get("parts_bytes", {}).items()) or "–"
        rows.append(
            [
                str(r["frames"]),
                fmt_s(r["forward_s"]),
                fmt_s(r["log_s"]),
                fmt_ratio(r["log_over_forward"]),
                fmt_bytes(r["rrd_bytes"]),
                parts,
            ]
        )
    header = ["S", "forward with capture (s)", "log_run + flush (s)", "log / forward", ".rrd", "parts"]
    return [
        f"{rc.get('queries')} query, all blocks and heads, frame + global, {rc.get('size')}.",
        "",
        *_table(header, rows),
    ]


def _check_cli(c: dict[str, Any]) -> list[str]:
    if "exit_code" not in c:
        return []
    t, est = c.get("timings", {}), c.get("estimate") or {}
    lines = [f"`{' '.join(c['argv'])}` on {c['photos']}; exit code {c['exit_code']}.", ""]
    lines += _table(
        ["wall (s)", "model load (s)", "forward (s)", "logging (s)", ".rrd"],
        [
            [
                fmt_s(c.get("wall_s")),
                fmt_s(t.get("load_s")),
                fmt_s(t.get("forward_s")),
                fmt_s(t.get("logging_s")),
                fmt_bytes(c.get("rrd_bytes")),
            ]
        ],
    )
    if est:
        causes = ", ".join(
            f"{k} {fmt_bytes(est[k])}"
            for k in ("weights", "weight_casts", "activations", "attention_matrix", "capture", "heads")
        )
        lines += [
            "",
            f"Memory estimate (core.resources.estimate_memory, as the CLI computed it): total "
            f"{fmt_bytes(est['total'])} ({causes}); measured peak {fmt_bytes(c.get('peak_bytes'))} "
            f"({c.get('memory_method')}); estimate / peak {fmt_ratio(c.get('estimate_over_peak'))}. "
            f"Printed by the CLI: {c.get('printed') or 'nothing (it prints the estimate only near the limit)'}.",
        ]
    return lines


def _check_ablate(a: dict[str, Any]) -> list[str]:
    if "plain_forward_s" not in a:
        return []
    lines = [
        f"S = {a['frames']} at {a['size'][0]}x{a['size'][1]} ({a['tokens']} tokens), {a['dtype']}; head ablations of "
        f"global block {a['block']}. No intervention bit-identical: {a.get('noop_bit_identical')}; zero ablation "
        f"of head 0 vs zeroed proj columns, max abs difference {_check_value(a.get('head_vs_zeroed_proj_max_abs'))} "
        f"(the ablation itself changes the output by up to {_check_value(a.get('head_changed_output_max_abs'))}).",
        "",
    ]
    rows = [["plain forward", "", fmt_s(a["plain_forward_s"]), "1", fmt_bytes(a.get("plain_peak_bytes"))]]
    for r in a.get("sweeps", []):
        if r.get("status") != "ok":
            rows.append([f"batch {r['batch_size']}", "", r.get("status", ""), "", ""])
            continue
        rows.append([f"batch {r['batch_size']}", str(r["interventions"]), fmt_s(r["seconds_per_intervention"]),
                     fmt_ratio(r["over_plain_forward"]), fmt_bytes(r.get("peak_bytes"))])  # fmt: skip
    k = a.get("knockout")
    if k:
        rows.append(["knockout (all patches)", "1", fmt_s(k["seconds"]), fmt_ratio(k["seconds"] / a["plain_forward_s"]),
                     fmt_bytes(k.get("peak_bytes"))])  # fmt: skip
    return lines + _table(["run", "interventions", "s per intervention", "/ plain forward", "peak"], rows)


_CHECK_SECTIONS = (
    ("exact", "1. Exactness", _check_exact),
    ("overhead", "2. Overhead", _check_overhead),
    ("scale", "3. Scale", _check_scale),
    ("recording", "4. Recording", _check_recording),
    ("ablate", "Ablations", _check_ablate),
    ("cli", "5. CLI end to end", _check_cli),
)


def check_markdown(res: dict[str, Any]) -> str:
    steps = res.get("steps", {})
    lines = [f"# GPU check: {res.get('title', '')}", "", f"Created {res.get('created')} by `{res.get('command')}`.", ""]
    if res.get("note"):
        lines += [f"Note: {res['note']}", ""]
    if res.get("dry"):
        lines += ["**Dry run**: the tiny model at toy sizes; no figure here says anything about VGGT-1B.", ""]
    if res.get("model_error"):
        lines += [f"Model load failed: {res['model_error']}", ""]
    lines += _check_machine(res) + [
        "",
        "## Steps",
        "",
        f"Model load: {fmt_s(res.get('model_load_s'))} s; total budget "
        f"{fmt_s(res.get('budget_s'))} s, used {fmt_s(res.get('seconds'))} s.",
        "",
    ]
    lines += _table(
        ["step", "status", "seconds", "budget (s)"],
        [[k, v.get("status", ""), fmt_s(v.get("seconds")), fmt_s(v.get("budget_s"))] for k, v in steps.items()],
    )
    for key, title, section in _CHECK_SECTIONS:
        if key in steps:
            body = section(steps[key])
            if body:
                lines += ["", f"## {title}", "", *body]
    lines += ["", "## Targets", ""]
    for t in res.get("targets", []):
        verdict = "stated" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
        lines.append(f"- {t['name']}: {_check_value(t['value'])} ({t['limit']}) **{verdict}**")
    return "\n".join(lines) + "\n"


__all__ = ["check_markdown", "check_targets", "markdown", "verdicts"]


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        with open(arg) as fh:
            sys.stdout.write(markdown(json.load(fh)))
