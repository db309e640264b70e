"""Where a recording goes: a spawned viewer, a running viewer, a web viewer, an .rrd file, or several.

The CLI plans the sinks first (``plan_sinks``: cheap checks, before the model loads), then wraps
the logging in ``open_sinks``. A saved file is written under a temporary name in the target
folder and renamed onto the final name only when the recording is complete, so an error or
Ctrl-C never leaves a partial file under the name the user asked for.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from vggt_attn_rerun.errors import UserError

if TYPE_CHECKING:  # rerun is imported where it is used: the checks above need none of it
    import rerun as rr
    import rerun.blueprint as rrb

DEFAULT_URL = "rerun+http://127.0.0.1:9876/proxy"
URL_SCHEMES = ("rerun://", "rerun+http://", "rerun+https://")
VIEWER_PORT = 9876
WEB_PORT = 9090
PARTIAL_MARK = ".partial-"
# A viewer that went away must not hang the CLI forever in flush.
FLUSH_TIMEOUT_S = 60.0
# Long enough for a viewer on another machine, short enough not to look like a hang.
PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class SinkPlan:
    """The sinks of one run.

    Attributes:
        save: final path of the .rrd file, or None.
        spawn: start a native viewer and stream to it.
        connect: URL of a running viewer to stream to, or None.
        serve: host a gRPC server and a web viewer, and keep serving until Ctrl-C.
        viewer: path of the ``rerun`` executable (only when spawning).
    """

    save: Path | None = None
    spawn: bool = False
    connect: str | None = None
    serve: bool = False
    viewer: str | None = None
    grpc_port: int = VIEWER_PORT
    web_port: int = WEB_PORT
    open_browser: bool = True

    def describe(self) -> str:
        parts = []
        if self.save is not None:
            parts.append(f"saved {self.save}")
        if self.spawn:
            parts.append("sent to the spawned viewer")
        if self.connect:
            parts.append(f"sent to {self.connect}")
        if self.serve:
            parts.append("served to the web viewer")
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


def check_port_free(port: int, what: str) -> None:
    """Refuse --serve early when its port is taken (found otherwise only after the forward pass)."""
    with socket.socket() as probe:
        # SO_REUSEADDR, as Rerun's servers bind: a port left in TIME_WAIT by an earlier run is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))  # the servers bind every interface too
        except OSError as e:
            raise UserError(
                f"--serve: port {port} for the {what} is taken ({e.strerror or e}); is another viewer running?"
            ) from e


def check_output_path(
    path: str | os.PathLike[str], option: str, suffix: str, why: str, overwrite: bool = False
) -> Path:
    """Refuse an output path that cannot work, before any expensive work is done.

    The folder must exist and take a new file (probed by creating and removing one, since
    permission bits say nothing for root or ACLs); the name must end in ``suffix`` and the file
    must not exist unless ``overwrite``. Errors name the ``option`` (``--save``, ``--export``).
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
    if target.exists() and not overwrite:
        raise UserError(f"{option} {path}: file exists; pass --overwrite to replace it")
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
            "--save out.rrd --headless, --serve (web viewer), or --connect URL"
        )
    found = shutil.which("rerun") or shutil.which("rerun", path=str(Path(sys.executable).parent))
    if not found:
        raise UserError(
            "the Rerun viewer (the `rerun` executable of rerun-sdk) was not found on PATH: activate the "
            "environment that has rerun-sdk, or use --save out.rrd --headless, --connect or --serve"
        )
    return found


def plan_sinks(
    save: str | None = None,
    connect: str | None = None,
    serve: bool = False,
    headless: bool = False,
    overwrite: bool = False,
    open_browser: bool = True,
) -> SinkPlan:
    """Check the sink options and decide the sinks. Spawning a viewer is the default, as in
    Rerun's own scripts; --headless, --connect and --serve replace it."""
    save_path = check_save_path(save, overwrite) if save else None
    url = check_url(connect) if connect else None
    if url:
        check_viewer_listening(url)
    spawn = not (headless or url or serve)
    if serve:
        check_port_free(VIEWER_PORT, "gRPC server")
        check_port_free(WEB_PORT, "web viewer")
    if not (spawn or save_path or url or serve):
        raise UserError("--headless alone would discard the recording: add --save out.rrd (or --connect/--serve)")
    return SinkPlan(
        save=save_path,
        spawn=spawn,
        connect=url,
        serve=serve,
        viewer=find_viewer() if spawn else None,
        open_browser=open_browser,
    )


def _umask() -> int:
    # os.umask can only be read by setting it, which races with threads that create files
    # (Rerun's sink threads do); Linux reports it in /proc instead.
    try:
        m = re.search(r"^Umask:\s*([0-7]+)", Path("/proc/self/status").read_text(), re.MULTILINE)
        if m:
            return int(m.group(1), 8)
    except OSError:
        pass
    return 0o022


class OpenSinks:
    """The sinks of one recording while it is being logged (see ``open_sinks``)."""

    def __init__(self, recording: rr.RecordingStream, plan: SinkPlan, blueprint: rrb.Blueprint | None = None) -> None:
        self.recording = recording
        self.plan = plan
        self.blueprint = blueprint
        self.partial: Path | None = None
        self.server_uri: str | None = None
        self.committed = False

    def start(self) -> None:
        import rerun as rr  # noqa: F811 - the real module, not the TYPE_CHECKING name

        sinks: list[Any] = []
        plan = self.plan
        if plan.save is not None:
            # mkstemp reserves a unique name, so two runs saving to the same folder cannot collide.
            fd, name = tempfile.mkstemp(prefix=f".{plan.save.name}{PARTIAL_MARK}", suffix=".rrd", dir=plan.save.parent)
            os.close(fd)
            self.partial = Path(name)
            sinks.append(rr.FileSink(self.partial))
        if plan.spawn:
            self._spawn(rr)
            sinks.append(rr.GrpcSink(f"rerun+http://127.0.0.1:{plan.grpc_port}/proxy"))
        if plan.connect:
            sinks.append(rr.GrpcSink(plan.connect))
        if plan.serve:
            server = self._serving(lambda: rr.GrpcServerSink(port=plan.grpc_port), plan.grpc_port)
            # The server binds every interface; a browser cannot connect to 0.0.0.0 everywhere.
            self.server_uri = server.uri.replace("0.0.0.0", "127.0.0.1")
            sinks.append(server)
        # Every sink gets the blueprint (if any): embedded in the file, a default for viewers.
        self.recording.set_sinks(*sinks, default_blueprint=self.blueprint)
        if plan.serve:
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
                f"the Rerun viewer could not be started ({e}); use --save out.rrd --headless, --serve or --connect"
            ) from e

    def commit(self) -> None:
        """Flush everything, then move the finished file onto its final name (atomically)."""
        if self.committed:
            return
        try:
            self.recording.flush(timeout_sec=FLUSH_TIMEOUT_S)
        except RuntimeError as e:  # Rerun reports a timeout as a plain RuntimeError
            raise UserError(
                f"the recording could not be delivered within {FLUSH_TIMEOUT_S:g} s ({e}); "
                f"did the viewer close? Use --save out.rrd to keep a copy"
            ) from e
        if self.partial is not None:
            _finalize_files(self.recording)
            with open(self.partial, "rb") as f:
                os.fsync(f.fileno())  # the rename must not become visible before the data
            os.chmod(self.partial, 0o666 & ~_umask())  # mkstemp made it private (0600)
            os.replace(self.partial, self.plan.save)
            self.partial = None
        self.committed = True

    def abort(self) -> None:
        """Close every sink and delete the partial file (on any error or Ctrl-C)."""
        try:
            self.recording.disconnect()  # closes the file, so that it can be removed everywhere
        finally:
            if self.partial is not None:
                self.partial.unlink(missing_ok=True)
                self.partial = None

    def close(self) -> None:
        self.recording.disconnect()

    def web_url(self) -> str | None:
        if self.server_uri is None:
            return None
        return f"http://localhost:{self.plan.web_port}/?url={quote(self.server_uri, safe='')}"


def _finalize_files(recording: rr.RecordingStream) -> None:
    """Write the .rrd footer and close the file, leaving viewer connections (--serve) open."""
    try:
        from rerun_bindings import finalize_deferred_sinks
    except ImportError:  # older bindings: closing everything also finalizes the file
        recording.disconnect()
        return
    finalize_deferred_sinks(recording=recording.to_native())


@contextmanager
def open_sinks(
    recording: rr.RecordingStream, plan: SinkPlan, blueprint: rrb.Blueprint | None = None
) -> Iterator[OpenSinks]:
    """Attach the planned sinks to ``recording`` (a ``rr.RecordingStream`` with nothing logged yet).

    On a clean exit the data is flushed and the file moved onto its final name; on any exception
    (KeyboardInterrupt included) the sinks are closed and the partial file is removed.
    """
    sinks = OpenSinks(recording, plan, blueprint)
    try:
        sinks.start()
        yield sinks
        sinks.commit()
    except BaseException:
        sinks.abort()
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
