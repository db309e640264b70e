"""Rerun importer: ``rerun run.npz`` (or dropping the file into the viewer) shows a saved run.

The viewer calls every ``rerun-importer-*`` executable on PATH for each file it opens, with the
file and ``--application-id``/``--recording-id`` (and more flags in newer versions, hence
``parse_known_args``). This one re-logs a file written by ``runfile.save_run`` to stdout with the
default blueprint, and exits with ``rr.EXTERNAL_IMPORTER_INCOMPATIBLE_EXIT_CODE`` (66) for any other
file so that the viewer tries its other importers.

Hostile files: ``load_run`` checks every member's header against the format before reading it
and bounds what a file may make it allocate (``npzsafe.read_bound``); the recording is built in
memory and written to stdout only once complete, so a bad file ends with one ``error:`` line on
stderr, exit 1, and nothing on stdout.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import rerun as rr

from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.io.runfile import is_run_file, load_run
from vggt_attn_rerun.viz.paths import APPLICATION_ID


def _recording_bytes(path: str, application_id: str, recording_id: str | None) -> bytes:
    """The whole recording of a run file, built in memory (UserError for any bad file)."""
    result, images = load_run(path)
    from vggt_attn_rerun.viz.blueprint import default_blueprint_for
    from vggt_attn_rerun.viz.log_run import log_run
    from vggt_attn_rerun.viz.options import RecordingOptions

    if "pose_enc" not in result.predictions:
        raise UserError(f"run file {path} has no camera poses (member pred_pose_enc): nothing to place the views")
    pairs = [("world_points", "world_points_conf"), ("depth", "depth_conf")]
    points = next((a for a, b in pairs if a in result.predictions and b in result.predictions), None)
    if points is None:
        raise UserError(
            f"run file {path} has no point map: expected pred_world_points and pred_world_points_conf, "
            "or pred_depth and pred_depth_conf"
        )
    options = RecordingOptions(kinds=result.rows.kinds, points=points)
    rec = rr.RecordingStream(application_id, recording_id=recording_id)
    memory = rec.memory_recording()
    rec.send_blueprint(default_blueprint_for(result, options), make_active=False, make_default=True)
    log_run(rec, result, images, options)
    rec.flush()
    return memory.drain_as_bytes()


def _error(message: str) -> int:
    print("error: " + " ".join(message.split()), file=sys.stderr)  # one line, whatever the message holds
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 with the recording on stdout; 66 for a file that is not a run file; 1 with ONE
    ``error:`` line on stderr and nothing on stdout for a run file that cannot be shown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("filepath")
    parser.add_argument("--application-id", default=APPLICATION_ID)
    parser.add_argument("--recording-id", default=None)
    args, _ = parser.parse_known_args(argv)  # e.g. --entity-path-prefix: not applied
    if not is_run_file(args.filepath):
        return rr.EXTERNAL_IMPORTER_INCOMPATIBLE_EXIT_CODE
    try:
        data = _recording_bytes(args.filepath, args.application_id, args.recording_id)
    except UserError as err:
        return _error(str(err))
    except Exception as err:  # a file load_run let through but the logger refused: still one line
        return _error(f"cannot show run file {args.filepath}: {type(err).__name__}: {err}")
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
