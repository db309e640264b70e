"""The output folder of a study, written so that a crash or Ctrl-C leaves only complete files::

    DIR/study.json            the options of the study (a re-run must use the same ones), written
                              with the first done scene: a run that did nothing binds nothing
    DIR/.lock                 held (flock) by the run using the folder: a second run is refused
    DIR/scenes/{key}.parquet  one scene's rows (one row group); its presence marks the scene done
    DIR/scenes/{key}.rrd      the scene's recording (--rrd), written before its .parquet
    DIR/scenes/{key}.effects.parquet   the scene's effect table (--ablate), written before its .parquet
    DIR/failures.jsonl        one JSON object per failed scene of the last run: scene, path, reason
    DIR/scenes.parquet        every done scene's rows, one row group per scene, in scene order
    DIR/summary.parquet, DIR/summary.md, DIR/summary.rrd   the aggregate (batch.aggregate)
    DIR/effects_summary.parquet   with --ablate: each effect's mean and interval over scenes

Every file is written to a temporary name in the same folder and renamed into place
(``io.atomic.write_file``), so readers never see half a file; a re-run skips the scenes whose .parquet
exists (and, with --rrd, whose .rrd exists; with --ablate, whose .effects.parquet
exists) and retries the failed ones. A scene table that cannot
be read back whole with the study's columns (truncated, emptied, edited) is removed and its scene
run again (``damaged``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from vggt_attn_rerun.batch.inputs import Scene
from vggt_attn_rerun.batch.job import EFFECT_SCHEMA, SCHEMA, SceneOutcome, StudyOptions
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.io.atomic import PARTIAL_MARK, describe_os_error, write_file

STUDY_FILE = "study.json"
FAILURES_FILE = "failures.jsonl"
LOCK_FILE = ".lock"


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
        """Refuse a folder that cannot hold this study (nothing is written): a file, a path under a
        file, a folder that takes no new file, a non-empty folder that holds no study, or a study
        made with other options."""
        where = f"--out {self.root}"
        if self.root.name.startswith("-"):
            raise UserError(f"{where}: a folder name starting with '-' reads as an option; rename it")
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"{where}: is a file, give a folder")
        self._check_writable()
        study = self.root / STUDY_FILE
        if study.exists():
            try:
                have = json.loads(study.read_text(encoding="utf-8")).get("options", {})
            except (OSError, ValueError, AttributeError) as e:
                raise UserError(f"{where}: cannot read {STUDY_FILE} ({e}); use another --out") from None
            want = self.options.identity()
            # A study without --ablate leaves its settings out of study.json: compare them both ways.
            want |= {k: None for k in ("ablate", "ablation") if k in have and k not in want}
            diff = [f"{k}: {have.get(k)!r} there, {v!r} now" for k, v in want.items() if have.get(k) != v]
            if diff:
                raise UserError(
                    f"--out {self.root} holds a study made with other options ({'; '.join(diff)}): "
                    "re-run with the same options to resume it, or use another --out"
                )
        elif self.root.exists() and not self._holds_only_a_study_not_started():
            raise UserError(f"{where}: the folder is not empty and holds no study; use a new folder")

    def _check_writable(self) -> None:
        """The folder, or the nearest folder above it that exists, must take a new file (probed:
        permission bits say nothing for root, ACLs or a read-only mount)."""
        where = f"--out {self.root}"
        folder = self.root
        while not folder.exists() and folder.parent != folder:
            folder = folder.parent
        if not folder.is_dir():  # --out file.txt/study
            raise UserError(f"{where}: {folder} is a file, not a folder")
        try:
            fd, probe = tempfile.mkstemp(prefix=f".probe{PARTIAL_MARK}", dir=folder)
        except OSError as e:
            raise UserError(f"{where}: cannot write to folder {folder} ({describe_os_error(e)})") from None
        os.close(fd)
        os.unlink(probe)

    def _holds_only_a_study_not_started(self) -> bool:
        """What a run that saved no scene leaves (before study.json exists): the lock, the
        failures of that run, an empty scenes/ folder and temporary files."""
        for p in self.root.iterdir():
            if p.name in (LOCK_FILE, FAILURES_FILE) or PARTIAL_MARK in p.name:
                continue
            if p == self.scenes_dir and p.is_dir() and not any(self.scenes_dir.glob("*.parquet")):
                continue
            return False
        return True

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's lock (creating the folder) for the block; UserError when another run
        holds it. The lock is released by the system when the process ends, however it ends."""
        import fcntl

        where = f"--out {self.root}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"{where}: cannot create the folder or its lock ({describe_os_error(e)})") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                who = f" (process {holder})" if holder.isdigit() else ""
                raise UserError(
                    f"{where}: another batch run is using this folder{who}; wait for it to end, or use another --out"
                ) from None
            except OSError:  # a file system without locks (some network mounts): run as before, unlocked
                pass
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the lock

    def open(self) -> None:
        """``check()``, then create the folder and drop temp files of a killed run (call it with
        the lock held: another run's temporary files are not stale)."""
        self.check()
        try:
            self.scenes_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--out {self.root}: cannot create {self.scenes_dir} ({describe_os_error(e)})") from None
        for stale in [*self.scenes_dir.glob(f".*{PARTIAL_MARK}*"), *self.root.glob(f".*{PARTIAL_MARK}*")]:
            stale.unlink(missing_ok=True)  # never a complete file

    def _write_study(self) -> None:
        study = self.root / STUDY_FILE
        if not study.exists():
            text = json.dumps({"options": self.options.identity()}, indent=2) + "\n"
            write_bytes_atomic(study, text.encode("utf-8"))

    def table_path(self, scene: Scene) -> Path:
        return self.scenes_dir / f"{scene.key}.parquet"

    def rrd_path(self, scene: Scene) -> Path:
        return self.scenes_dir / f"{scene.key}.rrd"

    def effects_path(self, scene: Scene) -> Path:
        return self.scenes_dir / f"{scene.key}.effects.parquet"

    def is_done(self, scene: Scene) -> bool:
        return (
            self.table_path(scene).exists()
            and (not self.options.rrd or self.rrd_path(scene).exists())
            and (self.options.ablate is None or self.effects_path(scene).exists())
        )

    def table_problem(self, scene: Scene) -> str | None:
        """Why the scene's table cannot be used (None: it can): unreadable, other columns, no rows.
        Reads the file's footer only."""
        try:
            meta = pq.ParquetFile(self.table_path(scene))
        except Exception as e:  # ArrowInvalid, OSError, ...: truncated, emptied or not Parquet
            return f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
        if not meta.schema_arrow.equals(SCHEMA):
            return "other columns than a scene table has"
        if meta.metadata.num_rows < 1:
            return "no rows"
        return None

    def damaged(self, scenes: Sequence[Scene]) -> list[tuple[Scene, str]]:
        """The done scenes whose table cannot be used, with why; their files are removed, so that
        they count as not done and run again."""
        out = []
        for scene in scenes:
            if not self.table_path(scene).exists():
                continue
            problem = self.table_problem(scene)
            if problem is not None:
                out.append((scene, problem))
                self.table_path(scene).unlink(missing_ok=True)
                self.rrd_path(scene).unlink(missing_ok=True)
                self.effects_path(scene).unlink(missing_ok=True)
        return out

    def pending(self, scenes: Sequence[Scene]) -> list[Scene]:
        return [s for s in scenes if not self.is_done(s)]

    def start_run(self) -> None:
        """Failures of earlier runs are retried by this one: their log starts afresh."""
        (self.root / FAILURES_FILE).unlink(missing_ok=True)

    def save(self, outcome: SceneOutcome) -> None:
        """A done scene's files (the .rrd and .effects.parquet first: the .parquet marks the scene
        done), or its failure line."""
        if outcome.error is not None or outcome.table is None:
            self._log_failure(outcome)
            return
        self._write_study()  # the first done scene: the options are known to work now
        if isinstance(outcome.rrd, Path):  # a file of the local engine: copied a MiB at a time, then removed
            with outcome.rrd.open("rb") as src:
                write_file(self.rrd_path(outcome.scene), lambda f: shutil.copyfileobj(src, f, 1 << 20))
            outcome.rrd.unlink()
        elif outcome.rrd is not None:
            write_bytes_atomic(self.rrd_path(outcome.scene), outcome.rrd)
        if outcome.effects is not None:
            write_table_atomic(self.effects_path(outcome.scene), outcome.effects)
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

    def read_effects(self, scenes: Sequence[Scene]) -> list[pa.Table]:
        """The effect tables of the done scenes (--ablate), in scene order."""
        return [pq.read_table(self.effects_path(s), schema=EFFECT_SCHEMA) for s in scenes if self.is_done(s)]

    def write_combined(self, tables: Sequence[pa.Table]) -> Path:
        """``scenes.parquet``: every done scene, one row group per scene, in scene order."""
        path = self.root / "scenes.parquet"

        def write(f: BinaryIO) -> None:
            with pq.ParquetWriter(f, SCHEMA) as writer:
                for table in tables:
                    writer.write_table(table, row_group_size=max(1, table.num_rows))

        write_file(path, write)
        return path
