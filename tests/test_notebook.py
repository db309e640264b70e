"""examples/demo_attention.ipynb (the earlier script's notebook) runs top to bottom on the tiny model."""

import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from PIL import Image

from vggt_attn_rerun.testing import synthetic_scene

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "demo_attention.ipynb"


def _parameters(photos: list[Path]) -> str:
    # 84x56 photos at IMAGE_SIZE 84: 6x4 patches, P = 5 + 24 = 29; token 41 is frame 1, index 12.
    return "\n".join(
        [
            f"image_paths = {[str(p) for p in photos]!r}",
            'MODEL = "tiny"',
            "IMAGE_SIZE = 84",
            "BLOCK = 3",
            "TOKEN = 41",
            "HEAD = 0",
        ]
    )


@pytest.fixture
def photos(tmp_path) -> list[Path]:
    out = []
    for i, img in enumerate(synthetic_scene(2, 56, 84, seed=4)):
        out.append(tmp_path / f"view{i}.png")
        Image.fromarray(img).save(out[-1])
    return out


@pytest.mark.slow
def test_the_guide_notebook_runs_on_the_tiny_model(photos, tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")  # headless: plt.show() draws nothing
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "the notebook has one cell tagged 'parameters'"
    params[0].source = _parameters(photos)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    print(f"notebook ran in {time.perf_counter() - t0:.1f} s")
    text = "\n".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
    errors = [out for cell in nb.cells for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors
    assert "2 frames, 29 tokens per frame, token 41 = frame 1, index 12" in text
    assert "global maps (2, 4, 6) frame map (4, 6)" in text
    assert "same map from the index within the frame: True" in text
    assert "all frames: (2, 4, 6) [0, 1]" in text
    assert "Attention weights shape: (1, 4, 58, 58), layer global_block_3" in text
    assert "['frame', 'global']" in text
