"""The package's imports flow one way: cli -> front ends -> api -> viz -> analysis -> io -> core."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vggt_attn_rerun"

# Lower rank = lower layer. A module may import modules of its own rank or lower, never higher.
# One rank per folder (and per module at the top of the package): a folder is one layer.
RANKS = {
    "errors": 0,
    "core": 1,
    "io": 2,
    "analysis": 3,
    "testing": 3,
    "viz": 4,
    "api": 5,
    "interactive": 6,
    "batch": 6,
    "legacy": 6,
    "cli": 7,
    "__init__": 8,
    "__main__": 8,
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def rank(module: str) -> int:
    """Rank of a module (``core.capture``) by its longest prefix in RANKS."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in RANKS:
            return RANKS[key]
    raise KeyError(f"no layer for vggt_attn_rerun.{module}: add it to RANKS")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module inside the package) for every import of the package in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: relative import; write vggt_attn_rerun.... in full")
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vggt_attn_rerun"):
            if node.module == "vggt_attn_rerun":
                names = [f"vggt_attn_rerun.{a.name}" for a in node.names]
            else:
                names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("vggt_attn_rerun.")]
        found += [(node.lineno, n.removeprefix("vggt_attn_rerun.")) for n in names]
    return found


def _third_party(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            mods.add(node.module.split(".")[0])
    return mods


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_package_has_modules_to_check():
    assert len(MODULES) > 20


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_to_the_same_or_a_lower_layer(path):
    me = _module_name(path)
    backward = [(line, m) for line, m in _imports(path) if rank(m) > rank(me)]
    assert not backward, f"{me} (rank {rank(me)}) imports higher layers: {backward}"


def test_each_folder_is_one_layer():
    assert [name for name in RANKS if "." in name] == []
    folders = {p.relative_to(PACKAGE).parts[0] for p in MODULES if len(p.relative_to(PACKAGE).parts) > 1}
    assert folders and folders <= set(RANKS)


def test_nothing_imports_the_cli():
    users = [
        f"{_module_name(p)}:{line}"
        for p in MODULES
        if not _module_name(p).startswith("cli")
        for line, m in _imports(p)
        if m == "cli" or m.startswith("cli.")
    ]
    assert users == []


def test_only_viz_and_the_layers_above_it_import_rerun():
    below_viz = [p for p in MODULES if rank(_module_name(p)) < RANKS["viz"]]
    assert below_viz
    offenders = [_module_name(p) for p in below_viz if "rerun" in _third_party(p)]
    assert offenders == []


def test_the_rank_check_catches_a_backward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from vggt_attn_rerun.viz.log_run import log_run\n")
    assert [m for _, m in _imports(bad)] == ["viz.log_run"] and rank("viz.log_run") > rank("core.capture")
