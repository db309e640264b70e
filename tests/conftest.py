import numpy as np
import pytest
import torch

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
