"""Standard output as a data stream (``--stdout | rerun -``), with one clear error when it fails.

Rerun's own stdout sink hangs for good, deaf to Ctrl-C and SIGTERM, once a write to standard
output fails (a reader that exited: ``| true``, ``| head -c 100``; a full device: ``> /dev/full``).
So Rerun never writes to the real standard output here:

- ``check_stdout`` refuses, before any work, a standard output that is closed (``>&-``), a pipe
  whose reader is gone (``| true``, ``| missing_cmd``) or a device that takes no bytes
  (``> /dev/full``): a zero-byte write and ``poll`` tell, without writing any data.
- ``StdoutRelay`` puts a pipe of its own on file descriptor 1 for Rerun to write into, and a
  thread copies it to the real standard output. Rerun's writes always succeed; a failed write to
  the real output is remembered, the rest of the stream is drained and dropped, and the main
  thread is interrupted (as by Ctrl-C) so that the run stops at once; ``close`` then raises the
  reason as one ``StdoutFailed`` line.
"""

from __future__ import annotations

import _thread
import errno
import os
import select
import signal
import sys
import threading
import time
from typing import Any

from vggt_attn_rerun.errors import UserError

#: the file descriptor Rerun's stdout sink writes to
STDOUT_FD = 1
_CHUNK = 1 << 16
# A pipe takes at least this much without blocking once poll says it is writable.
_PIPE_CHUNK = select.PIPE_BUF
_POLL_MS = 200
_HINT = "pipe it into the viewer: ... --stdout | rerun -"


def _reason(e: OSError) -> str:
    if e.errno == errno.EPIPE:
        return "the viewer or the command after | closed the pipe"
    return e.strerror or str(e)


class StdoutFailed(UserError):
    """Standard output cannot take the stream (its reader is gone, the device is full): an error
    while running (exit code 1) whether it shows before the run or during it, never bad input."""


def check_stdout(option: str = "--stdout") -> None:
    """Refuse a standard output that cannot take a recording: closed or a terminal (UserError),
    a pipe that nobody reads or a file or device that refuses writes (StdoutFailed). Errors name
    ``option``."""
    if sys.stdout is None:  # Python found file descriptor 1 closed when it started (`>&-`)
        raise UserError(f"{option}: standard output is closed; {_HINT}")
    if sys.stdout.isatty():
        raise UserError(f"{option}: standard output is a terminal; {_HINT}")
    try:
        os.fstat(STDOUT_FD)
    except OSError:
        raise UserError(f"{option}: standard output is closed; {_HINT}") from None
    poller = select.poll()
    poller.register(STDOUT_FD, select.POLLOUT)
    events = dict(poller.poll(0)).get(STDOUT_FD, 0)
    if events & select.POLLERR:  # the write end of a pipe whose read end is closed
        raise StdoutFailed(f"{option}: nothing reads standard output (the command after | exited or was not found)")
    try:
        os.write(STDOUT_FD, b"")  # writes nothing, but /dev/full and a closed socket still say no
    except OSError as e:
        raise StdoutFailed(f"{option}: cannot write to standard output: {_reason(e)}") from None


class StdoutRelay:
    """File descriptor 1 is a pipe of this relay until ``close``; a thread copies it to the real
    standard output (module docstring). ``error``: the first failed write, or None.

    ``interrupt``: on a failed write, interrupt the main thread as Ctrl-C would (only when the
    relay was started in the main thread); the caller turns that KeyboardInterrupt into
    ``close()``'s error (``failed``).
    """

    def __init__(self, option: str = "--stdout", interrupt: bool = True) -> None:
        self.option = option
        self.error: OSError | None = None
        self._closing = False
        self._dropping = False  # give up on the real output (after an abort): drain and drop
        self._requested = False  # an interrupt was asked for and not yet handled
        if sys.stdout is not None:
            sys.stdout.flush()  # nothing printed before the relay may land inside the stream
        self._real = os.dup(STDOUT_FD)
        read_end, write_end = os.pipe()
        self._read_end = read_end
        os.dup2(write_end, STDOUT_FD)
        os.close(write_end)
        self._previous: Any = None
        self._interrupts = interrupt and threading.current_thread() is threading.main_thread()
        if self._interrupts:
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        self._thread = threading.Thread(target=self._copy, name="stdout-relay", daemon=True)
        self._thread.start()

    @property
    def failed(self) -> bool:
        return self.error is not None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._requested:  # ours: stop the run, unless it is already ending
            self._requested = False
            if not self._closing:
                raise KeyboardInterrupt
            return
        if callable(self._previous):
            self._previous(signum, frame)
        elif self._previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    def _write_all(self, data: bytes) -> None:
        poller = select.poll()
        poller.register(self._real, select.POLLOUT)
        view = memoryview(data)
        while view and not self._dropping:
            # Small writes after poll: a reader that stops reading must not block this thread
            # for good (the relay could then neither drain Rerun nor give up).
            if not poller.poll(_POLL_MS):
                continue
            view = view[os.write(self._real, view[:_PIPE_CHUNK]) :]

    def _copy(self) -> None:
        while True:
            data = os.read(self._read_end, _CHUNK)
            if not data:
                break
            if self.error is not None or self._dropping:
                continue  # keep draining: Rerun must never see a full or broken pipe
            try:
                self._write_all(data)
            except OSError as e:
                self.error = e
                if self._interrupts and not self._closing:
                    self._requested = True
                    _thread.interrupt_main()
        os.close(self._read_end)

    def message(self) -> str:
        assert self.error is not None
        return f"{self.option}: the recording could not be written to standard output: {_reason(self.error)}"

    def close(self, timeout: float | None = None, drop: bool = False) -> None:
        """Give file descriptor 1 back and wait until everything written is copied (``drop``:
        not copied); StdoutFailed when a write failed or the reader takes longer than ``timeout`` s.

        Call it after Rerun's sink is closed (``RecordingStream.disconnect``): what Rerun writes
        later goes to the real standard output directly.
        """
        if self._closing:
            return
        self._closing = True
        self._dropping = self._dropping or drop
        os.dup2(self._real, STDOUT_FD)  # closes the relay's write end: the thread sees the end
        self._thread.join(timeout)
        late = self._thread.is_alive()
        if late:
            self._dropping = True
            self._thread.join()
        os.close(self._real)
        self._restore_sigint()
        if self.error is not None and not drop:
            raise StdoutFailed(self.message())
        if late:
            raise StdoutFailed(f"{self.option}: the reader of standard output took more than {timeout:g} s")

    def _restore_sigint(self) -> None:
        if not self._interrupts:
            return
        self._interrupts = False
        deadline = time.monotonic() + 1.0
        while self._requested and time.monotonic() < deadline:  # let a pending interrupt land here
            time.sleep(0.001)
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
