"""``vggt-attn-rerun IMAGES...``: a thin command line over the Python API.

The order of work is the point of this module: everything that can be checked cheaply (paths,
images, query and block syntax, the save path, the viewer) is checked before the model loads,
so that a typo costs a second and not a 5 GB download or minutes of a forward pass.
"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import traceback
import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from vggt_attn_rerun.cli.batch import batch
from vggt_attn_rerun.core.images import MODES
from vggt_attn_rerun.core.introspect import model_embed_dim, model_patch_size
from vggt_attn_rerun.core.models import DEFAULT_MODEL, SPEC_SYNTAX, VGGT_SOURCE
from vggt_attn_rerun.core.tokens import QUERY_SYNTAX, VGGT_NUM_REGISTERS, VGGT_PATCH_SIZE
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.viz.colormap import COLORMAPS
from vggt_attn_rerun.viz.sinks import DEFAULT_URL, WEB_PORT

PROG = "vggt-attn-rerun"
APP_ID = "vggt_attn_rerun"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DTYPES = ("auto", "float32", "bfloat16", "float16")
KIND_CHOICES = "global, frame or frame,global"
# Any depth a real model could have: used to check the syntax of --blocks before the model loads.
_ANY_DEPTH = 1 << 20
# VGGT's tokens per frame before the patches: 1 camera + 4 registers.

_EXAMPLES = (
    ("photos/", "open the viewer on every image in photos/"),
    ("a.jpg b.jpg c.jpg -q 0:320,240 -q 1:p10,12", "two queries: a photo pixel, a patch"),
    ('"scene/*.png" --kinds frame,global --blocks 0,12,23 --head 3', "three blocks, head 3"),
    ("photos/ --model tiny --save attn.rrd --headless", "file only, no viewer"),
    ("photos/ --save attn.rrd", "viewer and file"),
    ("photos/ --serve", f"web viewer on http://localhost:{WEB_PORT}"),
    ("photos/ --connect", "stream to a viewer that is already running"),
    ("photos/ --query-grid 8x8 --frame 1", "64 patch queries evenly spread over frame 1, one forward pass"),
    ("photos/ --queries-file queries.txt", "one query per line (-q syntax, # comments)"),
    ("photos/ --export run.npz --headless", "save the run (no viewer); later: rerun run.npz"),
)
EPILOG = (
    "\b\nExamples:\n"
    + "\n".join(f"  {PROG} {args}\n      {what}" for args, what in _EXAMPLES)
    + f"""

\b
Queries (-q, repeatable): FRAME:X,Y is a pixel of the ORIGINAL photo (0:320,240),
FRAME:pROW,COL a patch of the model's grid (1:p10,12), FRAME:camera or FRAME:register_R
a special token (0:camera), N a global token index (1380). --queries-file PATH: one such
query per line, # starts a comment. --query-grid RxC: R x C patch queries evenly spread over
--frame F (default 0). All of them combine; the default is the centre of frame 0. However many
queries there are, the model runs once; with more than 4 the layout shows q0 (see the
"queries" tab for the others).

\b
Other commands:
  {PROG} install-vggt [--source URL_OR_PATH] [--dry-run]
      install the vggt package with pip --no-deps (its numpy<2 pin clashes with rerun-sdk)
  {PROG} batch SCENES --out DIR [--engine local|ray] ...
      dataset mode: summaries and correspondence scores over many scenes (batch --help)

\b
Exit codes: 0 done, 1 error while running, 2 bad command line or input, 130 interrupted.
"""
)


# ------------------------------------------------------------------------------------------------
# Entry point and error policy
# ------------------------------------------------------------------------------------------------


def _wants_debug(args: Sequence[str]) -> bool:
    return "--debug" in args


def run(argv: Sequence[str] | None = None, command: click.Command | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``) and return the exit code.

    ``command`` None (or the main command) dispatches: ``install-vggt ...`` or the main command.
    Every expected failure becomes one ``error: ...`` line on stderr; tracebacks only with --debug.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if command is None or command is cli:
        # A group would put its own options and usage line before `IMAGES...`; a first word
        # that is a subcommand name is unambiguous enough (a folder can be passed as ./install-vggt).
        sub = {"install-vggt": install_vggt, "batch": batch}.get(args[0] if args else "")
        command, args = (sub, args[1:]) if sub is not None else (cli, args)
    prog = PROG if command is cli else f"{PROG} {command.name}"
    debug = _wants_debug(args)
    try:
        with warnings.catch_warnings():
            if not debug:  # Python's own format adds the file and source line: keep to one line
                warnings.showwarning = _show_warning
            with command.make_context(prog, args) as ctx:
                command.invoke(ctx)
        return EXIT_OK
    except click.exceptions.Exit as e:  # --help, or ctx.exit(code)
        return e.exit_code
    except _BadInput as e:
        return _fail(e.format_message(), EXIT_USAGE, debug)
    except click.UsageError as e:
        return _fail(f"{e.format_message()} (see {prog} --help)", EXIT_USAGE, debug)
    except click.ClickException as e:
        return _fail(e.format_message(), e.exit_code, debug)
    except UserError as e:
        return _fail(str(e), EXIT_ERROR, debug)
    except (KeyboardInterrupt, click.Abort):
        if debug:
            traceback.print_exc()
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except Exception as e:  # a bug, not a user error: say so in one line, details with --debug
        return _fail(
            f"unexpected {type(e).__name__}: {_one_line(e)} (run with --debug for the traceback)",
            EXIT_ERROR,
            debug,
        )


def _show_warning(message: Warning | str, category: type, filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:  # fmt: skip
    click.echo(f"warning: {_one_line_text(str(message))}", err=True)


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else ""


def _fail(message: str, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    click.echo(f"error: {_one_line_text(message)}", err=True)
    return code


def _one_line_text(text: str) -> str:
    return " ".join(text.split())


def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> None:
    """Console script ``vggt-attn-rerun``."""
    # `kill` or a job scheduler's SIGTERM unwinds like Ctrl-C, so no partial file survives it.
    signal.signal(signal.SIGTERM, _terminated)
    sys.exit(run(argv))


class _BadInput(click.UsageError):
    """A UserError found while checking the command line: exit 2, but no pointer to --help."""


class _Entry(click.Command):
    """Routes ``Command.main`` (what CliRunner and click call) through ``run``, so tests see the
    exact error policy of the console script."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any) -> Any:
        sys.exit(run(args, self))


# ------------------------------------------------------------------------------------------------
# install-vggt
# ------------------------------------------------------------------------------------------------


@click.command(
    "install-vggt",
    cls=_Entry,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=f"\b\nDefault source:\n  {VGGT_SOURCE}",
)
@click.option("--source", metavar="URL_OR_PATH", help="pip requirement, git URL or local checkout of vggt.")
@click.option("--dry-run", is_flag=True, help="Print the pip command instead of running it.")
@click.option("--debug", is_flag=True, hidden=True)
def install_vggt(source: str | None, dry_run: bool, debug: bool) -> None:
    """Install the vggt package into this environment with pip --no-deps.

    vggt is not on PyPI, and its metadata pins numpy<2, which rerun-sdk 0.41 cannot use: a
    resolver refuses the pair. vggt's model code runs on numpy 2, so it is installed without its
    dependencies; its real runtime needs come with `pip install 'vggt-attn-rerun[vggt]'`.
    """
    from vggt_attn_rerun.core.models import vggt_install_command

    command = vggt_install_command(source)
    click.echo(shlex.join(command))
    if dry_run:
        return
    code = subprocess.call(command)
    if code:
        raise UserError(f"pip failed with exit code {code} (command above)")


# ------------------------------------------------------------------------------------------------
# The main command
# ------------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """Everything checked before the model loads."""

    images: Any  # images.LoadedImages
    queries: tuple[tuple[str, str], ...]  # (query text, where it came from: for error messages)
    grid: tuple[int, int, int] | None  # --query-grid: (frame, rows, cols)
    blocks: str
    kinds: tuple[str, ...]
    device: str
    autocast: Any  # torch.dtype | None
    sinks: Any  # sinks.SinkPlan, or None: --export only, nothing is logged
    export: Path | None = None


def _progress(desc: str, total: int | None = None, unit: str = "it") -> Any:
    """A tqdm bar on stderr; without ``total`` a status line for a step that cannot count."""
    from tqdm.auto import tqdm

    # disable=None: bars only on a terminal, so logs and pipes stay clean.
    fmt = None if total else "{desc} ..."
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, leave=False, bar_format=fmt)


@click.command(
    PROG,
    cls=_Entry,
    epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.argument("images", nargs=-1, required=True, metavar="IMAGES...")
@click.option(
    "-q",
    "--query",
    "queries",
    multiple=True,
    metavar="QUERY",
    help=f"Query token, repeatable: {QUERY_SYNTAX}. Default: the centre pixel of frame 0.",
)
@click.option(
    "--queries-file",
    metavar="PATH",
    help="Read queries from a file: one per line in the --query syntax; # starts a comment.",
)
@click.option(
    "--query-grid",
    metavar="RxC",
    help="R x C patch queries evenly spread over the patch grid of --frame (e.g. 8x8).",
)
@click.option(
    "--frame",
    "grid_frame",
    type=int,
    metavar="F",
    help="The view of --query-grid. Default: 0.",
)
@click.option(
    "--blocks",
    default="all",
    show_default=True,
    metavar="LIST",
    help="Blocks to capture: 0-23, 0,12,23, -1 (the last) or all.",
)
@click.option(
    "--kinds",
    default="global",
    show_default=True,
    metavar="KINDS",
    help="Attention to capture: global (across views), frame (within a view) or frame,global.",
)
@click.option(
    "--head",
    "focus_head",
    type=int,
    metavar="N",
    help="Head shown on the block timeline. Default: the mean over heads.",
)
@click.option(
    "--block",
    "focus_block",
    type=int,
    metavar="N",
    help="Block whose heads the head timeline shows. Default: the last captured block.",
)
@click.option(
    "--model",
    default=DEFAULT_MODEL,
    show_default=True,
    metavar="SPEC",
    help="tiny, random, a Hub id, a local folder or checkpoint file, or module:callable.",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...",
)
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    default="auto",
    show_default=True,
    help="Autocast dtype of the forward pass. auto: bfloat16 on Ampere+ CUDA, float16 on older CUDA, "
    "float32 on CPU. Attention rows are always computed in float32.",
)
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default="crop",
    show_default=True,
    help="crop: width to --image-size, centre-crop the height; pad: long side to --image-size, white pad.",
)
@click.option(
    "--image-size",
    type=int,
    default=518,
    show_default=True,
    metavar="PX",
    help="Model input width (crop) or long side (pad), a multiple of 14. VGGT was trained at 518.",
)
@click.option(
    "--points",
    type=click.Choice(["world_points", "depth"]),
    default="world_points",
    show_default=True,
    help="Point cloud from the point head, or from depth unprojected with the predicted cameras.",
)
@click.option("--conf-threshold", type=float, metavar="C", help="Keep points with confidence >= C.")
@click.option(
    "--conf-percentile",
    type=click.FloatRange(0, 100),
    default=50.0,
    show_default=True,
    help="Keep points above this confidence percentile (when --conf-threshold is not given).",
)
@click.option(
    "--max-points",
    type=click.IntRange(min=1),
    default=200_000,
    show_default=True,
    help="Subsample the point cloud to at most this many points.",
)
@click.option("--per-view-normalize", is_flag=True, help="Scale each view's heatmap to its own maximum.")
@click.option("--scale", type=click.Choice(["map", "global", "view"]), default="map", show_default=True,
              help="Colour scale: per (block, head) map shared by its views, one for all, or per view.")  # fmt: skip
@click.option("--gamma", type=click.FloatRange(0.05, 20), default=1.0, show_default=True,
              help="u8 = 255 * (p / vmax) ** gamma; below 1 lifts diffuse maps.")  # fmt: skip
@click.option("--clip-percentile", type=click.FloatRange(50, 100), default=100.0, show_default=True,
              help="vmax = this percentile of the scale's values (100 = max; 99: the top 1% saturate).")  # fmt: skip
@click.option("--rays", type=click.IntRange(0, 64), default=8, show_default=True,
              help="3D lines from the query point to its K most attended patches of other views.")  # fmt: skip
@click.option(
    "--grid-view",
    type=click.IntRange(min=0),
    metavar="FRAME",
    help="View shown behind the head grid. Default: the query's own frame.",
)
@click.option(
    "--colormap",
    type=click.Choice(COLORMAPS, case_sensitive=False),
    default="inferno",
    show_default=True,
    help="Colormap of the heatmaps.",
)
@click.option(
    "--ask",
    is_flag=True,
    help="After the run, read more queries from the terminal (FRAME:X,Y in pixels of the logged images, as the "
    "viewer's hover shows them, or FRAME:pROW,COL ...) and add them without a second forward pass, from a q/k "
    "cache (VGGT-1B: ~540 MB per 518x518 frame). The native viewer does not report clicks to Python in Rerun "
    "0.41; in notebooks clicks work (docs/interactive.md).",
)
@click.option("--save", metavar="OUT.rrd", help="Write the recording to a file (written whole or not at all).")
@click.option(
    "--export",
    metavar="RUN.npz",
    help="Also save the run (attention rows, predictions, images) to an .npz that `rerun RUN.npz` shows "
    "again without the model. With --headless and no other output: capture and export only.",
)
@click.option(
    "--connect",
    is_flag=False,
    flag_value=DEFAULT_URL,
    metavar="[URL]",
    help=f"Stream to a running viewer (default URL {DEFAULT_URL}) instead of spawning one.",
)
@click.option(
    "--serve",
    is_flag=True,
    help=f"Host a web viewer (http://localhost:{WEB_PORT}) and keep serving until Ctrl-C.",
)
@click.option("--headless", is_flag=True, help="Do not spawn a viewer (with --save: only write the file).")
@click.option("--overwrite", is_flag=True, help="Let --save and --export replace existing files.")
@click.option("--force", is_flag=True, help="Run even when the memory estimate says it will not fit.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def cli(**opts: Any) -> None:
    """Show where VGGT attends, in 2D and 3D, across the views of a scene, in the Rerun viewer.

    IMAGES are image files, folders (their images, sorted by name) or glob patterns. The first
    image is VGGT's reference view (frame 0).
    """
    _view(**opts)


def _view(images: tuple[str, ...], connect: str | None, **o: Any) -> None:
    if connect is not None and "://" not in connect:
        # `--connect a.jpg b.jpg`: the optional URL swallowed the first image.
        images, connect = (connect, *images), DEFAULT_URL
    plan = _check_command_line(images, connect, o)
    model = _load_model(o["model"], plan)
    _record(model, plan, o)


# -- step 1: cheap checks, before the model ------------------------------------------------------


def _check_command_line(images: Sequence[str], connect: str | None, o: dict[str, Any]) -> _Plan:
    """Every check that needs no model. Problems are usage errors (exit 2)."""
    try:
        return _plan(images, connect, o)
    except UserError as e:
        raise _BadInput(str(e)) from e


def _plan(image_args: Sequence[str], connect: str | None, o: dict[str, Any]) -> _Plan:
    from vggt_attn_rerun.core.images import expand_image_paths
    from vggt_attn_rerun.core.introspect import check_kinds
    from vggt_attn_rerun.viz.sinks import plan_sinks

    # Inputs first (images, options, queries), then where the output goes.
    paths = expand_image_paths(image_args)
    size = o["image_size"]
    if size < VGGT_PATCH_SIZE or size % VGGT_PATCH_SIZE:
        raise UserError(f"--image-size {size}: must be a positive multiple of {VGGT_PATCH_SIZE} (VGGT uses 518)")
    kinds = check_kinds(o["kinds"].split(","))
    _check_block_syntax(o["blocks"])
    for name in ("focus_head", "focus_block"):
        if o[name] is not None and o[name] < 0:
            raise UserError(f"--{name.removeprefix('focus_')} {o[name]}: must be >= 0")
    _check_model_file(o["model"])
    device, autocast = _resolve_device(o["device"], o["dtype"])
    grid = _parse_query_grid(o["query_grid"], o["grid_frame"], len(paths))
    file_queries = read_queries_file(o["queries_file"]) if o["queries_file"] else []
    loaded = _load_images(paths, o["mode"], size, VGGT_PATCH_SIZE)
    queries = [(q, f"--query {q}") for q in o["queries"]] + file_queries
    if not queries and grid is None:
        queries = [(_centre_query(loaded), "the default query")]
    # Provisional VGGT layout: catches bad and out-of-range queries now; checked again for the model.
    _resolve_queries(queries, grid, loaded, VGGT_PATCH_SIZE, VGGT_NUM_REGISTERS, warn=False)
    if o["grid_view"] is not None and o["grid_view"] >= len(paths):
        raise UserError(f"--grid-view {o['grid_view']}: valid frames are 0..{len(paths) - 1}")
    export = check_export_path(o["export"], o["overwrite"]) if o["export"] else None
    if o["ask"] and export is not None and o["headless"] and not (o["save"] or connect or o["serve"]):
        raise UserError("--ask with --export alone has nowhere to show new queries: add --save, --connect or --serve")
    if export is not None and o["headless"] and not (o["save"] or connect or o["serve"]):
        sinks = None  # export only: no recording to log
    else:
        sinks = plan_sinks(o["save"], connect, o["serve"], o["headless"], o["overwrite"])
    return _Plan(loaded, tuple(queries), grid, o["blocks"], kinds, device, autocast, sinks, export)


def _parse_query_grid(text: str | None, frame: int | None, num_frames: int) -> tuple[int, int, int] | None:
    """``--query-grid RxC`` and ``--frame F`` -> (frame, rows, cols); the patch grid is checked later."""
    if text is None:
        if frame is not None:
            raise UserError(f"--frame {frame}: --frame picks the view of --query-grid; add --query-grid RxC")
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise UserError(f"--query-grid {text}: expected ROWSxCOLS with both >= 1, e.g. 8x8")
    frame = 0 if frame is None else frame
    if not 0 <= frame < num_frames:
        raise UserError(f"--frame {frame}: valid frames are 0..{num_frames - 1}")
    return frame, int(m.group(1)), int(m.group(2))


def read_queries_file(path: str | Path) -> list[tuple[str, str]]:
    """Queries of a ``--queries-file``: (text, "--queries-file PATH line N") per query line.

    One query per line in the --query syntax; ``#`` starts a comment (whole line or the end of
    one); blank lines are skipped. The syntax of each line is checked when the layout is known.
    """
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"--queries-file {path}: file does not exist") from None
    except IsADirectoryError:
        raise UserError(f"--queries-file {path}: is a folder, give a text file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--queries-file {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        query = line.split("#", 1)[0].strip()
        if query:
            out.append((query, f"--queries-file {path} line {n}"))
    if not out:
        raise UserError(f"--queries-file {path}: no queries in it (one per line, # starts a comment)")
    return out


def check_export_path(path: str | Path, overwrite: bool = False) -> Path:
    """Refuse an --export path that cannot work, before the model loads (as --save)."""
    from vggt_attn_rerun.viz.sinks import check_output_path

    return check_output_path(path, "--export", ".npz", "the run file format", overwrite)


def _check_block_syntax(text: str) -> None:
    from vggt_attn_rerun.core.tokens import parse_index_list

    try:
        parse_index_list(text, _ANY_DEPTH)
    except UserError as e:
        raise UserError(f"cannot parse --blocks {text!r}: use e.g. 0-23, 0,12,23, -1 (the last) or all") from e


def _check_model_file(spec: str) -> None:
    """A file given as --model must look like a checkpoint; reading 4 GB to find out it is not is slow."""
    path = Path(spec).expanduser()
    if not path.is_file():
        return
    with open(path, "rb") as f:
        head = f.read(16)
    size = path.stat().st_size
    is_zip = head[:4] == b"PK\x03\x04"  # torch.save since 1.6
    is_pickle = head[:1] == b"\x80"  # legacy torch.save / pickle protocol 2+
    header_len = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
    is_safetensors = head[8:9] == b"{" and 0 < header_len <= size - 8
    if not (is_zip or is_pickle or is_safetensors):
        raise UserError(
            f"--model {spec} is not a checkpoint (neither a torch .pt/.pth file nor .safetensors); "
            f"valid are {SPEC_SYNTAX}"
        )


def _resolve_device(device: str, dtype: str) -> tuple[str, Any]:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"--device {device}: unknown device; valid are auto, cpu, cuda, cuda:N, mps") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available to this torch; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: valid CUDA devices are 0..{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: MPS is not available; use --device cpu")
    if dtype == "auto":
        if dev.type != "cuda":
            return str(dev), None
        major, _ = torch.cuda.get_device_capability(dev)
        return str(dev), torch.bfloat16 if major >= 8 else torch.float16
    return str(dev), None if dtype == "float32" else getattr(torch, dtype)


def _load_images(paths: Sequence[Path], mode: str, size: int, patch: int) -> Any:
    from vggt_attn_rerun.core.images import load_images

    loaded = load_images(paths, mode=mode, target_size=size, patch_size=patch)
    for path, t in zip(paths, loaded.transforms, strict=True):
        if min(t.orig_w, t.orig_h) < patch:
            # Handled, not refused: vggt's own preprocessing upscales such images too.
            click.echo(
                f"warning: image {path} is only {t.orig_w}x{t.orig_h} pixels: upscaled to "
                f"{round(t.orig_w * t.scale_x)}x{round(t.orig_h * t.scale_y)}",
                err=True,
            )
    return loaded


def _centre_query(loaded: Any) -> str:
    w, h = loaded.transforms[0].original_size
    return f"0:{w / 2:g},{h / 2:g}"


def _resolve_queries(
    texts: Sequence[tuple[str, str]],
    grid: tuple[int, int, int] | None,
    loaded: Any,
    patch: int,
    registers: int,
    warn: bool = True,
) -> list[Any]:
    """The queries in order: texts (-q, then --queries-file), then the --query-grid; a token named
    twice is used once (with a warning when ``warn``)."""
    from vggt_attn_rerun.api import query_grid
    from vggt_attn_rerun.core.tokens import TokenLayout, parse_query

    h, w = loaded.layout_hw
    layout = TokenLayout.for_image_size(len(loaded.transforms), h, w, patch, registers)
    found = []
    for text, where in texts:
        try:
            found.append((parse_query(text, layout, loaded.transforms), text))
        except UserError as e:
            raise UserError(f"{where}: {e}") from e
    if grid is not None:
        frame, rows, cols = grid
        try:
            cells = query_grid(layout, frame, rows, cols)
        except UserError as e:
            raise UserError(f"--query-grid {rows}x{cols}: {e}") from e
        found += [(q, f"{q.frame}:p{q.patch(layout)[0]},{q.patch(layout)[1]}") for q in cells]
    out, seen = [], {}
    for q, text in found:
        key = (q.frame, q.local)
        if key in seen:
            if warn:
                click.echo(f"warning: query {text!r} is the same token as {seen[key]!r}: using it once", err=True)
            continue
        seen[key] = text
        out.append(q)
    return out


# -- step 2: the model ---------------------------------------------------------------------------


def _load_model(spec: str, plan: _Plan) -> Any:
    from vggt_attn_rerun.core.models import load_model

    with _progress(f"loading model {spec}"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(spec, device=plan.device)
    for w in caught:
        click.echo(f"warning: {_one_line_text(str(w.message))}", err=True)
    return model


# -- step 3: checks against the model, then the recording -----------------------------------------


def _record(model: Any, plan: _Plan, o: dict[str, Any]) -> None:
    import rerun as rr

    from vggt_attn_rerun import api
    from vggt_attn_rerun.core.introspect import model_depth, model_heads, model_layout
    from vggt_attn_rerun.core.resources import translate_oom
    from vggt_attn_rerun.core.tokens import parse_index_list
    from vggt_attn_rerun.viz.options import RecordingOptions
    from vggt_attn_rerun.viz.sinks import open_sinks, serve_forever

    images = plan.images
    patch = model_patch_size(model)
    if patch != VGGT_PATCH_SIZE:  # a custom model with another patch size needs its own resize
        images = _load_images(images.paths, o["mode"], o["image_size"], patch)
    h, w = images.layout_hw
    layout = model_layout(model, len(images.transforms), h, w)
    queries = _resolve_queries(plan.queries, plan.grid, images, layout.patch_size, layout.num_registers)
    depth, heads = model_depth(model), model_heads(model)
    try:
        blocks = parse_index_list(plan.blocks, depth)
    except UserError as e:
        raise UserError(f"--blocks {plan.blocks}: {e}") from e
    focus_head, focus_block = _check_focus(o["focus_head"], o["focus_block"], blocks, depth, heads)
    qk_cache = 0
    if o["ask"]:
        from vggt_attn_rerun.core.qk_cache import model_qk_cache_bytes

        qk_cache = model_qk_cache_bytes(model, layout, len(blocks), len(plan.kinds))
    _check_memory(model, plan, layout, len(queries), len(blocks), heads, o["force"], extra=qk_cache)

    options = RecordingOptions(
        kinds=plan.kinds,
        focus_head=focus_head,
        focus_block=focus_block,
        points=o["points"],
        conf_threshold=o["conf_threshold"],
        conf_percentile=o["conf_percentile"],
        max_points=o["max_points"],
        per_view_normalize=o["per_view_normalize"],
        scale=o["scale"],
        gamma=o["gamma"],
        clip_percentile=o["clip_percentile"],
        rays=o["rays"],
        grid_view=o["grid_view"],
        colormap=o["colormap"],
    )
    what = (
        f"{_plural(layout.num_frames, 'view')}, {_plural(len(queries), 'query', 'queries')}, "
        f"{_plural(len(blocks), 'block')} of {'+'.join(plan.kinds)} attention"
    )
    if plan.sinks is None:  # --export only: capture, no recording
        with _forward_progress(model), translate_oom(plan.device):
            result = api.capture_run(model, images, queries, blocks=blocks, options=options,
                                     autocast_dtype=plan.autocast)  # fmt: skip
        _export(plan.export, result, images)
        click.echo(f"{what}: exported {plan.export}", err=True)
        return
    rec = rr.RecordingStream(APP_ID, recording_id=uuid.uuid4())
    # No default blueprint on the sinks: record_attention sends its layout into the stream as
    # the active one, which lands in the file too and, unlike a default, replaces the stale
    # layout a running viewer keeps from an earlier run of another size.
    with open_sinks(rec, plan.sinks) as sinks:
        with _forward_progress(model), translate_oom(plan.device):
            result, _ = api.record_attention(
                model, images, queries, blocks=blocks, options=options, recording=rec,
                autocast_dtype=plan.autocast, application_id=APP_ID, keep_qk=o["ask"],
            )  # fmt: skip
        # Inside: an export that fails removes the partial .rrd too (the run's files come whole or not at all).
        if plan.export is not None:
            _export(plan.export, result, images)
        if o["ask"]:  # the sinks stay open: typed queries stream to the viewer and into --save
            from vggt_attn_rerun.interactive import QuerySession, prompt_queries

            click.echo(f"{what}: logged; type more queries (pixels of the logged images), q to stop", err=True)
            session = QuerySession(rec, result, images, options)
            prompt_queries(session, write=lambda line: click.echo(line, err=True))
    done = plan.sinks.describe() + (f", exported {plan.export}" if plan.export is not None else "")
    click.echo(f"{what}: {done}", err=True)
    if plan.sinks.serve:
        serve_forever(sinks, echo=lambda line: click.echo(line, err=True))


def _export(path: Path, result: Any, images: Any) -> None:
    from vggt_attn_rerun.io.runfile import save_run

    with _progress(f"exporting {path}"):
        save_run(path, result, images)


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


def _check_focus(
    head: int | None, block: int | None, blocks: Sequence[int], depth: int, heads: int
) -> tuple[int | None, int | None]:
    if head is not None and not 0 <= head < heads:
        raise UserError(f"--head {head} does not exist: the model has {heads} heads, valid are 0..{heads - 1}")
    if block is not None:
        if not 0 <= block < depth:
            raise UserError(f"--block {block} does not exist: valid blocks are 0..{depth - 1}")
        if block not in blocks:
            shown = ",".join(map(str, blocks))
            raise UserError(f"--block {block} was not captured: captured blocks are {shown} (see --blocks)")
    return head, block


def _check_memory(
    model: Any, plan: _Plan, layout: Any, queries: int, blocks: int, heads: int, force: bool, extra: int = 0
) -> None:
    """``extra``: bytes kept on top of the estimate (the q/k cache of --ask)."""
    from vggt_attn_rerun.core.introspect import find_aggregator
    from vggt_attn_rerun.core.resources import available_memory_bytes, check_memory, estimate_memory

    attn = find_aggregator(model).frame_blocks[0].attn
    h, w = layout.image_size
    estimate = estimate_memory(
        layout.num_frames, h, w, plan.autocast, sum(p.numel() for p in model.parameters()), queries, blocks,
        plan.kinds, heads, model_embed_dim(model), patch_size=layout.patch_size,
        num_registers=layout.num_registers, fused_attention=bool(getattr(attn, "fused_attn", True)),
    )  # fmt: skip
    # The weights are already resident, so compare only what the forward pass adds.
    line = check_memory(estimate.transient + extra, available_memory_bytes(plan.device), plan.device, force)
    if line:
        click.echo(line, err=True)


@contextmanager
def _forward_progress(model: Any) -> Iterator[None]:
    """A bar that advances with every aggregator block, then one for the logging."""
    from vggt_attn_rerun.core.introspect import find_aggregator

    agg = find_aggregator(model)
    modules = [*agg.frame_blocks, *agg.global_blocks]
    forward = _progress("forward pass", total=len(modules), unit="block")
    logging_bar: list[Any] = []

    def block_done(*_: Any) -> None:
        forward.update(1)

    def model_done(*_: Any) -> None:
        forward.close()
        logging_bar.append(_progress("logging to Rerun"))

    handles = [m.register_forward_hook(block_done) for m in modules]
    handles.append(model.register_forward_hook(model_done))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        forward.close()
        for bar in logging_bar:
            bar.close()


if __name__ == "__main__":
    main()
