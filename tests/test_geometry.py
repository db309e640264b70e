"""Cameras and points from VGGT's pose encoding (compared with vggt.utils when importable)."""

import numpy as np
import pytest
import torch

from vggt_attn_rerun.core.geometry import (
    invert_extrinsics,
    pose_encoding_to_cameras,
    project_points,
    quat_to_mat,
    unproject_depth,
)


def _pose_enc(s=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(1, s, 3, generator=g)
    quat = torch.nn.functional.normalize(torch.randn(1, s, 4, generator=g), dim=-1)
    fov = 0.8 + 0.4 * torch.rand(1, s, 2, generator=g)
    return torch.cat([t, quat, fov], -1)


def test_identity_quaternion_is_identity_rotation():
    torch.testing.assert_close(quat_to_mat(torch.tensor([0.0, 0.0, 0.0, 1.0])), torch.eye(3))


def test_rotations_are_orthonormal():
    r = quat_to_mat(_pose_enc()[..., 3:7])
    torch.testing.assert_close(r @ r.transpose(-1, -2), torch.eye(3).expand_as(r), atol=1e-5, rtol=0)


def test_unprojected_depth_projects_back_to_its_pixels():
    extr, intr = pose_encoding_to_cameras(_pose_enc(2), (28, 42))
    extr, intr = extr[0].numpy(), intr[0].numpy()
    depth = np.random.default_rng(0).uniform(1, 3, (2, 28, 42)).astype(np.float32)
    pts = unproject_depth(depth, extr, intr)
    uv, z = project_points(pts[1].reshape(-1, 3), extr[1], intr[1])
    v, u = np.mgrid[0:28, 0:42]
    np.testing.assert_allclose(uv, np.stack([u.ravel(), v.ravel()], -1), atol=1e-3)
    np.testing.assert_allclose(z, depth[1].ravel(), rtol=1e-5)


def test_invert_extrinsics_composes_to_identity():
    extr = pose_encoding_to_cameras(_pose_enc(1), (10, 10))[0][0, 0].double().numpy()
    inv = invert_extrinsics(extr)
    comp = extr[:, :3] @ inv[:, :3]
    np.testing.assert_allclose(comp, np.eye(3), atol=1e-6)  # R from fp32 quaternions
    np.testing.assert_allclose(extr[:, :3] @ inv[:, 3] + extr[:, 3], 0, atol=1e-6)


def test_cameras_and_points_match_vggt_utils():
    pose_enc_mod = pytest.importorskip("vggt.utils.pose_enc", reason="the vggt package is not installed")
    geometry_mod = pytest.importorskip("vggt.utils.geometry", reason="vggt.utils.geometry needs einops")
    pe = _pose_enc(3, seed=4)
    ours = pose_encoding_to_cameras(pe, (28, 42))
    theirs = pose_enc_mod.pose_encoding_to_extri_intri(pe, (28, 42))
    torch.testing.assert_close(ours[0], theirs[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours[1], theirs[1], atol=1e-5, rtol=1e-6)
    depth = np.random.default_rng(1).uniform(1, 3, (3, 28, 42, 1)).astype(np.float32)
    want = geometry_mod.unproject_depth_map_to_point_map(depth, theirs[0][0].numpy(), theirs[1][0].numpy())
    got = unproject_depth(depth[..., 0], ours[0][0].numpy(), ours[1][0].numpy())
    np.testing.assert_allclose(got, want, atol=1e-5)
