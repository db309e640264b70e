"""Progress on stderr for the command line: tqdm bars, only on a terminal."""

from __future__ import annotations

import sys
from typing import Any


def progress(desc: str, total: int | None = None) -> Any:
    """A tqdm bar on stderr (``api.RunCallbacks.progress``); without ``total`` a status line for a
    step that cannot count (loading the model, logging, exporting)."""
    from tqdm.auto import tqdm

    unit = "block" if total else "it"
    # disable=None: bars only on a terminal, so logs and pipes stay clean.
    fmt = None if total else "{desc} ..."
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, leave=False, bar_format=fmt)
