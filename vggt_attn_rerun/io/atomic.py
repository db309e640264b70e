"""The one way this package writes a file: all of it under its final name, or nothing there.

A file is first written under a temporary name in the target's own folder (so that the final
rename is atomic: same file system), flushed to disk (``fsync``: the rename must not become
visible before the data), then moved onto its name. Several files commit together
(``commit``): either all of them appear, or none does and any old files are back in place.

How a name is taken:

- without ``overwrite``, a hard link puts the new file in place *only if the name is still
  free*, so two runs racing for one name cannot silently replace each other (the second gets a
  UserError); on a file system without hard links, the check and the rename are two steps;
- with ``overwrite``, the old file is kept under a temporary name until every file of the group
  is in place, so a failure (or Ctrl-C) half-way puts the old files back;
- a symbolic link at the target is replaced by the new file (the file it pointed to is left as
  it was), as ``mv`` and ``os.replace`` do: never written through.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from vggt_attn_rerun.errors import UserError

#: temporary files are named ``.{final name}{PARTIAL_MARK}{random}``
PARTIAL_MARK = ".partial-"
_OLD_MARK = ".old-"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class PendingFile:
    """A complete file under a temporary name (``temp``), waiting to be moved onto ``target``."""

    target: Path
    temp: Path
    overwrite: bool


def describe_os_error(e: OSError) -> str:
    """A one-line reason: 'the disk is full' for ENOSPC/EDQUOT, else the system's message."""
    if e.errno in _DISK_FULL:
        return f"{e.strerror or 'No space left on device'} (the disk is full)"
    return e.strerror or str(e)


def _umask() -> int:
    # os.umask can only be read by setting it, which races with threads that create files;
    # Linux reports it in /proc instead.
    try:
        m = re.search(r"^Umask:\s*([0-7]+)", Path("/proc/self/status").read_text(), re.MULTILINE)
        if m:
            return int(m.group(1), 8)
    except OSError:
        pass
    return 0o022


class PendingWriter:
    """A file for ``target`` being written under a temporary name beside it, a piece at a time.

    ``file`` takes the bytes as they come (nothing is held in memory); ``complete()`` flushes it
    to disk and returns the ``PendingFile`` that ``commit`` moves in place; ``discard()`` removes
    it. An OSError (while writing, flushing or closing) becomes one UserError line, ``cannot
    {action}: {reason}`` (``action`` defaults to ``write {target}``; a full disk says so).
    """

    def __init__(self, target: str | os.PathLike[str], *, overwrite: bool = False, action: str | None = None) -> None:
        self.target = Path(target)
        self.overwrite = overwrite
        self.action = action or f"write {self.target}"
        try:
            # mkstemp reserves a unique name: two runs writing to one folder cannot collide.
            fd, name = tempfile.mkstemp(prefix=f".{self.target.name}{PARTIAL_MARK}", dir=self.target.parent)
        except OSError as e:
            raise self.error(e) from e
        self.temp = Path(name)
        self.file: BinaryIO = os.fdopen(fd, "wb")

    def error(self, e: OSError) -> UserError:
        """The one-line UserError for an OSError met while writing this file."""
        return UserError(f"cannot {self.action}: {describe_os_error(e)}")

    def complete(self) -> PendingFile:
        """Flush the file to disk and close it; on any error it is removed."""
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.chmod(self.temp, 0o666 & ~_umask())  # mkstemp makes it private (0600); give it the usual mode
        except BaseException as e:
            self.discard()
            if isinstance(e, OSError):
                raise self.error(e) from e
            raise
        return PendingFile(self.target, self.temp, self.overwrite)

    def discard(self) -> None:
        """Close and remove the temporary file (after an error)."""
        try:
            self.file.close()
        except OSError:
            pass  # a full disk refuses the last buffered bytes: the file goes anyway
        self.temp.unlink(missing_ok=True)


def write_pending(target: str | os.PathLike[str], write: Callable[[BinaryIO], object], *,
                  overwrite: bool = False, action: str | None = None) -> PendingFile:  # fmt: skip
    """Write a file for ``target`` under a temporary name beside it; ``commit`` moves it in place.

    ``write(f)`` gets the open binary file. Any error or Ctrl-C removes the temporary file; an
    OSError becomes one UserError line, ``cannot {action}: {reason}`` (``action`` defaults to
    ``write {target}``; a full disk says so).
    """
    writer = PendingWriter(target, overwrite=overwrite, action=action)
    try:
        write(writer.file)
    except BaseException as e:
        writer.discard()
        if isinstance(e, OSError):
            raise writer.error(e) from e
        raise
    return writer.complete()


def produce_pending(target: str | os.PathLike[str], produce: Callable[[Path], object], *, overwrite: bool = False,
                    action: str | None = None) -> PendingFile:  # fmt: skip
    """``write_pending`` for a writer that takes a path: ``produce(temp)`` writes the whole file at
    ``temp`` (a reserved, empty file beside ``target``; replace it atomically, e.g. with
    ``write_file``). The temporary file is removed on any error."""
    target = Path(target)
    pending = write_pending(target, lambda f: None, overwrite=overwrite, action=action)
    try:
        produce(pending.temp)
    except BaseException:
        discard([pending])
        raise
    return pending


def discard(pending: Sequence[PendingFile]) -> None:
    """Remove the temporary files (after an error)."""
    for p in pending:
        p.temp.unlink(missing_ok=True)


@contextmanager
def _interrupts_deferred() -> Iterator[list[int]]:
    """Hold SIGINT/SIGTERM while files move, so that a half-done move can be undone; the list
    that is yielded collects the signals that arrived."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    previous = {
        s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield caught
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _free_name(folder: Path, name: str) -> Path:
    fd, path = tempfile.mkstemp(prefix=f".{name}{_OLD_MARK}", dir=folder)
    os.close(fd)
    os.unlink(path)
    return Path(path)


def _move_into_place(p: PendingFile) -> Path | None:
    """Move one file onto its target; returns where the old file is kept (or None).

    On failure nothing has changed: the old file is still at the target, the temporary file
    still exists (``discard`` removes it).
    """
    if not p.overwrite:
        try:
            os.link(p.temp, p.target)  # fails if the name was taken meanwhile: never replaces
        except FileExistsError:
            raise UserError(
                f"{p.target} appeared while this run was working: not replaced (pass --overwrite to replace it)"
            ) from None
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            # No hard links here (FAT, some network shares): check, then rename (a short race).
            if os.path.lexists(p.target):
                raise UserError(f"{p.target} appeared while this run was working: not replaced") from None
            os.rename(p.temp, p.target)
            return None
        p.temp.unlink()
        return None
    if not os.path.lexists(p.target):
        os.replace(p.temp, p.target)
        return None
    backup = _free_name(p.target.parent, p.target.name)
    try:
        os.link(p.target, backup, follow_symlinks=False)  # the old file (or link) stays reachable
        linked = True
    except OSError:  # no hard links here: move the old file aside instead (briefly absent)
        os.rename(p.target, backup)
        linked = False
    try:
        os.replace(p.temp, p.target)
    except BaseException:
        if linked:
            backup.unlink()
        else:
            os.rename(backup, p.target)
        raise
    return backup


def _roll_back(done: Sequence[tuple[PendingFile, Path | None]]) -> None:
    for p, backup in reversed(done):
        if backup is not None:
            os.replace(backup, p.target)
        else:
            p.target.unlink(missing_ok=True)


def commit(pending: Sequence[PendingFile]) -> None:
    """Move every pending file onto its target: all of them, or none (old files restored).

    A failure or Ctrl-C (SIGINT/SIGTERM are held during the moves, then honoured) after some
    files moved puts the old files back, removes the new ones and re-raises. OSError becomes a
    one-line UserError.
    """
    done: list[tuple[PendingFile, Path | None]] = []
    current = None
    with _interrupts_deferred() as caught:
        try:
            for current in pending:
                done.append((current, _move_into_place(current)))
            if caught:  # Ctrl-C while moving: the run did not finish, so nothing may stay
                raise KeyboardInterrupt
        except BaseException as e:
            _roll_back(done)
            discard(pending)
            if isinstance(e, OSError) and current is not None:
                raise UserError(f"cannot write {current.target}: {describe_os_error(e)}") from e
            raise
    for _, backup in done:
        if backup is not None:
            backup.unlink(missing_ok=True)


def write_file(target: str | os.PathLike[str], write: Callable[[BinaryIO], object], *, overwrite: bool = True,
               action: str | None = None) -> Path:  # fmt: skip
    """Write one file atomically (``write_pending`` + ``commit``). Returns the target."""
    p = write_pending(target, write, overwrite=overwrite, action=action)
    commit([p])
    return p.target
