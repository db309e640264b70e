"""Adapters hand the recording VGGT's prediction keys, derived exactly from each model's own output."""

import math

import numpy as np
import torch

from vggt_attn_rerun.core.adapters import adapter_for
from vggt_attn_rerun.core.adapters.pi3 import mat_to_quat, vggt_predictions
from vggt_attn_rerun.core.geometry import pose_encoding_to_cameras, quat_to_mat, unproject_depth
from vggt_attn_rerun.testing.tiny_vggt_omega import tiny_vggt_omega


def _rotation(seed: int) -> torch.Tensor:
    q = torch.nn.functional.normalize(
        torch.randn(4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=0
    )
    return quat_to_mat(q)


def test_mat_to_quat_inverts_quat_to_mat():
    rots = torch.stack([_rotation(i) for i in range(20)])
    torch.testing.assert_close(quat_to_mat(mat_to_quat(rots)), rots, atol=1e-10, rtol=0)


def test_pi3_cameras_and_points_become_vggt_pose_enc_in_the_first_camera_frame():
    h, w, s = 6, 8, 2
    fx, fy = 7.0, 5.0
    z = 1.0 + torch.rand(1, s, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    u = torch.arange(w, dtype=torch.float64) - w / 2
    v = torch.arange(h, dtype=torch.float64)[:, None] - h / 2
    local = torch.stack([u / fx * z, v / fy * z, z], -1)  # an exact pinhole camera
    c2w = torch.eye(4, dtype=torch.float64).repeat(1, s, 1, 1)
    for i in range(s):
        c2w[0, i, :3, :3], c2w[0, i, :3, 3] = _rotation(10 + i), torch.tensor([i, 0.5, -i], dtype=torch.float64)
    points = torch.einsum("bsij,bshwj->bshwi", c2w[..., :3, :3], local) + c2w[..., None, None, :3, 3]
    out = {"points": points, "local_points": local, "conf": torch.zeros(1, s, h, w, 1), "camera_poses": c2w}
    got = vggt_predictions(out, h, w)
    extr, intr = pose_encoding_to_cameras(got["pose_enc"][0], (h, w))
    torch.testing.assert_close(intr[:, 0, 0], torch.full((s,), fx, dtype=torch.float64))
    torch.testing.assert_close(intr[:, 1, 1], torch.full((s,), fy, dtype=torch.float64))
    torch.testing.assert_close(extr[0], torch.eye(4, dtype=torch.float64)[:3])  # world = first camera
    # VGGT's unprojection of pi3's depth with the derived cameras gives the derived world points.
    world = unproject_depth(z[0].numpy(), extr.numpy(), intr.numpy())
    np.testing.assert_allclose(world, got["world_points"][0].numpy(), atol=1e-5)
    assert math.isclose(float(got["world_points_conf"].max()), 0.5)


def test_omega_world_points_are_its_depth_unprojected_with_its_cameras():
    model = tiny_vggt_omega()
    images = torch.rand(1, 2, 3, 32, 48)
    with torch.no_grad():
        got = adapter_for(model).run(model, images)
    extr, intr = pose_encoding_to_cameras(got["pose_enc"][0].double(), (32, 48))
    want = unproject_depth(got["depth"][0, ..., 0].numpy(), extr.numpy(), intr.numpy())
    np.testing.assert_allclose(got["world_points"][0].numpy(), want, atol=1e-5)
