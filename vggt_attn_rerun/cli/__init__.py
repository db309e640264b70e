"""The command line: a thin shell over the Python API (``vggt_attn_rerun.api.run``), and the
viewer's entry point for run files (``importer``: ``rerun run.npz``).

``entry`` is the console script. It imports the command (and with it torch and rerun, seconds
of start-up) only once it runs, so that Ctrl-C during those imports ends like any other Ctrl-C:
one line and exit code 130.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def entry(argv: Sequence[str] | None = None) -> None:
    """Console script ``vggt-attn-rerun``: exits with the code of ``cli.main.run``."""
    import signal

    # `kill` or a job scheduler's SIGTERM unwinds like Ctrl-C, so no partial file survives it.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        from vggt_attn_rerun.cli.main import EXIT_INTERRUPTED, run
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    try:
        code = run(argv)
    except KeyboardInterrupt:  # between two statements of the error policy itself
        sys.stderr.write("interrupted\n")
        code = EXIT_INTERRUPTED
    sys.exit(code)
