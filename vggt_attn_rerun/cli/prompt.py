"""``--ask``: queries typed after the run, answered from the q/k cache (no second forward pass).

A line that cannot be added, whatever it holds, is reported and skipped: it never ends the
session nor discards the recording. At the end the layout is sent once more with a dashboard
for every query, so that a saved recording shows all of them, not only the last one typed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from vggt_attn_rerun.interactive.prompt import QUIT_WORDS, prompt_queries
from vggt_attn_rerun.interactive.session import QuerySession
from vggt_attn_rerun.viz.options import RecordingOptions

PROMPT = "new query (FRAME:X,Y | FRAME:pROW,COL | FRAME:camera | q to quit)> "


def _typed_lines() -> Iterator[str]:
    while True:
        if sys.stdin.isatty():  # to stderr: with --stdout, standard output carries the recording
            sys.stderr.write(PROMPT)
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            return
        yield line


def ask_queries(rec: Any, result: Any, images: Any, options: RecordingOptions, *,
                echo: Callable[[str], object], lines: Iterable[str] | None = None) -> int:  # fmt: skip
    """Read queries (default: typed in the terminal) into ``rec``; returns how many were added."""
    session = QuerySession(rec, result, images, options)
    echo("logged; type more queries (pixels of the logged images), q to stop")
    try:
        for line in _typed_lines() if lines is None else lines:
            if line.strip().lower() in QUIT_WORDS:
                break
            try:
                prompt_queries(session, [line], write=echo)
            except Exception as e:  # noqa: BLE001 - one bad line must not discard the recording
                echo(f"not added: unexpected {type(e).__name__}: {(str(e).splitlines() or [''])[0]}")
    except KeyboardInterrupt:  # Ctrl-C at the prompt ends the prompt, as q does: keep what was added
        pass
    if session.added:
        session.show_all()
    return len(session.added)
