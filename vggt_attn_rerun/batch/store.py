"""The output folder of a study, written so that a crash or Ctrl-C leaves only complete files::

    DIR/study.json            the options of the study (a re-run must use the same ones)
    DIR/scenes/{key}.parquet  one scene's rows (one row group); its presence marks the scene done
    DIR/scenes/{key}.rrd      the scene's recording (--rrd), written before its .parquet
    DIR/failures.jsonl        one JSON object per failed scene of the last run: scene, path, reason
    DIR/scenes.parquet        every done scene's rows, one row group per scene, in scene order
    DIR/summary.parquet, DIR/summary.md, DIR/summary.rrd   the aggregate (batch.aggregate)

Every file is written to a temporary name in the same folder and renamed into place
(``io.atomic.write_file``), so readers never see half a file; a re-run skips the scenes whose .parquet
exists (and, with --rrd, whose .rrd exists) and retries the failed ones.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from vggt_attn_rerun.batch.inputs import Scene
from vggt_attn_rerun.batch.job import SCHEMA, SceneOutcome, StudyOptions
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.io.atomic import PARTIAL_MARK, write_file

STUDY_FILE = "study.json"
FAILURES_FILE = "failures.jsonl"


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_file(path, lambda f: f.write(data))


def write_table_atomic(path: Path, table: pa.Table) -> None:
    """One row group for the whole table (a scene's rows are always read together)."""
    write_file(path, lambda f: pq.write_table(table, f, row_group_size=max(1, table.num_rows)))


class StudyFolder:
    """The output folder (module docstring): its options, done scenes, per-scene files, failures."""

    def __init__(self, root: str | Path, options: StudyOptions) -> None:
        self.root = Path(root).expanduser()
        self.options = options
        self.scenes_dir = self.root / "scenes"

    def check(self) -> None:
        """Refuse a folder that cannot hold this study (nothing is written): a file, a non-empty folder
        that holds no study, or a study made with other options."""
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"--out {self.root}: is a file, give a folder")
        study = self.root / STUDY_FILE
        if study.exists():
            try:
                have = json.loads(study.read_text(encoding="utf-8")).get("options", {})
            except (OSError, ValueError) as e:
                raise UserError(f"--out {self.root}: cannot read {STUDY_FILE} ({e}); use another --out") from None
            want = self.options.identity()
            diff = [f"{k}: {have.get(k)!r} there, {v!r} now" for k, v in want.items() if have.get(k) != v]
            if diff:
                raise UserError(
                    f"--out {self.root} holds a study made with other options ({'; '.join(diff)}): "
                    "re-run with the same options to resume it, or use another --out"
                )
        elif self.root.exists() and any(self.root.iterdir()):
            raise UserError(f"--out {self.root}: the folder is not empty and holds no study; use a new folder")

    def open(self) -> None:
        """``check()``, then create the folder (and study.json) and drop temp files of a killed run."""
        self.check()
        self.scenes_dir.mkdir(parents=True, exist_ok=True)
        for stale in [*self.scenes_dir.glob(f".*{PARTIAL_MARK}*"), *self.root.glob(f".*{PARTIAL_MARK}*")]:
            stale.unlink(missing_ok=True)  # never a complete file
        study = self.root / STUDY_FILE
        if not study.exists():
            text = json.dumps({"options": self.options.identity()}, indent=2) + "\n"
            write_bytes_atomic(study, text.encode("utf-8"))

    def table_path(self, scene: Scene) -> Path:
        return self.scenes_dir / f"{scene.key}.parquet"

    def rrd_path(self, scene: Scene) -> Path:
        return self.scenes_dir / f"{scene.key}.rrd"

    def is_done(self, scene: Scene) -> bool:
        return self.table_path(scene).exists() and (not self.options.rrd or self.rrd_path(scene).exists())

    def pending(self, scenes: Sequence[Scene]) -> list[Scene]:
        return [s for s in scenes if not self.is_done(s)]

    def start_run(self) -> None:
        """Failures of earlier runs are retried by this one: their log starts afresh."""
        (self.root / FAILURES_FILE).unlink(missing_ok=True)

    def save(self, outcome: SceneOutcome) -> None:
        """A done scene's files (the .rrd first: the .parquet marks the scene done), or its failure line."""
        if outcome.error is not None or outcome.table is None:
            self._log_failure(outcome)
            return
        if outcome.rrd is not None:
            write_bytes_atomic(self.rrd_path(outcome.scene), outcome.rrd)
        write_table_atomic(self.table_path(outcome.scene), outcome.table)

    def _log_failure(self, outcome: SceneOutcome) -> None:
        entry: dict[str, Any] = {
            "scene": outcome.scene.name,
            "path": str(outcome.scene.path),
            "reason": outcome.error or "no table",
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if outcome.details:
            entry["traceback"] = outcome.details
        line = (json.dumps(entry) + "\n").encode()
        # One write on an O_APPEND descriptor: a line is in the file whole or not at all.
        fd = os.open(self.root / FAILURES_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def failures(self) -> list[dict[str, Any]]:
        path = self.root / FAILURES_FILE
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def read_tables(self, scenes: Sequence[Scene]) -> list[pa.Table]:
        """The tables of the done scenes, in scene order."""
        return [pq.read_table(self.table_path(s), schema=SCHEMA) for s in scenes if self.table_path(s).exists()]

    def write_combined(self, tables: Sequence[pa.Table]) -> Path:
        """``scenes.parquet``: every done scene, one row group per scene, in scene order."""
        path = self.root / "scenes.parquet"

        def write(f: BinaryIO) -> None:
            with pq.ParquetWriter(f, SCHEMA) as writer:
                for table in tables:
                    writer.write_table(table, row_group_size=max(1, table.num_rows))

        write_file(path, write)
        return path
