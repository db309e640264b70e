import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vggt_attn_rerun.testing import synthetic_scene, tiny_vggt


@pytest.fixture(scope="session")
def tiny_model():
    return tiny_vggt(seed=0)


@pytest.fixture(scope="session")
def scene_images() -> torch.Tensor:
    """Three 56x84 views (4x6 patches): ``[3, 3, 56, 84]`` in [0, 1]."""
    return torch.from_numpy(synthetic_scene(3, 56, 84, seed=1)).permute(0, 3, 1, 2).float() / 255


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    """A folder of three 84x56 PNG photos of the synthetic scene."""
    folder = tmp_path / "scene"
    folder.mkdir()
    for i, img in enumerate(synthetic_scene(3, 56, 84)):
        Image.fromarray(img).save(folder / f"view_{i}.png")
    return folder


@pytest.fixture
def forward_calls(monkeypatch) -> list:
    """Counts the forward passes of the model the CLI loads (through core.loading.load_model)."""
    from vggt_attn_rerun.core import loading

    calls: list = []
    real = loading.load_model

    def counting(*args, **kwargs):
        model = real(*args, **kwargs)
        model.register_forward_hook(lambda *_: calls.append(1))
        return model

    monkeypatch.setattr(loading, "load_model", counting)
    return calls


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """Where a test's run saves its recording (the folder is not created)."""
    return tmp_path / "out" / "attn.rrd"


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if the CLI loads a model: bad input must be reported before the (slow) load."""
    from vggt_attn_rerun.core import loading

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the command line was checked")

    monkeypatch.setattr(loading, "load_model", refuse)


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Path:
    """A folder no new file can be written to (mode 0o555; as root, which ignores permission bits,
    /sys, which refuses new files even to root)."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        folder = Path("/sys")
        if not folder.is_dir():
            pytest.skip("running as root and no read-only file system at hand")
    return folder
