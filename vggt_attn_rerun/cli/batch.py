"""``vggt-attn-rerun batch SCENES --out DIR``: dataset mode on the command line (batch.study).

Everything that needs no model (options, the scenes, the output folder, the engine) is checked
first; a problem there is a usage error (exit 2), and so are options the loaded model cannot
take (--blocks, --query-grid: checked once, before the scenes). Then the study runs: failed
scenes are warnings and lines of DIR/failures.jsonl; the exit code is 1 only when no scene at all
is in the table.
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any

import click

from vggt_attn_rerun.cli.checks import check_model_file
from vggt_attn_rerun.core.images import MODES
from vggt_attn_rerun.core.loading import DEFAULT_MODEL, SPEC_SYNTAX
from vggt_attn_rerun.core.resources import DTYPES
from vggt_attn_rerun.core.tokens import VGGT_PATCH_SIZE, parse_index_list
from vggt_attn_rerun.errors import UserError

PROG = "vggt-attn-rerun batch"
# Any depth a real model could have: the syntax of --blocks is checked before the model loads.
_ANY_DEPTH = 1 << 20
_EPILOG = """\b
Examples:
  vggt-attn-rerun batch scenes/ --out study/
      every sub-folder of scenes/ is a scene; an 8x8 query grid over frame 0 of each
  vggt-attn-rerun batch scenes.csv --out study/ --kinds global --frames 8
      a CSV manifest (header scene,path); global attention only; the first 8 photos of each
  vggt-attn-rerun batch scenes/ --out study/ --ablate heads --kinds global --blocks 0-3
      also ablate each global head of blocks 0-3 in every scene: effects over scenes
  vggt-attn-rerun batch scenes/ --out study/ --engine ray --workers 4
      Ray Data on this machine: 4 workers, one model each (1 GPU each when there are GPUs)
  vggt-attn-rerun batch /shared/scenes.txt --out /shared/study --engine ray --ray-address HEAD_IP:6379
      a running Ray cluster (ray start --head; ray start --address HEAD_IP:6379 on each worker node)

\b
Outputs (DIR): scenes/{scene}.parquet (+ .rrd with --rrd), scenes.parquet (one row group per
scene), summary.parquet, summary.md, summary.rrd (open it: rerun DIR/summary.rrd),
failures.jsonl; with --ablate also scenes/{scene}.effects.parquet and effects_summary.parquet.
Re-running the same command skips the done scenes and retries the failed ones.
"""


def _grid(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise UserError(f"--query-grid {text}: expected ROWSxCOLS with both >= 1, e.g. 8x8")
    return int(m.group(1)), int(m.group(2))


def _check_engine(o: dict[str, Any]) -> None:
    ray_only = {"--ray-address": o["ray_address"], "--workers": o["workers"], "--gpus-per-worker": o["gpus_per_worker"]}
    if o["engine"] == "local":
        given = [name for name, v in ray_only.items() if v is not None]
        if given:
            raise UserError(f"{', '.join(given)}: only with --engine ray (the local engine runs one model here)")
        return
    if importlib.util.find_spec("ray") is None:
        from vggt_attn_rerun.batch.engines import RAY_HINT

        raise UserError(RAY_HINT)
    if o["workers"] is not None and o["workers"] < 1:
        raise UserError(f"--workers {o['workers']}: must be >= 1")
    if o["gpus_per_worker"] is not None and o["gpus_per_worker"] < 0:
        raise UserError(f"--gpus-per-worker {o['gpus_per_worker']}: must be >= 0")


def _plan(o: dict[str, Any]) -> Any:
    from vggt_attn_rerun.batch.job import StudyOptions
    from vggt_attn_rerun.batch.study import prepare

    size = o["image_size"]
    if size < VGGT_PATCH_SIZE or size % VGGT_PATCH_SIZE:
        raise UserError(f"--image-size {size}: must be a positive multiple of {VGGT_PATCH_SIZE} (VGGT uses 518)")
    if o["frame"] < 0:
        raise UserError(f"--frame {o['frame']}: must be >= 0")
    if o["frames"] is not None and o["frame"] >= o["frames"] >= 1:
        raise UserError(f"--frame {o['frame']}: --frames {o['frames']} keeps frames 0..{o['frames'] - 1}")
    try:
        parse_index_list(o["blocks"], _ANY_DEPTH)  # the syntax; the range once the model is known
    except UserError:
        syntax = "use e.g. 0-23, 0,12,23, -1 (the last) or all"
        raise UserError(f"cannot parse --blocks {o['blocks']!r}: {syntax}") from None
    check_model_file(o["model"])
    if o["ablate"] is None and o["ablation"] != "zero":
        raise UserError(f"--ablation {o['ablation']}: only with --ablate heads|blocks")
    _check_engine(o)
    options = StudyOptions(
        model=o["model"], grid=_grid(o["query_grid"]), frame=o["frame"], kinds=tuple(o["kinds"].split(",")),
        blocks=o["blocks"], mode=o["mode"], image_size=size, frames=o["frames"], top_k=o["top_k"],
        radius=o["radius"], dtype=o["dtype"], device=o["device"], rrd=o["rrd"], ablate=o["ablate"],
        ablation=o["ablation"],
    )  # fmt: skip
    prepare(o["scenes"], o["out"], options)
    return options


@click.command(
    "batch",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=_EPILOG,
)
@click.argument("scenes", metavar="SCENES")
@click.option("--out", required=True, metavar="DIR", help="Output folder (created; an existing study is resumed).")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help=f"Model: {SPEC_SYNTAX}.")
@click.option("--query-grid", default="8x8", show_default=True, metavar="RxC", help="Patch queries over --frame.")
@click.option("--frame", default=0, show_default=True, type=int, help="The view the query grid covers.")
@click.option("--kinds", default="frame,global", show_default=True, help="global, frame or frame,global.")
@click.option("--blocks", default="all", show_default=True, help="Blocks to capture: 0-23, 0,12,23, all.")
@click.option("--frames", type=int, metavar="N", help="Use the first N photos of each scene (by name).")
@click.option("--mode", type=click.Choice(MODES), default="crop", show_default=True, help="Image preprocessing.")
@click.option("--image-size", default=518, show_default=True, type=int, help="Model input width (crop).")
@click.option("--top-k", default=10, show_default=True, type=int, help="k of the top-k mass summary.")
@click.option("--radius", default=1, show_default=True, type=int, help="Correspondence window radius (patches).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda (ray: each worker's own).")
@click.option("--dtype", type=click.Choice(DTYPES), default="auto",
              show_default=True, help="Autocast dtype (auto: bf16 on Ampere+ GPUs, fp32 on CPU).")  # fmt: skip
@click.option("--rrd", is_flag=True, help="Also write each scene's recording (scenes/{scene}.rrd).")
@click.option(
    "--ablate",
    metavar="WHAT",
    help="Also sweep interventions per scene: heads, blocks or knockout "
    "(scenes/{scene}.effects.parquet, effects_summary.parquet; docs/ablations.md).",
)
@click.option("--ablation", default="zero", show_default=True, metavar="HOW",
              help="With --ablate heads|blocks: zero or mean.")  # fmt: skip
@click.option("--engine", type=click.Choice(("local", "ray")), default="local", show_default=True)
@click.option("--ray-address", metavar="ADDRESS", help="A running Ray cluster (default: start Ray here).")
@click.option("--workers", type=int, metavar="N", help="Ray workers, one model each (default: one per GPU, else 1).")
@click.option("--gpus-per-worker", type=float, help="GPUs per Ray worker (default: 1 with GPUs, else 0).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def batch(**o: Any) -> None:
    """Run the attention summaries, correspondence and epipolar scores over a dataset of scenes.

    SCENES is a folder of scene folders (each a folder of photos) or a manifest file: one scene
    folder per line, or CSV with the header scene,path. Each scene gets one forward pass. A scene
    folder with cameras.npz or a COLMAP sparse/0/ (photos in images/) is scored against those
    true cameras (reference = truth; docs/datasets.md).
    """
    try:
        options = _plan(o)
    except UserError as e:
        raise click.UsageError(str(e)) from e
    from vggt_attn_rerun.batch.engines import RaySettings
    from vggt_attn_rerun.batch.study import run_study

    ray = RaySettings(o["ray_address"], o["workers"], o["gpus_per_worker"])
    report = run_study(o["scenes"], o["out"], options, engine=o["engine"], ray=ray)
    ran = report.done + len(report.failed)
    rate = f" in {report.seconds:.1f} s ({report.scenes_per_second:.3g} scenes/s)" if ran else ""
    click.echo(
        f"{report.done} scenes done, {report.skipped} skipped (done before), {len(report.failed)} failed{rate}",
        err=True,
    )
    if report.failed:
        click.echo(f"failed scenes and why: {report.out / 'failures.jsonl'}", err=True)
    if report.done + report.skipped == 0:
        raise UserError("no scene could be processed: see the reasons in failures.jsonl")
    click.echo(f"table {report.out / 'scenes.parquet'}, summary {report.out / 'summary.md'}, "
               f"viewer: rerun {report.out / 'summary.rrd'}", err=True)  # fmt: skip
