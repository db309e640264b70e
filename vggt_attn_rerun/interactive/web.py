"""Click a pixel in a browser: the run's recording in the rerun-notebook widget, served by Voila.

One process holds the run: its q/k cache, its ``QuerySession`` and its recording, whose bytes go
to a relay (a ``rr.BinaryStream`` sink). ``serve_clicks`` starts Voila on a generated one-cell
notebook; each page Voila serves runs ``page`` in its kernel, which shows a
``rerun.notebook.Viewer`` (the rerun-notebook widget) fed with the recording's bytes, and sends the
viewer's selection events back. A click on an image becomes a query of the one session (rows from
the cache, no forward pass), and its entities reach every open page. Pages and the run's process
talk over a local socket (``multiprocessing.connection``, with a random key); the browser talks to
Voila only: one port to forward for a remote machine.

The widget's code and its WebAssembly viewer are files of the rerun-notebook package that Voila
serves on that port (``voila/files/rerun_notebook/``), loaded by the page from its own origin
when the widget is drawn: nothing is fetched from the internet. (Inlined into the widget's state
instead, the 66 MB viewer took the browser more than anywidget's 2 s to set the widget's model up;
anywidget then drops every message of that model, so the recording never reached the viewer.)
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import AuthenticationError, Client, Connection, Listener
from pathlib import Path
from typing import Any

from vggt_attn_rerun.core.capture import CaptureResult
from vggt_attn_rerun.core.images import LoadedImages
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.interactive.clicks import event_field
from vggt_attn_rerun.interactive.notebook import LOADING_LINE, NOTHING_ADDED_LINE, READY_LINE, SelectionHandler
from vggt_attn_rerun.interactive.prompt import describe
from vggt_attn_rerun.interactive.session import AddedQuery, QuerySession
from vggt_attn_rerun.viz.options import RecordingOptions
from vggt_attn_rerun.viz.sinks import INTERACTIVE_PORT, check_port_free

# How long Voila may take to answer its first request before the command gives up.
START_TIMEOUT_S = 60.0
PAGE_HEIGHT = 760
# The widget's files, in a folder of Voila's root that Voila serves at voila/files/ (nothing else is).
ASSET_DIR = "rerun_notebook"
ASSET_FILES = ("widget.js", "re_viewer_bg.wasm")
# The widget's ES module: a few lines that import the rerun-notebook widget from the page's own
# server when the widget is drawn, so a page opened through a forwarded port (any host name, any
# local port) loads it too. The import is inside render, not at the module's top level: anywidget
# drops every message of a model whose module took more than 2 s to load, and on a busy machine
# even the 0.5 MB widget module can.
WIDGET_LOADER = f"""
export default {{
  async render(context) {{
    const config = document.getElementById("jupyter-config-data");
    const base = (config && JSON.parse(config.textContent).baseUrl) || "/";
    const url = new URL(base + "voila/files/{ASSET_DIR}/widget.js", window.location.href);
    const widget = (await import(url.href)).default;
    return widget.render(context);
  }},
}};
"""


def check_web_dependencies() -> None:
    """Refuse early (before the model) when Voila or the rerun-notebook widget is missing."""
    missing = [name for name in ("voila", "rerun_notebook") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(
            f"--interactive needs {' and '.join(missing)}: pip install 'vggt-attn-rerun[interactive]' "
            "(Voila and the rerun-notebook widget)"
        )


def page_url(port: int) -> str:
    return f"http://localhost:{port}/"


def ssh_line(port: int) -> str:
    """The command that forwards the page of a remote machine to this one's browser."""
    return f"ssh -C -N -L {port}:localhost:{port} USER@REMOTE_HOST"


class Relay:
    """The run's side: recording bytes out to every page, selection events in, one session.

    Args:
        session: the run's QuerySession (its recording sends to ``stream``).
        stream: a ``rr.BinaryStream`` sink of ``session.rec`` attached before the run was logged,
            so it holds the whole recording until read.
        on_line: one line per added query or ignored click.
    """

    def __init__(self, session: QuerySession, stream: Any, on_line: Callable[[str], object] = print) -> None:
        self.session = session
        self.stream = stream
        self.on_line = on_line
        self.history: list[bytes] = []  # every piece of the recording, for pages opened later
        self.pages: list[Connection] = []
        self.lock = threading.Lock()
        self.handler = SelectionHandler(session, on_added=self._added, on_error=self._ignored)
        self.authkey = secrets.token_bytes(32)
        self.listener = Listener(("127.0.0.1", 0), authkey=self.authkey)
        self.address: tuple[str, int] = self.listener.address  # type: ignore[assignment]
        self._closed = False
        self._pump()

    def _pump(self) -> None:
        """Move what the recording wrote since the last call to the history and to every page."""
        data = self.stream.read(flush=True)
        if not data:
            return
        self.history.append(data)
        for conn in list(self.pages):
            self._send(conn, ("rrd", data))

    def _send(self, conn: Connection, message: tuple) -> None:
        try:
            conn.send(message)
        except (OSError, EOFError, ValueError):  # the page was closed
            if conn in self.pages:
                self.pages.remove(conn)

    def _added(self, added: AddedQuery) -> None:
        line = describe(added, self.session.layout)
        self.on_line(line)
        for conn in list(self.pages):
            self._send(conn, ("status", line))

    def _ignored(self, text: str) -> None:
        self.on_line(text)

    def handle(self, event: Any) -> list[int]:
        """One viewer event from a page: new queries are logged, then sent to every page."""
        if event_field(event, "type") != "selection_change":
            return []
        with self.lock:
            added = self.handler(event)
            self._pump()
        return added

    def accept_forever(self) -> None:
        """Accept pages until closed, each served by its own thread."""
        while not self._closed:
            try:
                conn = self.listener.accept()
            except (OSError, EOFError, AuthenticationError):
                if self._closed:
                    return
                continue  # a connection with the wrong key, or one that went away at once
            threading.Thread(target=self._serve_page, args=(conn,), daemon=True).start()

    def _serve_page(self, conn: Connection) -> None:
        """A page asks ``("history",)`` (its viewer is ready: send the whole recording so far) or
        ``("event", event)``; each answer ends with ``("done",)``."""
        while True:
            try:
                request = conn.recv()
            except (OSError, EOFError):
                break
            if request[0] == "history":
                with self.lock:
                    for data in self.history:
                        self._send(conn, ("rrd", data))
                    if conn not in self.pages:
                        self.pages.append(conn)
            elif request[0] == "event":
                try:
                    # Something selected but nothing added: told to the page that clicked only. An empty
                    # selection (what the viewer reports at start, or after Esc) is no click to answer.
                    if not self.handle(request[1]) and event_field(request[1], "items"):
                        self._send(conn, ("status", NOTHING_ADDED_LINE))
                except Exception as e:  # noqa: BLE001 - one bad click must not end the session
                    self.on_line(f"click ignored: unexpected {type(e).__name__}: {(str(e).splitlines() or [''])[0]}")
            self._send(conn, ("done",))
        with self.lock:
            if conn in self.pages:
                self.pages.remove(conn)

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        with self.lock:
            for conn in self.pages:
                conn.close()
            self.pages.clear()


def notebook_source(address: tuple[str, int], authkey: bytes, height: int = PAGE_HEIGHT) -> str:
    """The one cell of the page Voila serves: connect to the run and show its viewer."""
    return (
        "from vggt_attn_rerun.interactive.web import page\n"
        f"viewer = page({address!r}, {authkey.hex()!r}, height={int(height)})\n"
    )


def write_notebook(folder: Path, source: str) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / "vggt_attention.ipynb"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # it holds the relay's key
    with os.fdopen(fd, "w") as f:
        nbformat.write(nb, f)
    return path


def widget_static_dir() -> Path:
    """The rerun-notebook package's folder of widget files (found without importing the package,
    whose import reads ``RERUN_NOTEBOOK_ASSET``)."""
    spec = importlib.util.find_spec("rerun_notebook")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("--interactive needs rerun_notebook: pip install 'vggt-attn-rerun[interactive]'")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def link_widget_assets(folder: Path) -> Path:
    """Put the widget's code and WebAssembly in ``folder/rerun_notebook/`` for Voila to serve; returns
    that folder. Hard links where the file system allows (Voila's file handler refuses symlinks
    that leave its root), else copies."""
    static = widget_static_dir()
    target = folder / ASSET_DIR
    target.mkdir()
    for name in ASSET_FILES:
        try:
            os.link(static / name, target / name)
        except OSError:
            shutil.copyfile(static / name, target / name)
    return target


def asset_url(port: int) -> str:
    """Where Voila serves the widget's module: what ``RERUN_NOTEBOOK_ASSET`` names in its kernels."""
    return f"http://localhost:{port}/voila/files/{ASSET_DIR}/widget.js"


def voila_command(notebook: Path, port: int) -> list[str]:
    # Voila serves files of its root (the notebook's folder) that match the allowlist: only the widget's.
    allow = f"{ASSET_DIR}/({'|'.join(map(re.escape, ASSET_FILES))})"
    return [
        sys.executable, "-m", "voila", str(notebook), "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
        "--VoilaConfiguration.show_tracebacks=True", f"--VoilaConfiguration.file_allowlist={allow}",
    ]  # fmt: skip


def start_voila(notebook: Path, port: int, log: Path) -> subprocess.Popen:
    """Voila serving ``notebook`` (and the widget's files beside it) on 127.0.0.1:``port``."""
    # A URL, not "inline": importing rerun_notebook in a kernel then reads no 66 MB file.
    env = dict(os.environ, RERUN_NOTEBOOK_ASSET=asset_url(port), PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen(voila_command(notebook, port), stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise UserError(f"Voila stopped at start (exit code {proc.returncode}): {tail[0]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return proc
        except OSError:
            time.sleep(0.2)
    stop_voila(proc)
    raise UserError(f"Voila did not answer on port {port} within {START_TIMEOUT_S:g} s (log: {log})")


def stop_voila(proc: subprocess.Popen) -> None:
    """SIGTERM to Voila's process group (it shuts its kernels down), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends serving as Ctrl-C does (files written): what a service manager or ``kill`` sends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve_clicks(session: QuerySession, stream: Any, *, port: int = INTERACTIVE_PORT,
                 echo: Callable[[str], object] = print, until: Callable[[], bool] | None = None) -> int:  # fmt: skip
    """Serve the run in a browser until Ctrl-C (or ``until()`` is true); returns how many queries clicks added.

    ``stream``: the relay sink of ``session.rec`` (see ``Relay``). Prints the page's URL and the
    ssh line that forwards it from a remote machine.
    """
    check_web_dependencies()
    check_port_free(port, "page", "--interactive")
    relay = Relay(session, stream, on_line=echo)
    folder = Path(tempfile.mkdtemp(prefix="vggt-attn-web-"))
    proc = None
    try:
        notebook = write_notebook(folder, notebook_source(relay.address, relay.authkey))
        link_widget_assets(folder)
        threading.Thread(target=relay.accept_forever, daemon=True).start()
        proc = start_voila(notebook, port, folder / "voila.log")
        echo(f"click-to-query at {page_url(port)} (each click on an image adds a query); press Ctrl-C to stop")
        echo(f"from another machine: {ssh_line(port)}   then open {page_url(port)}")
        try:
            with _sigterm_as_interrupt():
                while until is None or not until():
                    if proc.poll() is not None:
                        raise UserError(f"Voila stopped (exit code {proc.returncode}); log: {folder / 'voila.log'}")
                    time.sleep(0.2)
        except KeyboardInterrupt:
            pass
    finally:
        relay.close()
        if proc is not None:
            stop_voila(proc)
        shutil.rmtree(folder, ignore_errors=True)
    return len(session.added)


def serve_run(rec: Any, result: CaptureResult, images: LoadedImages, options: RecordingOptions, relay: Any,
              port: int = INTERACTIVE_PORT, *, echo: Callable[[str], object] = print,
              until: Callable[[], bool] | None = None) -> CaptureResult:  # fmt: skip
    """``RunCallbacks.serve_clicks``: serve a logged run (``capture(..., keep_qk=True)``) for clicks until
    Ctrl-C; returns the run with every clicked query (``QuerySession.merged_result``).

    ``relay``: the ``rr.BinaryStream`` sink that ``rec`` has written to since before the run was logged.
    At the end the layout shows a dashboard for every query, as a saved recording should.
    """
    session = QuerySession(rec, result, images, options)
    serve_clicks(session, relay, port=port, echo=echo, until=until)
    if session.added:
        session.show_all()
    return session.merged_result()


# -- the page's side (runs in the Voila kernel) ------------------------------------------------------


def page(address: tuple[str, int], authkey_hex: str, height: int = PAGE_HEIGHT) -> Any:
    """Show the run's viewer in this kernel's page and send its selection events to the run.

    Returns the widget (a ``rerun_notebook.Viewer`` whose module is ``WIDGET_LOADER``).
    """
    import ipywidgets
    import rerun_notebook
    from IPython.display import display

    class PageViewer(rerun_notebook.Viewer):
        _esm = WIDGET_LOADER

    conn = Client(tuple(address), authkey=bytes.fromhex(authkey_hex))
    viewer = PageViewer(width="auto", height=height)
    status = ipywidgets.Label(LOADING_LINE)

    def ask(*request: Any) -> None:
        """Send a request and hand what comes back to the widget, until the run says done.

        Runs in the kernel's handler of the widget's messages: data sent to the widget from
        another thread never reached the viewer here (Voila 0.5, rerun-notebook 0.41), data
        sent from this handler does."""
        try:
            conn.send(request)
            while True:
                kind, *payload = conn.recv()
                if kind == "done":
                    return
                if kind == "rrd":
                    viewer.send_rrd(payload[0])
                elif kind == "status":
                    status.value = payload[0]
        except (OSError, EOFError):
            status.value = "the run has stopped: clicks add nothing now"

    def on_message(widget: Any, content: Any, buffers: Any) -> None:
        """The viewer's events arrive as JSON text (``"ready"`` is the widget's own, handled by it)."""
        if not isinstance(content, str) or content == "ready":
            return
        event = json.loads(content)
        if event.get("type") == "recording_open" and status.value == LOADING_LINE:
            status.value = READY_LINE  # the recording so far is in the viewer
        elif event.get("type") == "selection_change":
            ask("event", event)

    # The recording so far, before the viewer is displayed: the widget queues it until its frontend
    # says it is ready, then sends it.
    ask("history")
    viewer.on_msg(on_message)
    display(viewer)
    display(status)
    return viewer
