"""The scenes of a study: a folder of scene folders, or a manifest file.

- A folder: every sub-folder not starting with "." is a scene (its photos: core.images rules),
  named after the sub-folder, in name order.
- A manifest: a text file with one scene folder per line (``#`` comments, blank lines skipped;
  named after the folder), or a CSV file (a ``.csv`` name, or a first line ``scene,path``) whose
  header is ``scene,path`` (named by ``scene``), in file order. Relative paths are relative to the manifest's folder.

Scene names must be unique; ``Scene.key`` is the file-name-safe form the outputs are named by.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

from vggt_attn_rerun.errors import UserError

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Scene:
    """One scene: a name and the folder of its photos."""

    name: str
    path: Path

    @property
    def key(self) -> str:
        """The name if it is a safe file name, else a safe form of it plus a hash (stays unique).
        A key never starts with "-" or ".": other tools would read it as an option or hide it."""
        if _SAFE.fullmatch(self.name) and len(self.name) <= 120:
            return self.name
        digest = hashlib.sha1(self.name.encode()).hexdigest()[:10]
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", self.name).strip("._-")[:80]
        return f"{safe}-{digest}" if safe else f"scene-{digest}"


def _from_folder(root: Path) -> list[Scene]:
    # A symbolic link that loops or points nowhere is no folder, but it was meant as a scene: kept,
    # so that the study reports it (study.check_scenes) instead of skipping it without a word.
    subs = sorted(p for p in root.iterdir() if (p.is_dir() or p.is_symlink()) and not p.name.startswith("."))
    if not subs:
        raise UserError(
            f"SCENES {root}: no scene folders in it; give a folder of scene folders (one folder of photos "
            "per scene) or a manifest file (one scene folder per line, or CSV with scene,path)"
        )
    return [Scene(p.name, p) for p in subs]


def _from_csv(text: str, base: Path, where: str) -> list[Scene]:
    reader = csv.DictReader(io.StringIO(text))
    try:
        fields = [f.strip() for f in reader.fieldnames or []]
    except csv.Error as e:
        raise UserError(f"{where} line {reader.line_num}: not CSV ({e})") from None
    if fields[:2] != ["scene", "path"]:
        shown = ",".join(fields)
        shown = shown if len(shown) <= 80 else shown[:80] + "..."
        raise UserError(f"{where}: a CSV manifest needs the header scene,path, got {shown}")
    out = []
    while True:
        try:
            row = next(reader, None)
        except csv.Error as e:
            raise UserError(f"{where} line {reader.line_num}: not CSV ({e})") from None
        if row is None:
            return out
        values = list(row.values())
        name, path = (str(v or "").strip() for v in values[:2])
        if not name or not path:
            # line_num: the file line the row ends on (blank lines and quoted line breaks count)
            raise UserError(f"{where} line {reader.line_num}: needs a scene name and a path")
        out.append(Scene(name, base / Path(path).expanduser()))


def _from_lines(text: str, base: Path, where: str) -> list[Scene]:
    out = []
    for line in text.splitlines():
        item = line.split("#", 1)[0].strip()
        if item:
            path = base / Path(item).expanduser()
            out.append(Scene(path.name or str(path), path))
    return out


def discover_scenes(source: str | Path) -> list[Scene]:
    """The scenes of a folder of scene folders or of a manifest, in a deterministic order.

    UserError when there are none, when the source does not exist, or when two scenes share a name.
    """
    root = Path(source).expanduser()
    if root.is_dir():
        scenes = _from_folder(root)
    elif root.is_file():
        where = f"manifest {root}"
        try:
            text = root.read_text(encoding="utf-8-sig")  # -sig: a BOM (Windows editors) is not text
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{where}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
        base = root.parent
        is_csv = root.suffix.lower() == ".csv" or first.replace(" ", "").lower().startswith("scene,path")
        scenes = _from_csv(text, base, where) if is_csv else _from_lines(text, base, where)
        if not scenes:
            raise UserError(f"{where}: no scenes in it (one scene folder per line, or CSV with scene,path)")
    else:
        raise UserError(f"SCENES {source}: no such folder or manifest file")
    names: set[str] = set()
    keys: set[str] = set()
    for scene in scenes:
        if scene.name in names or scene.key in keys:
            raise UserError(f"scene name {scene.name!r} is used twice: scene names must be unique")
        names.add(scene.name)
        keys.add(scene.key)
    return scenes
