"""A named pipe that a writer outside Python fills, copied into a file of ours as the bytes come.

Rerun's file sink (``rr.FileSink``) writes a recording to a path as it is logged, so memory does
not grow with the file; but on a full disk it only logs an error, its flush times out and its
disconnect never returns. Given this pipe's path instead, its writes cannot fail: a thread copies
them into an open file (``io.atomic.PendingWriter.file``), keeps the first OSError (a full disk)
for the caller to report in one line, and keeps draining the pipe after it, so the writer never
blocks. What is held in memory is one read of the pipe (``CHUNK_BYTES``).

POSIX only (``os.mkfifo``): ``available()`` says whether this platform has named pipes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO

CHUNK_BYTES = 1 << 20


def available() -> bool:
    """Whether this platform has named pipes (Linux, macOS; not Windows)."""
    return hasattr(os, "mkfifo")


def write_chunk(f: BinaryIO, data: bytes) -> None:
    """Write one piece of a recording (the one place the bytes of a saved .rrd are written)."""
    f.write(data)


def _widen(fd: int) -> None:
    """Let the pipe hold CHUNK_BYTES (Linux; 64 KiB by default): the copy thread, which needs the
    interpreter lock to run, then wakes once a MiB instead of once every 64 KiB, and the writer's
    own queue (data waiting to be encoded, unbounded in Rerun) does not grow while it waits."""
    try:
        import fcntl  # POSIX only

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, CHUNK_BYTES)
    except (ImportError, AttributeError, OSError):
        pass  # other systems, or a lower /proc/sys/fs/pipe-max-size: the default size works too


class PipeToFile:
    """A fresh named pipe at ``path``, copied into ``dest`` until its writer closes it.

    Attributes:
        path: give this to the writer (e.g. ``rr.FileSink(str(pipe.path))``).
        error: the first OSError met writing ``dest`` (after it, the bytes are drained and dropped).
        copied: bytes written to ``dest``.
    """

    def __init__(self, dest: BinaryIO) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="vggt-attn-rerun-pipe-"))  # private (0700)
        self.path = self._folder / "recording.rrd"
        os.mkfifo(self.path, 0o600)
        self.dest = dest
        self.error: OSError | None = None
        self.copied = 0
        self._thread = threading.Thread(target=self._copy, name="vggt-attn-rerun-pipe", daemon=True)
        self._thread.start()

    def _copy(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY)  # waits for the writer to open its end
        except OSError as e:
            self.error = e
            return
        _widen(fd)
        try:
            while chunk := os.read(fd, CHUNK_BYTES):
                if self.error is not None:
                    continue  # drained and dropped: the writer must never block on a full pipe
                try:
                    write_chunk(self.dest, chunk)
                    self.copied += len(chunk)
                except OSError as e:
                    self.error = e
        finally:
            os.close(fd)

    def close(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) until the writer has closed its end and every byte
        is copied, then remove the pipe. Returns False when the writer did not close it in time
        (or never opened it): the copy is then incomplete."""
        self._thread.join(timeout)
        done = not self._thread.is_alive()
        if not done:
            self._unblock()
        shutil.rmtree(self._folder, ignore_errors=True)
        return done

    def _unblock(self) -> None:
        """End a copy thread still waiting for a writer to open the pipe (a writer that failed)."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return  # no reader waiting to open: the thread is reading, and ends with the writer
        os.close(fd)
        self._thread.join(1.0)
