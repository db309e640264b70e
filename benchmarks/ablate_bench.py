"""Cost of an intervention: seconds per intervention of ``api.ablate`` against one plain forward.

    python -m benchmarks.ablate_bench                                  # tiny model, CPU, S = 4 at 224x224
    python -m benchmarks.ablate_bench --model random --frames 2 --size 112 --batch-sizes 1,2 --repeats 1

For each batch size B (interventions per forward pass: B copies of the scene): ``api.ablate`` over
``--count`` head ablations of the last global block, end to end (the forwards and the effects),
and the forward alone (one batch of B copies under ``intervene``, divided by B). Then one forward
with each other sort of intervention: a whole block's attention, a cross-view knockout of every
patch token, a knockout of one query token. Every figure is the median over ``--repeats`` rounds,
after one untimed warm-up forward; "/ plain" divides by the median plain forward (``model(images)``
under ``no_grad``, same dtype) of the same run. Results: ``benchmarks/results/ablate-<model>-<device>.{md,json}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import REPO_ROOT, load_bench_model, machine_info, make_images, median, rotated, sync
from vggt_attn_rerun.api.ablation import ablate
from vggt_attn_rerun.core.adapters import adapter_for
from vggt_attn_rerun.core.interventions import BlockAblation, CrossViewKnockout, HeadAblation, intervene
from vggt_attn_rerun.core.introspect import model_depth, model_heads, model_layout
from vggt_attn_rerun.io.atomic import write_file


def _interleaved(calls: dict[str, tuple[Callable[[], object], int]], device: torch.device, rounds: int) -> dict:
    """Every call once per round, in an order rotated each round, so that noise from other jobs hits
    all of them; per call: median seconds (divided by its count) and the median over rounds of its
    ratio to the plain forward of the same round."""
    names = list(calls)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in rotated(names, r):
            fn, per = calls[name]
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) / per)
    plain = times["plain forward"]
    return {
        n: {"seconds": median(t), "over_plain": median([a / b for a, b in zip(t, plain, strict=True)]), "times": t}
        for n, t in times.items()
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    model = load_bench_model(args.model, args.device)
    adapter = adapter_for(model)
    images = make_images(args.frames, args.size, args.size, device)
    layout = model_layout(model, args.frames, args.size, args.size)
    last, heads = model_depth(model) - 1, model_heads(model)

    def forward(batch: int = 1, interventions=()) -> None:
        with torch.no_grad(), intervene(model, list(interventions), layout):
            adapter.run(model, images[None].expand(batch, *images.shape))

    forward()  # warm-up
    count = min(args.count, heads)
    ivs = [HeadAblation("global", last, h) for h in range(count)]
    calls: dict[str, tuple[Callable[[], object], int]] = {"plain forward": (forward, 1)}
    for bs in args.batch_sizes:
        items = [dataclasses.replace(iv, item=j) for j, iv in enumerate(ivs[:bs])]
        calls[f"head ablation, forward of batch {bs}"] = (lambda bs=bs, items=items: forward(bs, items), bs)
        calls[f"head ablation, ablate() at batch {bs}"] = (lambda bs=bs: ablate(model, images, ivs, batch_size=bs),
                                                            count)  # fmt: skip
    others = {
        "block attention (zero)": BlockAblation("global", last),
        "knockout, all patch tokens": CrossViewKnockout(last),
        "knockout, one query token": CrossViewKnockout(last, tokens=(layout.tokens_per_frame + layout.patch_start,)),
    }
    for name, iv in others.items():
        calls[name] = (lambda iv=iv: forward(1, [iv]), 1)
    return {
        "model": args.model, "device": args.device, "frames": args.frames, "size": args.size,
        "tokens": layout.num_tokens, "blocks": model_depth(model), "heads": heads, "rounds": args.repeats,
        "count": count, "machine": machine_info(args.device), "note": args.note,
        "load_average_before": os.getloadavg(), "rows": _interleaved(calls, device, args.repeats),
        "load_average_after": os.getloadavg(),
    }  # fmt: skip


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        f"# Cost of an intervention: {res['model']} on {res['device']}",
        "",
        f"S = {res['frames']} at {res['size']}x{res['size']} ({res['tokens']} tokens), {res['blocks']} blocks x "
        f"{res['heads']} heads, float32, {res['rounds']} interleaved rounds (order rotated each round). Machine: "
        f"{m.get('cpu')}, {m.get('cores')} cores, torch {m.get('torch')}.",
        "",
        f'Seconds per intervention (median over rounds). "forward of batch B": one forward of B copies of the '
        f'scene, each with its own head ablation, / B. "ablate() at batch B": `api.ablate` over {res["count"]} '
        "head ablations end to end (its own unablated forward and the effects included) / their count. "
        "/ plain: median over rounds of (that time / the plain forward of the same round).",
        "",
    ]
    if res.get("note"):
        lines += [f"Note: {res['note']}", ""]
    if res.get("load_average_before"):
        before, after = res["load_average_before"][0], res["load_average_after"][0]
        lines += [f"Load average (1 min) before / after the rounds: {before:.1f} / {after:.1f}.", ""]
    lines += ["| intervention | s per intervention | / plain forward |", "|---|---|---|"]
    for name, r in res["rows"].items():
        lines.append(f"| {name} | {r['seconds']:.3f} | {r['over_plain']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ablate_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="tiny, or random (VGGT-1B; needs the vggt package)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--size", type=int, default=224, help="square input side (a multiple of the patch size)")
    p.add_argument("--batch-sizes", type=lambda t: [int(x) for x in t.split(",")], default=[1, 2, 4])
    p.add_argument("--count", type=int, default=4, help="head ablations per ablate call")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int)
    p.add_argument("--note")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    p.add_argument("--name")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run(args)
    res["command"] = "python -m benchmarks.ablate_bench " + " ".join(
        argv if argv is not None else __import__("sys").argv[1:]
    )
    name = args.name or f"ablate-{'vggt1b' if args.model == 'random' else args.model}-{args.device.replace(':', '')}"
    args.out.mkdir(parents=True, exist_ok=True)
    md = markdown(res)
    write_file(args.out / f"{name}.json", lambda f: f.write((json.dumps(res, indent=2, default=str) + "\n").encode()))
    write_file(args.out / f"{name}.md", lambda f: f.write(md.encode()))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
