"""Progress of a study on stderr, with scenes/s and an ETA.

On a terminal: a tqdm bar. Otherwise (a batch job whose stderr goes to a log file, where a bar
would be a stream of carriage returns): one line every ``interval`` seconds and one at the end,
``scenes 120/1000 (12%), 0.81 scenes/s, ETA 18:06, 2 failed``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from tqdm.auto import tqdm


class LogProgress:
    """The part of tqdm's interface a study uses, as log lines (module docstring)."""

    def __init__(self, total: int, interval: float = 30.0, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.total, self.interval, self.clock = total, interval, clock
        self.stream = stream if stream is not None else sys.stderr
        self.count, self.failed = 0, 0
        self.start = self.last = clock()

    def line(self) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = self.count / elapsed
        eta = tqdm.format_interval((self.total - self.count) / rate) if rate > 0 else "?"
        pct = 100 * self.count // max(self.total, 1)
        return f"scenes {self.count}/{self.total} ({pct}%), {rate:.3g} scenes/s, ETA {eta}, {self.failed} failed"

    def update(self, n: int = 1) -> None:
        self.count += n
        now = self.clock()
        if now - self.last >= self.interval or self.count >= self.total:
            self.last = now
            self.write(self.line())

    def set_postfix(self, failed: int = 0, **_: Any) -> None:
        self.failed = failed

    def write(self, text: str, file: TextIO | None = None) -> None:
        print(text, file=file or self.stream, flush=True)

    def close(self) -> None:
        pass

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(total: int, show: bool = True, interval: float = 30.0) -> Any:
    """A tqdm bar (terminal), LogProgress lines (any other stderr), or a silent bar (``show`` False)."""
    if show and not sys.stderr.isatty():
        return LogProgress(total, interval)
    return tqdm(total=total, desc="scenes", unit="scene", file=sys.stderr, disable=not show)
