"""Rerun importer: ``rerun run.npz`` (or dropping the file into the viewer) shows a saved run.

The viewer calls every ``rerun-importer-*`` executable on PATH for each file it opens, with the
file and ``--application-id``/``--recording-id`` (and more flags in newer versions, hence
``parse_known_args``). This one re-logs a file written by ``runfile.save_run`` to stdout with the
default blueprint, and exits with ``rr.EXTERNAL_IMPORTER_INCOMPATIBLE_EXIT_CODE`` (66) for any other
file so that the viewer tries its other importers.

Hostile files: ``load_run`` checks every member's header against the format before reading it,
bounds what a file may make loading and logging allocate (``checked_npz.read_bound``) and refuses rows
that cannot be attention probabilities. The recording streams, as it is logged, into an anonymous
temporary file (``io.streamfile``; no footer, so memory does not grow with the recording) and is copied to
stdout only once complete, so a bad file ends with one ``error:`` line on stderr, exit 1, and
nothing on stdout. Problems the viewer can show around (non-finite points, a degenerate camera)
are one ``warning:`` line each. A closed, full or broken stdout is one ``error:`` line, exit 1.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from typing import BinaryIO

import rerun as rr
import torch

from vggt_attn_rerun.core.capture import CaptureResult
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.io import streamfile
from vggt_attn_rerun.io.atomic import describe_os_error
from vggt_attn_rerun.io.runfile import is_run_file, load_run
from vggt_attn_rerun.viz.paths import APPLICATION_ID
from vggt_attn_rerun.viz.sinks import stream_sinks

#: the predictions whose NaN or infinite values are left out of the view (said in one line each)
_PIXEL_MAPS = ("depth", "depth_conf", "world_points", "world_points_conf")
# Long enough for Rerun to encode a large run, short enough not to look like a hang.
_FINISH_TIMEOUT_S = 600.0


def _non_finite_warnings(path: str, result: CaptureResult) -> list[str]:
    """One line per prediction map holding NaN or infinite values (counted frame by frame)."""
    lines = []
    for name in _PIXEL_MAPS:
        value = result.predictions.get(name)
        if value is None:
            continue
        bad = sum(int((~torch.isfinite(frame)).sum()) for frame in value.reshape(-1, *value.shape[2:]))
        if bad:
            lines.append(
                f"run file {path}: pred_{name} holds {bad} NaN or infinite values of {value.numel()}: "
                "those pixels are left out of the 3D view"
            )
    return lines


def _record(path: str, application_id: str, recording_id: str | None, out: BinaryIO) -> list[str]:
    """Log the run file into ``out`` (UserError for any bad file); returns the warning lines."""
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
    lines = _non_finite_warnings(path, result)
    options = RecordingOptions(kinds=result.rows.kinds, points=points)
    rec = rr.RecordingStream(application_id, recording_id=recording_id)
    if not streamfile.available():  # no named pipes: built in memory, then written
        memory = rec.memory_recording()
    else:
        pipe = streamfile.PipeToFile(out)
        # No footer: the viewer reads the stream as it comes, and Rerun would hold the footer's
        # index of every chunk in memory until the end (about 12 KiB a chunk).
        stream_sinks(rec, rr.FileSink(str(pipe.path), write_footer=False))
    try:
        rec.send_blueprint(default_blueprint_for(result, options), make_active=False, make_default=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            log_run(rec, result, images, options)
        rec.flush()
    finally:
        rec.disconnect()  # the file sink closes the pipe
        if streamfile.available():
            complete = pipe.close(_FINISH_TIMEOUT_S)
    if not streamfile.available():
        out.write(memory.drain_as_bytes())
    elif pipe.error is not None:
        raise UserError(f"cannot show run file {path}: a temporary file: {describe_os_error(pipe.error)}")
    elif not complete:
        raise UserError(f"cannot show run file {path}: Rerun did not finish the recording in {_FINISH_TIMEOUT_S:g} s")
    return list(dict.fromkeys(lines + [" ".join(str(w.message).split()) for w in caught]))  # each once


def _error(message: str) -> int:
    print("error: " + " ".join(message.split()), file=sys.stderr)  # one line, whatever the message holds
    return 1


def _stdout_is_open() -> bool:
    # Python sets sys.__stdout__ to None when descriptor 1 was closed at start-up; by now a file
    # opened by an import may hold descriptor 1, which must then never be written.
    if sys.__stdout__ is None:
        return False
    try:
        os.fstat(1)
    except OSError:
        return False
    return True


def _copy_to_stdout(f: BinaryIO) -> None:
    """Write the recording to file descriptor 1 (no Python buffer: nothing left to fail at exit)."""
    f.seek(0)
    while chunk := f.read(streamfile.CHUNK_BYTES):
        view = memoryview(chunk)
        while view:
            view = view[os.write(1, view) :]


def _stdout_error(e: OSError) -> str:
    if e.errno == errno.EPIPE:
        return "cannot write the recording to standard output: the reader closed the pipe (Broken pipe)"
    return f"cannot write the recording to standard output: {describe_os_error(e)}"


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 with the recording on stdout; 66 for a file that is not a run file; 1 with ONE
    ``error:`` line on stderr and nothing on stdout for a run file that cannot be shown (or a
    stdout that cannot take it); warnings are one ``warning:`` line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("filepath")
    parser.add_argument("--application-id", default=APPLICATION_ID)
    parser.add_argument("--recording-id", default=None)
    args, _ = parser.parse_known_args(argv)  # e.g. --entity-path-prefix: not applied
    if not is_run_file(args.filepath):
        return rr.EXTERNAL_IMPORTER_INCOMPATIBLE_EXIT_CODE
    if not _stdout_is_open():
        return _error("standard output is closed: the importer writes the recording there (for the Rerun viewer)")
    try:
        with tempfile.TemporaryFile(prefix="vggt-attn-rerun-import-") as out:
            try:
                lines = _record(args.filepath, args.application_id, args.recording_id, out)
            except UserError as err:
                return _error(str(err))
            except Exception as err:  # a file load_run let through but the logger refused: still one line
                return _error(f"cannot show run file {args.filepath}: {type(err).__name__}: {err}")
            for line in lines:
                print("warning: " + " ".join(line.split()), file=sys.stderr)
            try:
                _copy_to_stdout(out)
            except OSError as e:
                return _error(_stdout_error(e))
    except OSError as e:  # the temporary file itself (no space in the temporary folder)
        return _error(f"cannot show run file {args.filepath}: a temporary file: {describe_os_error(e)}")
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
