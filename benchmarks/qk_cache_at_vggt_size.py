"""The q/k cache of click-to-query at VGGT-1B's size: what ``capture(..., keep_qk=True)`` keeps, measured.

A random-weight model with VGGT-1B's aggregator (``testing.tiny_vggt(embed_dim=1024, depth=24,
num_heads=16)``: C = 1024, 24 frame + 24 global blocks, 16 heads, patch 14; VGGT's attention code
path, no pretrained heads) runs once on S random 518x518 images with ``keep_qk=True``. Reported:
``QKCache.nbytes()`` against the formula ``S * 2 * P * C * 4 * blocks * kinds``
(``core.qk_cache.model_qk_cache_bytes``), the resident memory the capture leaves behind (RSS after
minus before) and its peak growth during the capture (``common.MemoryMeter``), the capture's time,
and the time of one new query's rows from the cache (the work of a click, before logging), checked
equal to the capture's own rows.

    python -m benchmarks.qk_cache_at_vggt_size                  # S = 8 at 518x518: about 4 min on 2 cores
    python -m benchmarks.qk_cache_at_vggt_size --frames 2 --embed-dim 64 --depth 2 --heads 4   # seconds

Writes ``benchmarks/results/qk-cache.{md,json}`` (``--out``, ``--name``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def measure(frames: int, side: int, embed_dim: int, depth: int, heads: int, threads: int) -> dict:
    import torch

    from benchmarks.common import MemoryMeter, machine_info, median, model_bytes
    from benchmarks.common import _proc_status_kb as proc_status_kb
    from vggt_attn_rerun.core.capture import capture
    from vggt_attn_rerun.core.qk_cache import model_qk_cache_bytes
    from vggt_attn_rerun.core.tokens import Query
    from vggt_attn_rerun.testing import tiny_vggt

    torch.set_num_threads(threads)
    model = tiny_vggt(embed_dim=embed_dim, depth=depth, num_heads=heads)
    images = torch.rand(frames, 3, side, side, generator=torch.Generator().manual_seed(0))
    centre = side // 14 // 2
    asked = lambda lay: [Query.from_patch(lay, frames - 1, centre, centre)]  # noqa: E731
    meter = MemoryMeter(torch.device("cpu"))
    meter.start()
    t0 = time.perf_counter()
    result = capture(model, images, asked, keep_qk=True)
    capture_s = time.perf_counter() - t0
    memory = meter.stop()
    after = (proc_status_kb("VmRSS") or 0) * 1024
    cache, lay = result.qk_cache, result.layout
    seconds, rows = [], None
    for _ in range(3):
        t0 = time.perf_counter()
        rows = cache.rows(lay, result.rows.queries, heads)
        seconds.append(time.perf_counter() - t0)
    exact = all(torch.equal(rows.probs[k], result.rows.probs[k]) for k in result.rows.kinds)
    return {
        "frames": frames,
        "side": side,
        "tokens_per_frame": lay.tokens_per_frame,
        "embed_dim": embed_dim,
        "blocks": depth,
        "kinds": len(result.rows.kinds),
        "heads": heads,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "model_bytes": model_bytes(model),
        "cache_bytes": cache.nbytes(),
        "formula_bytes": model_qk_cache_bytes(model, lay, depth, len(result.rows.kinds)),
        "resident_before_bytes": memory["rss_before_bytes"],
        "resident_growth_bytes": after - memory["rss_before_bytes"],
        "peak_growth_bytes": memory["extra_bytes"],
        "memory_method": meter.method,
        "capture_s": capture_s,
        "rows_one_query_s": median(seconds),
        "rows_equal_capture": exact,
        "threads": threads,
        "machine": machine_info("cpu"),
    }


def report(r: dict) -> str:
    gb = 1e9
    return "\n".join(
        [
            "# The q/k cache of click-to-query, measured",
            "",
            f"Random-weight model with C = {r['embed_dim']}, {r['blocks']} frame + {r['blocks']} global blocks, "
            f"{r['heads']} heads ({r['params_m']:.0f} M parameters), S = {r['frames']} views of "
            f"{r['side']}x{r['side']} (P = {r['tokens_per_frame']}), fp32, CPU, {r['threads']} torch threads.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| `QKCache.nbytes()` | {r['cache_bytes']:,} B ({r['cache_bytes'] / gb:.3f} GB) |",
            f"| formula `S * 2 * P * C * 4 * blocks * kinds` | {r['formula_bytes']:,} B |",
            f"| per frame | {r['cache_bytes'] / r['frames'] / 1e6:.1f} MB |",
            f"| resident memory the capture leaves (after - before) | {r['resident_growth_bytes'] / gb:.2f} GB |",
            f"| peak growth during the capture ({r['memory_method']}) | {r['peak_growth_bytes'] / gb:.2f} GB |",
            f"| resident memory before the capture (model {r['model_bytes'] / gb:.2f} GB, torch) | "
            f"{r['resident_before_bytes'] / gb:.2f} GB |",
            f"| capture (forward + rows + cache) | {r['capture_s']:.1f} s |",
            f"| rows of one query from the cache (median of 3) | {r['rows_one_query_s']:.2f} s |",
            f"| those rows equal the capture's | {r['rows_equal_capture']} |",
            "",
            f"Machine: {r['machine']['cpu']}, {r['machine']['cores_usable']} usable cores, load average "
            f"{', '.join(f'{v:.1f}' for v in r['machine']['load_average'] or [])} at the end, "
            f"torch {r['machine']['torch']}.",
            "What the capture leaves holds the cache, the run's rows of its one query and the model's predictions;",
            "the peak adds the forward pass's activations.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--side", type=int, default=518, help="input width and height, a multiple of 14")
    parser.add_argument("--embed-dim", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=24, help="blocks of each kind")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="qk-cache")
    args = parser.parse_args(argv)
    if args.side % 14 or min(args.frames, args.side, args.embed_dim, args.depth, args.heads, args.threads) < 1:
        parser.error("--side must be a positive multiple of 14; the other sizes positive")
    result = measure(args.frames, args.side, args.embed_dim, args.depth, args.heads, args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    text = report(result)
    (args.out / f"{args.name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
