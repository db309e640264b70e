"""Write the .rbl files of ``blueprints/`` from ``vggt_attn_rerun.viz.blueprint``.

python tools/make_blueprints.py           # regenerate
python tools/make_blueprints.py --check   # exit 1 if a file is missing or stale
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import rerun as rr
import rerun.blueprint as rrb

from vggt_attn_rerun.viz.blueprint import compact_blueprint, default_blueprint
from vggt_attn_rerun.viz.paths import APPLICATION_ID

BLUEPRINT_DIR = Path(__file__).resolve().parent.parent / "blueprints"

# (name, num_frames, kinds, num_heads, queries): the synthetic example (3 views of the 4-head
# tiny model) and VGGT-1B (16 heads) on 4 and 8 views, with one query, global attention.
SIZES: tuple[tuple[str, int, tuple[str, ...], int, int], ...] = (
    ("tiny_s3", 3, ("global",), 4, 1),
    ("vggt_s4", 4, ("global",), 16, 1),
    ("vggt_s8", 8, ("global",), 16, 1),
)


def shipped_blueprints() -> dict[str, rrb.Blueprint]:
    """File name -> blueprint for every file of ``blueprints/``."""
    out: dict[str, rrb.Blueprint] = {}
    for name, s, kinds, heads, queries in SIZES:
        out[f"default_{name}.rbl"] = default_blueprint(s, kinds, heads, queries)
        out[f"compact_{name}.rbl"] = compact_blueprint(s, kinds, queries)
    return out


def blueprint_content(path: str | Path) -> list[tuple[str, str]]:
    """The decoded blueprint of an .rbl/.rrd, comparable across runs: sorted
    (entity path, component values) pairs, without row ids, timestamps and store ids."""
    reader = rr.chunk.RrdReader(path)
    rows: list[tuple[str, str]] = []
    for store in reader.blueprints():
        for chunk in reader.stream(store=store):
            batch = chunk.to_record_batch()
            keep = [n for n in batch.schema.names if n != "rerun.controls.RowId" and n != "log_time"]
            for row in batch.select(keep).to_pylist():
                rows.append((chunk.entity_path, repr(sorted(row.items()))))
    return sorted(rows)


def write_blueprints(folder: Path = BLUEPRINT_DIR) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, bp in shipped_blueprints().items():
        bp.save(APPLICATION_ID, folder / name)
        written.append(folder / name)
    return written


def stale_blueprints(folder: Path = BLUEPRINT_DIR) -> list[str]:
    """Names of the files in ``folder`` that are missing or differ from what the code generates."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = write_blueprints(Path(tmp))
        stale = []
        for path in fresh:
            old = folder / path.name
            if not old.exists() or blueprint_content(old) != blueprint_content(path):
                stale.append(path.name)
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python tools/make_blueprints.py", description="Regenerate the .rbl files of blueprints/."
    )
    ap.add_argument("--check", action="store_true", help="exit 1 if a file is missing or stale; write nothing")
    ap.add_argument("--dir", type=Path, default=BLUEPRINT_DIR, help=f"folder (default {BLUEPRINT_DIR})")
    args = ap.parse_args(argv)
    if args.check:
        stale = stale_blueprints(args.dir)
        if stale:
            print(f"stale blueprints in {args.dir}: {', '.join(stale)}; run python tools/make_blueprints.py")
            return 1
        print(f"blueprints in {args.dir} are up to date")
        return 0
    for path in write_blueprints(args.dir):
        print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
