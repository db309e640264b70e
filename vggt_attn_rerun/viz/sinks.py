"""Where a recording goes, by Rerun's script conventions: a viewer, a file, a pipe, or several.

Rerun's own scripts (``rr.script_add_args`` / ``rr.script_setup``) pick ONE sink in this order:
``--stdout`` > ``--serve`` > ``--connect`` > ``--save`` > spawn a viewer unless ``--headless``.
``plan_sinks`` follows that order for the default (a viewer is spawned only when no other
output was asked for), and lets ``--save`` go along with a viewer (``--spawn``, ``--connect``,
``--serve``): the file is written as well. ``--stdout`` pipes the recording and nothing else.

A saved recording is never written under its final name until it is complete: Rerun's file
sink streams it, as it is logged, through a named pipe (``io.streamfile``) into a temporary file
beside the target, which ``io.atomic.commit`` moves in place with the other files of the run
(all or nothing). Memory does not grow with the file; an error, a full disk or Ctrl-C leaves no
partial file, and a full disk is reported in one line. The file ends with Rerun's footer (an index
of every chunk, which ``rerun rrd verify`` requires): Rerun keeps that index in memory until the
file closes, about 12 KiB a chunk (a few hundred chunks a query), the one part of ``--save`` that
grows with the recording (``SinkPlan.footer=False`` leaves it out). Streams that a viewer reads
as they come (``--stdout``, the importer) carry no footer: it would only cost memory
(``stream_sinks``). Two cases buffer the recording in memory
instead (a Rerun ``BinaryStream``, written when the run is complete): ``--serve`` (its server
keeps the whole recording in memory for the viewers anyway, and the file sink's closing footer
could only be written by stopping the server) and platforms without named pipes.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.io import streamfile
from vggt_attn_rerun.io.atomic import PARTIAL_MARK, PendingFile, PendingWriter
from vggt_attn_rerun.io.pipe import StdoutFailed, StdoutRelay, check_stdout
from vggt_attn_rerun.viz.paths import APPLICATION_ID

if TYPE_CHECKING:  # rerun is imported where it is used: the checks above need none of it
    import argparse

    import rerun as rr
    import rerun.blueprint as rrb

DEFAULT_URL = "rerun+http://127.0.0.1:9876/proxy"
URL_SCHEMES = ("rerun://", "rerun+http://", "rerun+https://")
VIEWER_PORT = 9876
WEB_PORT = 9090
INTERACTIVE_PORT = 8866  # --interactive's page (Voila's own default port)
# A viewer that went away must not hang the CLI forever in flush.
FLUSH_TIMEOUT_S = 60.0
# Long enough for a viewer on another machine, short enough not to look like a hang.
PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Outputs:
    """Where a recording goes, as asked: Rerun's script flags (``rr.script_add_args``) with
    ``--spawn`` and ``--overwrite``. The options of every command that records (``RunOptions``,
    ``CompareOptions``) hold one; ``plan_sinks`` checks it and decides the sinks.

    With none of ``save``, ``stdout``, ``connect``, ``serve`` and ``headless`` a viewer is spawned
    (Rerun's default); ``save`` alone writes the file and opens nothing.

    Attributes:
        save: write the recording to this ``.rrd`` file, whole or not at all; None: no file.
        spawn: also open a native viewer when ``save``, ``connect`` or ``serve`` is given.
        stdout: stream the recording to standard output (``... | rerun -``); nothing else goes with it.
        connect: URL of a running viewer to stream to (``DEFAULT_URL``), or None.
        serve: host a gRPC server and a web viewer, and keep serving until Ctrl-C.
        headless: never spawn a viewer.
        overwrite: ``save`` (and a run's ``export``) may replace an existing file.
    """

    save: str | os.PathLike[str] | None = None
    spawn: bool = False
    stdout: bool = False
    connect: str | None = None
    serve: bool = False
    headless: bool = False
    overwrite: bool = False


@dataclass(frozen=True)
class SinkPlan:
    """The sinks of one run, as ``plan_sinks`` decided them.

    Attributes:
        outputs: the outputs as decided: ``save`` a checked ``Path``, ``connect`` a checked URL,
            ``spawn`` true whenever a viewer is started (asked for, or Rerun's default).
        viewer: the ``rerun`` executable a spawned viewer runs.
        grpc_port, web_port, open_browser: where ``--spawn`` and ``--serve`` listen; whether
            ``--serve`` opens a browser.
        relay: also keep the recording's bytes in a ``rr.BinaryStream`` (``OpenSinks.page_stream``)
            for a viewer the caller feeds itself (``--interactive``: the browser page).
        footer: end the ``save`` file with Rerun's footer, the index of every chunk that
            ``rerun rrd verify`` requires; Rerun holds it in memory until the file closes (about
            12 KiB a chunk). Without it the file grows on disk only; ``rerun rrd optimize`` adds it later.
    """

    outputs: Outputs = field(default_factory=Outputs)
    viewer: str | None = None
    grpc_port: int = VIEWER_PORT
    web_port: int = WEB_PORT
    open_browser: bool = True
    relay: bool = False
    footer: bool = True

    @property
    def empty(self) -> bool:
        """Nothing receives the recording (``--export --headless``: capture and export only)."""
        o = self.outputs
        return not (o.save or o.spawn or o.stdout or o.connect or o.serve or self.relay)

    def describe(self) -> str:
        o = self.outputs
        parts = []
        if o.save is not None:
            parts.append(f"saved {o.save}")
        if o.spawn:
            parts.append("sent to the spawned viewer")
        if o.stdout:
            parts.append("written to stdout")
        if o.connect:
            parts.append(f"sent to {o.connect}")
        if o.serve:
            parts.append("served to the web viewer")
        if self.relay:
            parts.append("shown in the browser page")
        return ", ".join(parts)


def check_url(url: str) -> str:
    if not url.startswith(URL_SCHEMES) or not url.rstrip("/").endswith("/proxy"):
        raise UserError(
            f"--connect {url}: not a Rerun viewer URL; expected e.g. {DEFAULT_URL} "
            f"(scheme {', '.join(s.rstrip('/') for s in URL_SCHEMES)}, path /proxy)"
        )
    return url


def _host_port(url: str) -> tuple[str, int]:
    scheme, _, rest = url.partition("://")
    parts = urlsplit(("https" if scheme in ("rerun", "rerun+https") else "http") + "://" + rest)
    return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)


def check_viewer_listening(url: str) -> None:
    """Refuse --connect when nothing listens at ``url``: the gRPC client would otherwise retry
    silently and the run would only fail when flushing, after all the work."""
    host, port = _host_port(url)
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as e:
        raise UserError(
            f"--connect {url}: no Rerun viewer is listening there ({e.strerror or e}); start one with "
            f"`rerun`, or leave out --connect to spawn one"
        ) from e


def check_port_free(port: int, what: str, option: str = "--serve") -> None:
    """Refuse --serve (or ``option``) early when its port is taken (found otherwise only after the forward pass)."""
    with socket.socket() as probe:
        # SO_REUSEADDR, as Rerun's servers bind: a port left in TIME_WAIT by an earlier run is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))  # the servers bind every interface too
        except OSError as e:
            raise UserError(
                f"{option}: port {port} for the {what} is taken ({e.strerror or e}); is another viewer running?"
            ) from e


def check_output_path(
    path: str | os.PathLike[str], option: str, suffix: str, why: str, overwrite: bool = False
) -> Path:
    """Refuse an output path that cannot work, before any expensive work is done.

    The folder must exist and take a new file (probed by creating and removing one, since
    permission bits say nothing for root or ACLs); the name must end in ``suffix`` and nothing
    may be there unless ``overwrite``. A symbolic link counts as taken: with ``overwrite`` the
    link itself is replaced by the new file, the file it points to is left as it is (see
    ``io.atomic``). Errors name the ``option`` (``--save``, ``--export``).
    """
    target = Path(path).expanduser()
    if target.suffix.lower() != suffix:
        raise UserError(f"{option} {path}: the file name must end in {suffix} ({why})")
    folder = target.parent
    if not folder.exists():
        raise UserError(f"{option} {path}: folder {folder} does not exist")
    if not folder.is_dir():
        raise UserError(f"{option} {path}: {folder} is not a folder")
    if target.is_dir():
        raise UserError(f"{option} {path}: is a folder; give a file name ending in {suffix}")
    if os.path.lexists(target) and not overwrite:
        what = "is a symbolic link" if target.is_symlink() else "file exists"
        raise UserError(f"{option} {path}: {what}; pass --overwrite to replace it")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}{PARTIAL_MARK}", suffix=suffix, dir=folder)
    except OSError as e:
        raise UserError(f"{option} {path}: cannot write to folder {folder} ({e.strerror or e})") from e
    os.close(fd)
    os.unlink(probe)
    return target


def check_save_path(path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """check_output_path for ``--save``."""
    return check_output_path(path, "--save", ".rrd", "the viewer opens recordings by suffix", overwrite)


def find_viewer() -> str:
    """The ``rerun`` executable: on PATH, or beside this interpreter (a venv that is not activated)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        # The viewer would die at once and the run would fail only when flushing, after all the work.
        raise UserError(
            "no display to open the Rerun viewer on (DISPLAY and WAYLAND_DISPLAY are not set): use "
            "--save out.rrd, --stdout | rerun -, --serve (web viewer) or --connect"
        )
    found = shutil.which("rerun") or shutil.which("rerun", path=str(Path(sys.executable).parent))
    if not found:
        raise UserError(
            "the Rerun viewer (the `rerun` executable of rerun-sdk) was not found on PATH: activate the "
            "environment that has rerun-sdk, or use --save out.rrd, --connect or --serve"
        )
    return found


def check_stdout_is_a_pipe() -> None:
    """Refuse --stdout on a terminal (Rerun would buffer the recording and show nothing), and on a
    standard output that cannot take it: closed, a pipe nobody reads, a full device (io.pipe)."""
    check_stdout("--stdout")


def plan_sinks(
    outputs: Outputs, *, allow_none: bool = False, open_browser: bool = True, relay: bool = False
) -> SinkPlan:
    """Check the outputs and decide the sinks (cheap: before the model loads).

    A viewer is spawned when asked (``spawn``) or when no other output is (Rerun's default:
    ``--save`` alone only writes the file). ``stdout`` excludes every other sink. ``allow_none``:
    the caller has another output (``--export``): no viewer by default, and an empty plan is fine.
    ``relay``: the caller shows the recording itself (``OpenSinks.page_stream``), so no viewer by default.
    """
    o = outputs
    others = [flag for flag, on in (("--save", o.save), ("--connect", o.connect), ("--serve", o.serve),
                                    ("--spawn", o.spawn)) if on]  # fmt: skip
    if o.stdout and others:
        raise UserError(
            f"--stdout sends the recording down the pipe only: drop {', '.join(others)} "
            f"(to keep a file too: ... --stdout | rerun - --save out.rrd)"
        )
    if o.spawn and o.headless:
        raise UserError("--spawn and --headless contradict each other: give one")
    save_path = check_save_path(o.save, o.overwrite) if o.save else None
    url = check_url(o.connect) if o.connect else None
    if url:
        check_viewer_listening(url)
    if o.stdout:
        check_stdout_is_a_pipe()
    if o.stdout and relay:
        raise UserError("--stdout sends the recording down the pipe only: drop --interactive")
    spawn = o.spawn or not (o.headless or o.stdout or o.serve or url or save_path or allow_none or relay)
    if o.serve:
        check_port_free(VIEWER_PORT, "gRPC server")
        check_port_free(WEB_PORT, "web viewer")
    decided = replace(o, save=save_path, spawn=spawn, connect=url)
    plan = SinkPlan(decided, viewer=find_viewer() if spawn else None, open_browser=open_browser, relay=relay)
    if plan.empty and not allow_none:
        raise UserError(
            "--headless alone would discard the recording: add --save out.rrd (or --stdout/--connect/--serve)"
        )
    return plan


@contextmanager
def _stderr_silenced() -> Iterator[None]:
    """File descriptor 2 goes to the null device meanwhile (Rerun's Rust log lines write there)."""
    try:
        saved = os.dup(2)
    except OSError:  # stderr is closed: nothing to silence
        yield
        return
    if sys.stderr is not None:
        sys.stderr.flush()  # what Python printed before still goes out
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def stream_sinks(recording: rr.RecordingStream, *sinks: Any, stdout: bool = False,
                 default_blueprint: rrb.Blueprint | None = None) -> None:  # fmt: skip
    """``recording.set_sinks(*sinks)`` (or ``recording.stdout()``) for sinks made without a footer.

    A file sink made with ``rr.FileSink(path, write_footer=False)`` (and ``stdout=True``) keeps no
    index of the chunks in memory, so memory does not grow with the recording; Rerun then logs
    a coloured warning line on stderr about the missing footer, which is on purpose here and is
    silenced (while the sinks are set, which is when Rerun writes it).
    """
    with _stderr_silenced():
        if stdout:
            recording.stdout(default_blueprint=default_blueprint, write_footer=False)
        else:
            recording.set_sinks(*sinks, default_blueprint=default_blueprint)


#: the relay of a script's ``--stdout`` (script_setup), closed by script_teardown
_script_relay: StdoutRelay | None = None


def script_setup(args: argparse.Namespace, application_id: str = APPLICATION_ID, **kwargs: Any) -> rr.RecordingStream:
    """``rr.script_setup`` for scripts using ``rr.script_add_args``; end them with ``script_teardown``.

    What differs: a viewer that cannot be spawned (no display, no ``rerun`` executable) ends the
    script with one ``error:`` line and exit code 1, instead of Rerun's log lines and exit code 0;
    ``--stdout`` goes through ``io.pipe`` as the command line's does (Rerun's own stdout sink
    hangs for good on a broken pipe): a standard output that cannot take the recording (closed,
    a pipe nobody reads, a full device) is one ``error:`` line and exit code 1 before any work,
    and a reader that leaves half-way is one line when the script ends.
    """
    import rerun as rr  # noqa: F811 - the real module, not the TYPE_CHECKING name

    global _script_relay
    spawns = not (args.stdout or args.serve or args.connect or args.save is not None or args.headless)
    try:
        if spawns:
            find_viewer()
        if args.stdout:
            check_stdout("--stdout")
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    if not args.stdout:
        return rr.script_setup(args, application_id, **kwargs)
    rr.init(application_id, recording_id=kwargs.get("recording_id"), default_enabled=True, strict=True)
    rec = rr.get_global_data_recording()
    assert rec is not None, "rr.init sets a global recording"
    # No interrupt: a script has no handler for it; the rest of the stream is drained and dropped.
    _script_relay = StdoutRelay("--stdout", interrupt=False)
    stream_sinks(rec, stdout=True, default_blueprint=kwargs.get("default_blueprint"))
    return rec


def script_teardown(args: argparse.Namespace) -> None:
    """``rr.script_teardown`` for scripts set up with ``script_setup``: with ``--stdout``, the
    recording is delivered (or one ``error:`` line, exit code 1, says why it could not be)."""
    import rerun as rr  # noqa: F811 - the real module, not the TYPE_CHECKING name

    global _script_relay
    relay, _script_relay = _script_relay, None
    if relay is None:
        rr.script_teardown(args)
        return
    rec = rr.get_global_data_recording()
    if rec is not None:
        rec.flush(timeout_sec=FLUSH_TIMEOUT_S)
        rec.disconnect()  # Rerun writes the end of the stream into the relay now
    try:
        relay.close(timeout=FLUSH_TIMEOUT_S)
    except UserError as e:
        raise SystemExit(f"error: {e}") from None


class OpenSinks:
    """The sinks of one recording while it is being logged (see ``open_sinks``)."""

    def __init__(self, recording: rr.RecordingStream, plan: SinkPlan, blueprint: rrb.Blueprint | None = None) -> None:
        self.recording = recording
        self.plan = plan
        self.blueprint = blueprint
        self.buffer: Any = None  # rr.BinaryStream holding the recording for --save (with --serve)
        self.writer: PendingWriter | None = None  # the --save file, under its temporary name
        self.pipe: streamfile.PipeToFile | None = None  # Rerun's file sink -> self.writer.file
        self.relay: StdoutRelay | None = None  # --stdout: Rerun writes into it (io.pipe)
        self.page_stream: Any = None  # rr.BinaryStream the caller reads and forwards (SinkPlan.relay)
        self.server_uri: str | None = None

    def start(self) -> None:
        import rerun as rr  # noqa: F811 - the real module, not the TYPE_CHECKING name

        plan, out = self.plan, self.plan.outputs
        if out.stdout:
            self.relay = StdoutRelay("--stdout")
            # The viewer reads the stream as it comes: a footer would only hold memory until the end.
            stream_sinks(self.recording, stdout=True, default_blueprint=self.blueprint)
            return
        sinks: list[Any] = []
        if out.save is not None:
            self.writer = PendingWriter(out.save, overwrite=out.overwrite, action=f"save the recording to {out.save}")
            if streamfile.available() and not out.serve:
                self.pipe = streamfile.PipeToFile(self.writer.file)
                sinks.append(rr.FileSink(str(self.pipe.path), write_footer=plan.footer))
            else:
                # In memory until the run is complete (about 5x the file, measured). One read only:
                # every read returns a complete .rrd stream, and two of them do not concatenate.
                self.buffer = self.recording.binary_stream()
                sinks.append(self.buffer)
        if plan.relay:
            self.page_stream = self.recording.binary_stream()
            sinks.append(self.page_stream)
        if out.spawn:
            self._spawn(rr)
            sinks.append(rr.GrpcSink(f"rerun+http://127.0.0.1:{plan.grpc_port}/proxy"))
        if out.connect:
            sinks.append(rr.GrpcSink(out.connect))
        if out.serve:
            server = self._serving(lambda: rr.GrpcServerSink(port=plan.grpc_port), plan.grpc_port)
            # The server binds every interface; a browser cannot connect to 0.0.0.0 everywhere.
            self.server_uri = server.uri.replace("0.0.0.0", "127.0.0.1")
            sinks.append(server)
        # Every sink gets the blueprint (if any): embedded in the file, a default for viewers.
        if plan.footer:
            self.recording.set_sinks(*sinks, default_blueprint=self.blueprint)
        else:
            stream_sinks(self.recording, *sinks, default_blueprint=self.blueprint)
        if out.serve:
            self._serving(
                lambda: rr.serve_web_viewer(
                    web_port=plan.web_port, open_browser=plan.open_browser, connect_to=self.server_uri
                ),
                plan.web_port,
            )

    @staticmethod
    def _serving(start: Any, port: int) -> Any:
        try:
            return start()
        except (RuntimeError, OSError, ValueError) as e:  # mostly: the port is taken
            raise UserError(f"--serve: cannot serve on port {port} ({e}); is another viewer running?") from e

    def _spawn(self, rr: Any) -> None:
        plan = self.plan
        try:
            rr.spawn(port=plan.grpc_port, connect=False, executable_path=plan.viewer, recording=self.recording)
        except RuntimeError as e:  # Rerun reports a viewer that cannot start as a RuntimeError
            raise UserError(
                f"the Rerun viewer could not be started ({e}); use --save out.rrd, --stdout, --serve or --connect"
            ) from e

    def finish(self) -> list[PendingFile]:
        """Deliver everything to the viewers, and complete the .rrd under its temporary name.

        Returns the pending file (``io.atomic.commit`` moves it onto ``--save`` together with the
        run's other files), or [] without --save.
        """
        try:
            self.recording.flush(timeout_sec=FLUSH_TIMEOUT_S)
        except RuntimeError as e:  # Rerun reports a timeout as a plain RuntimeError
            where = "to the viewer (did it close?)" if not self.plan.outputs.stdout else "down the pipe"
            raise UserError(f"the recording could not be delivered {where} within {FLUSH_TIMEOUT_S:g} s ({e})") from e
        if self.page_stream is not None:  # its reader is done: nothing more goes to the page
            self.page_stream.read(flush=False)
        if self.relay is not None:
            self.recording.disconnect()  # Rerun writes the stream's footer into the relay now
            self.relay.close(timeout=FLUSH_TIMEOUT_S)
        writer = self.writer
        if writer is None:
            return []
        if self.pipe is not None:
            # The file sink writes its footer (the manifest of every chunk) and closes the pipe
            # when it is dropped: disconnect, after the flush above has delivered to the viewers.
            self.recording.disconnect()
            complete = self.pipe.close(FLUSH_TIMEOUT_S)
            error, self.pipe = self.pipe.error, None
            if error is not None:
                raise writer.error(error)
            if not complete:
                raise UserError(f"cannot {writer.action}: Rerun did not finish the file within {FLUSH_TIMEOUT_S:g} s")
        else:
            data = self.buffer.read(flush=True, flush_timeout_sec=FLUSH_TIMEOUT_S) or b""
            self.buffer = None
            try:
                streamfile.write_chunk(writer.file, data)
            except OSError as e:
                raise writer.error(e) from e
        self.writer = None
        return [writer.complete()]

    def abort(self) -> None:
        """Close every sink (on any error or Ctrl-C); nothing is left under --save."""
        self.recording.disconnect()
        if self.relay is not None:
            self.relay.close(drop=True)
        if self.pipe is not None:
            self.pipe.close(PROBE_TIMEOUT_S)
            self.pipe = None
        if self.buffer is not None:
            # Drained after the disconnect: Rerun logs a warning (a coloured Rust log line) for
            # every buffer it drops unread.
            self.buffer.read(flush=False)
            self.buffer = None
        if self.writer is not None:
            self.writer.discard()
            self.writer = None
        if self.page_stream is not None:
            self.page_stream.read(flush=False)
            self.page_stream = None

    def close(self) -> None:
        self.recording.disconnect()

    def web_url(self) -> str | None:
        if self.server_uri is None:
            return None
        return f"http://localhost:{self.plan.web_port}/?url={quote(self.server_uri, safe='')}"


@contextmanager
def open_sinks(
    recording: rr.RecordingStream, plan: SinkPlan, blueprint: rrb.Blueprint | None = None
) -> Iterator[OpenSinks]:
    """Attach the planned sinks to ``recording`` (a ``rr.RecordingStream`` with nothing logged yet).

    The caller ends a successful run with ``finish()`` and commits the files it returns; on any
    exception (KeyboardInterrupt included) the sinks are closed.
    """
    sinks = OpenSinks(recording, plan, blueprint)
    try:
        sinks.start()
        yield sinks
    except BaseException as e:
        sinks.abort()
        if isinstance(e, KeyboardInterrupt) and sinks.relay is not None and sinks.relay.failed:
            raise StdoutFailed(sinks.relay.message()) from None  # the relay stopped the run, not Ctrl-C
        raise


def serve_forever(sinks: OpenSinks, echo: Callable[[str], object] = print) -> None:
    """Keep the gRPC and web servers alive for viewers until Ctrl-C (which is a normal exit here)."""
    echo(f"serving the web viewer at {sinks.web_url()} ; press Ctrl-C to stop")
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        sinks.close()
