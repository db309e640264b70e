"""``vggt-attn-rerun IMAGES...``: click parses, one ``api.RunOptions`` is built, ``api.run`` runs.

Nothing here knows how a run works: the order of work (every cheap check before the model
loads, so that a typo costs a second and not a 5 GB download) is ``api.run``'s. This module
holds the flags, the help text and the error policy: one ``error: ...`` line on stderr and the
exit code (0 done, 1 error while running, 2 bad input, 130 interrupted); tracebacks only with
--debug.
"""

from __future__ import annotations

import functools
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import click

from vggt_attn_rerun import api
from vggt_attn_rerun.cli import checks, install
from vggt_attn_rerun.cli.batch import batch
from vggt_attn_rerun.cli.compare import compare
from vggt_attn_rerun.cli.demo import demo
from vggt_attn_rerun.cli.outputs import COMBINING, output_options, take_outputs
from vggt_attn_rerun.cli.progress import progress
from vggt_attn_rerun.core.architectures import ARCH_CHOICES
from vggt_attn_rerun.core.images import MAX_IMAGE_SIZE, MODES
from vggt_attn_rerun.core.loading import DEFAULT_MODEL
from vggt_attn_rerun.core.resources import DTYPES
from vggt_attn_rerun.core.tokens import QUERY_SYNTAX, VGGT_IMAGE_SIZE
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.viz.colormap import COLORMAPS
from vggt_attn_rerun.viz.options import RecordingOptions
from vggt_attn_rerun.viz.sinks import INTERACTIVE_PORT, WEB_PORT

PROG = "vggt-attn-rerun"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

_EXAMPLES = (
    ("photos/", "open the viewer on every image in photos/"),
    ("a.jpg b.jpg c.jpg -q 0:320,240 -q 1:p10,12", "two queries: a photo pixel, a patch"),
    ('"scene/*.png" --kinds frame,global --blocks 0,12,23 --focus-head 3', "three blocks, head 3"),
    ("photos/ --model tiny --save attn.rrd", "write the file only (no viewer)"),
    ("photos/ --save attn.rrd --spawn", "write the file and open the viewer"),
    ("photos/ --stdout | rerun -", "pipe the recording into a viewer"),
    ("photos/ --serve", f"web viewer on http://localhost:{WEB_PORT}"),
    ("photos/ --connect", "stream to a viewer that is already running"),
    ("photos/ --query-grid 8x8 --frame 1", "64 patch queries evenly spread over frame 1, one forward pass"),
    ("photos/ --queries-file queries.txt", "one query per line (-q syntax, # comments)"),
    ("photos/ --export run.npz", "save the run (no viewer); later: rerun run.npz"),
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
{COMBINING} --save and --export files appear together when the run
succeeds, or neither does.

\b
Other commands:
  {PROG} demo [--save demo.rrd]
      the offline demo: generated photos, a constructed model (no network, no vggt)
  {PROG} install-vggt [--source URL_OR_PATH] [--dry-run]
      install the vggt package with pip --no-deps (its numpy<2 pin clashes with rerun-sdk)
  {PROG} batch SCENES --out DIR [--engine local|ray] ...
      dataset mode: summaries and correspondence scores over many scenes (batch --help)
  {PROG} compare IMAGES --model A --model B [-q QUERY ...] [--save OUT.rrd]
      two or more models side by side in one recording (compare --help)
  {PROG} ablate IMAGES --what heads|blocks|knockout [--ablation zero|mean] ...
      what each head or block does: ablate it, measure depth, points, cameras (ablate --help)

\b
Exit codes: 0 done, 1 error while running, 2 bad command line or input, 130 interrupted.
"""
)


# ------------------------------------------------------------------------------------------------
# Error policy
# ------------------------------------------------------------------------------------------------


def run(argv: Sequence[str] | None = None, command: click.Command | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``) and return the exit code.

    ``command`` None (or the main command) dispatches: ``install-vggt ...``, ``batch ...``, ``compare ...``,
    ``demo ...``, ``ablate ...`` or the main command.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if command is None or command is cli:
        # A group would put its own options and usage line before `IMAGES...`; a first word
        # that is a subcommand name is unambiguous enough (a folder can be passed as ./install-vggt).
        subcommands = {"install-vggt": install_vggt, "batch": batch, "compare": compare, "demo": demo}
        sub = subcommands.get(args[0] if args else "")
        if sub is None and args and args[0] == "ablate":  # imported here: it reuses this module's flags
            from vggt_attn_rerun.cli.ablate import ablate as sub
        command, args = (sub, args[1:]) if sub is not None else (cli, args)
    prog = PROG if command is cli else f"{PROG} {command.name}"
    debug = "--debug" in args
    try:
        with warnings.catch_warnings():
            if not debug:  # Python's own format adds the file and source line: keep to one line
                warnings.showwarning = _show_warning
            with command.make_context(prog, args) as ctx:
                command.invoke(ctx)
        return EXIT_OK
    except click.exceptions.Exit as e:  # --help, or ctx.exit(code)
        return e.exit_code
    except api.BadInput as e:
        return _fail(str(e), EXIT_USAGE, debug)
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
        first = (str(e).strip().splitlines() or [""])[0]
        return _fail(f"unexpected {type(e).__name__}: {first} (run with --debug for the traceback)", EXIT_ERROR, debug)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _echo(line: str) -> None:
    click.echo(_one_line(line), err=True)


def _show_warning(message: Warning | str, category: type, filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:  # fmt: skip
    _echo(f"warning: {message}")


def _fail(message: str, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    _echo(f"error: {message}")
    return code


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line and exit with its code (``vggt_attn_rerun.cli.entry``, the console script)."""
    from vggt_attn_rerun.cli import entry

    entry(argv)


class _Entry(click.Command):
    """Routes ``Command.main`` (what CliRunner and click call) through ``run``, so tests see the
    exact error policy of the console script."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any) -> Any:
        sys.exit(run(args, self))


# ------------------------------------------------------------------------------------------------
# install-vggt
# ------------------------------------------------------------------------------------------------


@click.command("install-vggt", cls=_Entry, help=install.DOC, epilog=install.EPILOG,
               context_settings={"help_option_names": ["-h", "--help"]})  # fmt: skip
@click.option("--source", metavar="PATH_OR_URL", help="pip requirement, git URL (a mirror) or local clone of vggt.")
@click.option("--dry-run", is_flag=True, help="Print the pip command instead of running it.")
@click.option("--debug", is_flag=True, hidden=True)
def install_vggt(source: str | None, dry_run: bool, debug: bool) -> None:
    install.install(source, dry_run)


# ------------------------------------------------------------------------------------------------
# The main command: flags -> RunOptions -> api.run
# ------------------------------------------------------------------------------------------------

_ASK_HELP = (
    "After the run, read more queries from the terminal (FRAME:X,Y in pixels of the logged images, as the viewer's "
    "hover shows them, or FRAME:pROW,COL ...) and add them without a second forward pass, from a q/k cache "
    "(VGGT-1B: ~540 MB per 518x518 frame). The native viewer does not report clicks to Python in Rerun 0.41; in "
    "notebooks clicks work (docs/interactive.md)."
)
_INTERACTIVE_HELP = (
    "Experimental. After the run, serve it in a browser page (the rerun-notebook viewer under Voila) and print its "
    "URL: a click on a pixel of any image adds that pixel as a query, from a q/k cache (no second forward pass). "
    "Ctrl-C stops; --save and --export then hold every clicked query (docs/interactive.md). Needs "
    "pip install 'vggt-attn-rerun[interactive]'."
)


def _gone(old: str, instead: str, flag: bool = False) -> Callable[[Any], Any]:
    """A hidden option of a former spelling: given, it fails in one line that names its replacement."""

    def refuse(ctx: click.Context, param: click.Parameter, value: object) -> None:
        if value:
            raise click.UsageError(f"{old} is no longer an option: use {instead}")

    return click.option(old, is_flag=flag, hidden=True, expose_value=False, callback=refuse)


_OPTIONS = (
    click.argument("images", nargs=-1, required=True, metavar="IMAGES..."),
    click.option("-q", "--query", "queries", multiple=True, metavar="QUERY",
                 help=f"Query token, repeatable: {QUERY_SYNTAX}. Default: the centre pixel of frame 0."),
    click.option("--queries-file", metavar="PATH",
                 help="Read queries from a file: one per line in the --query syntax; # starts a comment."),
    click.option("--query-grid", metavar="RxC",
                 help="R x C patch queries evenly spread over the patch grid of --frame (e.g. 8x8)."),
    click.option("--frame", "grid_frame", type=click.IntRange(min=0), metavar="F",
                 help="The view of --query-grid. Default: 0."),
    click.option("--blocks", default="all", show_default=True, metavar="LIST",
                 help="Blocks to capture: 0-23, 0,12,23, -1 (the last) or all."),
    click.option("--kinds", default="global", show_default=True, metavar="KINDS",
                 help="Attention to capture: global (across views), frame (within a view) or frame,global."),
    click.option("--focus-head", "focus_head", type=click.IntRange(min=0), metavar="N",
                 help="Head shown on the block timeline. Default: the mean over heads."),
    click.option("--focus-block", "focus_block", type=click.IntRange(min=0), metavar="N",
                 help="Block whose heads the head timeline shows. Default: the last captured block."),
    _gone("--head", "--focus-head N"),
    _gone("--block", "--focus-block N (the block whose heads the head timeline shows; --blocks: those captured)"),
    click.option("--model", default=DEFAULT_MODEL, show_default=True, metavar="SPEC",
                 help="tiny, random, a Hub id, a local folder or checkpoint file, or module:callable."),
    click.option("--arch", type=click.Choice(("auto", *ARCH_CHOICES)),
                 default="auto", show_default=True,
                 help="Architecture of --model (checkpoints, random, tiny). auto: from a known Hub id or the "
                 "model's type, else vggt."),
    click.option("--device", default="auto", show_default=True,
                 help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, mps."),
    click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True,
                 help="Autocast dtype of the forward pass. auto: bfloat16 on Ampere+ CUDA, float16 on older CUDA, "
                 "float32 on CPU. Attention rows are always computed in float32."),
    click.option("--mode", type=click.Choice(MODES), default="crop", show_default=True,
                 help="crop: width to --image-size, centre-crop the height; pad: long side to --image-size, "
                 "white pad."),
    click.option("--image-size", type=int, default=VGGT_IMAGE_SIZE, show_default=True, metavar="PX",
                 help=f"Model input width (crop) or long side (pad), a multiple of 14 up to {MAX_IMAGE_SIZE}. "
                 f"VGGT was trained at {VGGT_IMAGE_SIZE}."),
    click.option("--points", type=click.Choice(["world_points", "depth"]), default="world_points", show_default=True,
                 help="Point cloud from the point head, or from depth unprojected with the predicted cameras."),
    click.option("--conf-threshold", type=checks.FiniteFloat(), metavar="C", help="Keep points with confidence >= C."),
    click.option("--conf-percentile", type=checks.FiniteFloat(0, 100), default=50.0, show_default=True,
                 help="Keep points above this confidence percentile (when --conf-threshold is not given)."),
    click.option("--max-points", type=click.IntRange(min=1), default=200_000, show_default=True,
                 help="Subsample the point cloud to at most this many points."),
    _gone("--per-view-normalize", "--scale view", flag=True),
    click.option("--scale", type=click.Choice(["map", "global", "view"]), default="map", show_default=True,
                 help="Colour scale: per (block, head) map shared by its views, one for all, or per view."),
    click.option("--gamma", type=click.FloatRange(0.05, 20), default=1.0, show_default=True,
                 help="u8 = 255 * (p / vmax) ** gamma; below 1 lifts diffuse maps."),
    click.option("--clip-percentile", type=click.FloatRange(50, 100), default=100.0, show_default=True,
                 help="vmax = this percentile of the scale's values (100 = max; 99: the top 1% saturate)."),
    click.option("--rays", type=click.IntRange(0, 64), default=8, show_default=True,
                 help="3D lines from the query point to its K most attended patches of other views."),
    click.option("--peaks", type=click.IntRange(0, 64), default=3, show_default=True,
                 help="Outline the K hottest patches of each view (and box their 3D points); 0 = none."),
    click.option("--grid-view", type=click.IntRange(min=0), metavar="FRAME",
                 help="View shown behind the head grid. Default: the query's own frame."),
    click.option("--colormap", type=click.Choice(COLORMAPS, case_sensitive=False), default="inferno",
                 show_default=True, help="Colormap of the heatmaps."),
    click.option("--cameras", metavar="PATH",
                 help="True cameras of the photos (cameras.npz or a COLMAP sparse folder, matched by file name): "
                 "the consistency scores use them (reference = truth) instead of VGGT's own."),
    click.option("--ask", is_flag=True, help=_ASK_HELP),
    click.option("--interactive", is_flag=True, help=_INTERACTIVE_HELP),
    click.option("--port", type=click.IntRange(1, 65535), default=INTERACTIVE_PORT, show_default=True,
                 help="Port of the --interactive page (on 127.0.0.1; forward it with ssh -L from a remote machine)."),
    click.option("--export", metavar="RUN.npz",
                 help="Also save the run (attention rows, predictions, images) to an .npz that `rerun RUN.npz` "
                 "shows again without the model. Alone: capture and export only."),
    output_options("--save and --export"),
    click.option("--force", is_flag=True, help="Run even when the memory estimate says it will not fit."),
    click.option("--debug", is_flag=True, help="Show tracebacks."),
)  # fmt: skip


def _with_options(f: Any) -> Any:
    for decorate in reversed(_OPTIONS):
        f = decorate(f)
    return f


@click.command(PROG, cls=_Entry, epilog=EPILOG,
               context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})  # fmt: skip
@_with_options
def cli(**flags: Any) -> None:
    """Show where VGGT attends, in 2D and 3D, across the views of a scene, in the Rerun viewer.

    IMAGES are image files, folders (their images, sorted by name) or glob patterns. The first
    image is VGGT's reference view (frame 0).
    """
    options = run_options(**flags)
    callbacks = api.RunCallbacks(echo=_echo, progress=progress, ask=_ask if options.ask else None)
    if options.interactive:
        from vggt_attn_rerun.interactive.web import check_web_dependencies, serve_run

        check_web_dependencies()
        callbacks.serve_clicks = functools.partial(serve_run, echo=_echo)
    api.run(options, callbacks)


def run_options(images: tuple[str, ...], **f: Any) -> api.RunOptions:
    """The flags as one typed ``api.RunOptions`` (UserError for the command line's own text)."""
    try:
        outputs, images = take_outputs(f, images)
        queries = [(q, f"--query {q}") for q in f["queries"]]
        if f["queries_file"]:
            queries += checks.read_queries_file(f["queries_file"])
        checks.check_model_file(f["model"])
        recording = RecordingOptions(
            kinds=tuple(f["kinds"].split(",")), focus_head=f["focus_head"], focus_block=f["focus_block"],
            grid_view=f["grid_view"], points=f["points"], conf_threshold=f["conf_threshold"],
            conf_percentile=f["conf_percentile"], max_points=f["max_points"],
            scale=f["scale"], gamma=f["gamma"],
            clip_percentile=f["clip_percentile"], rays=f["rays"], peaks=f["peaks"], colormap=f["colormap"],
            cameras=f["cameras"],
        )  # fmt: skip
        return api.RunOptions(
            images=images, queries=tuple(queries), query_grid=checks.parse_query_grid(f["query_grid"], f["grid_frame"]),
            blocks=f["blocks"], recording=recording, model=f["model"], arch=f["arch"], device=f["device"],
            dtype=f["dtype"], mode=f["mode"], image_size=f["image_size"], outputs=outputs, export=f["export"],
            ask=f["ask"], force=f["force"], interactive=f["interactive"], port=f["port"],
        )  # fmt: skip
    except api.BadInput:
        raise
    except UserError as e:
        raise api.BadInput(str(e)) from e


def _ask(rec: Any, result: Any, images: Any, options: RecordingOptions) -> int:
    """--ask: typed queries after the run, each from the q/k cache (no forward pass)."""
    from vggt_attn_rerun.cli.prompt import ask_queries

    return ask_queries(rec, result, images, options, echo=_echo)
