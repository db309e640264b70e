"""The README's commands are the ones CI runs."""

import re
from pathlib import Path

import pytest
from PIL import Image

from vggt_attn_rerun.testing import synthetic_scene

ROOT = Path(__file__).resolve().parent.parent


def _ci_test_command() -> str:
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    return next(ln for ln in lines if "pytest" in ln and not ln.startswith("#"))


def test_ci_runs_the_readme_test_command_verbatim():
    assert _ci_test_command() in (ROOT / "README.md").read_text()


def test_ci_installs_cpu_torch_before_anything_else():
    assert _ci_test_command().startswith("pip install torch==2.13.0 && ")


def _python_block(page: Path) -> str:
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    assert blocks, f"{page.name} has no python block"
    return blocks[0]


@pytest.fixture
def two_photos(tmp_path, monkeypatch):
    """``a.jpg`` and ``b.jpg`` (84x56 synthetic views) in the working directory."""
    for name, image in zip(("a.jpg", "b.jpg"), synthetic_scene(2, 56, 84, seed=0), strict=True):
        Image.fromarray(image).save(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_readme_python_quick_start_runs(two_photos):
    namespace: dict = {}
    exec(_python_block(ROOT / "README.md"), namespace)
    assert namespace["res"].rows.patches("global").shape[:2] == (4, 2)  # tiny model: 4 blocks; 2 queries
    assert (two_photos / "scene.rrd").stat().st_size > 0


def test_the_earlier_scripts_snippet_in_the_docs_runs(two_photos):
    namespace: dict = {}
    exec(_python_block(ROOT / "docs" / "legacy-api.md"), namespace)
    weights = namespace["weights"]
    assert weights.shape[-1] == weights.shape[-2] == namespace["attn"]["global_attention"]["num_tokens"]
    assert namespace["values"]["attention_maps"].shape[0] == 2  # one map per view
