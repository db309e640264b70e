"""Rerun importer: ``rerun run.npz`` (or dropping the file into the viewer) shows a saved run.

The viewer calls every ``rerun-importer-*`` executable on PATH for each file it opens, with the
file and ``--application-id``/``--recording-id`` (and more flags in newer versions, hence
``parse_known_args``). This one re-logs a file written by ``export.save_run`` to stdout with the
default blueprint, and exits with ``rr.EXTERNAL_IMPORTER_INCOMPATIBLE_EXIT_CODE`` for any other file
so that the viewer tries its other importers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import rerun as rr

from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.io.runfile import is_run_file, load_run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("filepath")
    parser.add_argument("--application-id", default="vggt_attn_rerun")
    parser.add_argument("--recording-id", default=None)
    parser.add_argument("--entity-path-prefix", default=None)
    args, _ = parser.parse_known_args(argv)
    if not is_run_file(args.filepath):
        return rr.EXTERNAL_IMPORTER_INCOMPATIBLE_EXIT_CODE
    try:
        result, images = load_run(args.filepath)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    from vggt_attn_rerun.viz.blueprint import default_blueprint_for
    from vggt_attn_rerun.viz.log_run import log_run
    from vggt_attn_rerun.viz.options import RecordingOptions

    options = RecordingOptions(kinds=result.rows.kinds)
    rec = rr.RecordingStream(args.application_id, recording_id=args.recording_id)
    rec.stdout(default_blueprint=default_blueprint_for(result, options))
    log_run(rec, result, images, options)
    rec.flush()
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
