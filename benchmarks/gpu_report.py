"""Targets and the markdown report of a GPU check: ``python -m benchmarks.gpu_report RESULTS.json`` reprints it."""

from __future__ import annotations

import json
import sys
from typing import Any

from .report import _table, fmt_bytes, fmt_ratio, fmt_s

EXACT_FP32 = 1e-6
OVERHEAD_LIMIT = 1.02
TARGET_QUERIES = 16


def _target(name: str, value: Any, limit: str, ok: bool | None) -> dict[str, Any]:
    return {"name": name, "value": value, "limit": limit, "pass": ok}


def _overhead_row(o: dict[str, Any]) -> dict[str, Any] | None:
    rows = o.get("rows") or []
    return next((r for r in rows if r["queries"] == TARGET_QUERIES), rows[-1] if rows else None)


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
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
    row = _overhead_row(o)
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


def _value(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 else f"{v:.3f}"
    return str(v)


def _machine(res: dict[str, Any]) -> list[str]:
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


def _exact(e: dict[str, Any]) -> list[str]:
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
                _value(r["max_abs_error"]),
                str(r["predictions_bit_identical"]),
                str(r["plain_forwards_bit_identical"]),
                _value(r["predictions_max_abs_difference"]),
                _value(vs.get("max_abs")),
                _value(vs.get("mean_abs")),
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


def _overhead(o: dict[str, Any]) -> list[str]:
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


def _scale(sc: dict[str, Any]) -> list[str]:
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


def _recording(rc: dict[str, Any]) -> list[str]:
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


def _cli(c: dict[str, Any]) -> list[str]:
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


def _ablate(a: dict[str, Any]) -> list[str]:
    if "plain_forward_s" not in a:
        return []
    lines = [
        f"S = {a['frames']} at {a['size'][0]}x{a['size'][1]} ({a['tokens']} tokens), {a['dtype']}; head ablations of "
        f"global block {a['block']}. No intervention bit-identical: {a.get('noop_bit_identical')}; zero ablation "
        f"of head 0 vs zeroed proj columns, max abs difference {_value(a.get('head_vs_zeroed_proj_max_abs'))} "
        f"(the ablation itself changes the output by up to {_value(a.get('head_changed_output_max_abs'))}).",
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


_SECTIONS = (
    ("exact", "1. Exactness", _exact),
    ("overhead", "2. Overhead", _overhead),
    ("scale", "3. Scale", _scale),
    ("recording", "4. Recording", _recording),
    ("ablate", "Ablations", _ablate),
    ("cli", "5. CLI end to end", _cli),
)


def markdown(res: dict[str, Any]) -> str:
    steps = res.get("steps", {})
    lines = [f"# GPU check: {res.get('title', '')}", "", f"Created {res.get('created')} by `{res.get('command')}`.", ""]
    if res.get("note"):
        lines += [f"Note: {res['note']}", ""]
    if res.get("dry"):
        lines += ["**Dry run**: the tiny model at toy sizes; no figure here says anything about VGGT-1B.", ""]
    if res.get("model_error"):
        lines += [f"Model load failed: {res['model_error']}", ""]
    lines += _machine(res) + [
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
    for key, title, section in _SECTIONS:
        if key in steps:
            body = section(steps[key])
            if body:
                lines += ["", f"## {title}", "", *body]
    lines += ["", "## Targets", ""]
    for t in res.get("targets", []):
        verdict = "stated" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
        lines.append(f"- {t['name']}: {_value(t['value'])} ({t['limit']}) **{verdict}**")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        with open(arg) as f:
            sys.stdout.write(markdown(json.load(f)))
