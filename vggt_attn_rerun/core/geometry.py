"""Cameras and points from VGGT's predictions, in VGGT's world frame (the first camera, OpenCV axes).

Written with torch/numpy only so that recordings of the tiny test model need no `vggt` install;
tests compare these against `vggt.utils` whenever it is importable.
"""

from __future__ import annotations

import numpy as np
import torch


def quat_to_mat(quat: torch.Tensor) -> torch.Tensor:
    """Quaternions ``[..., 4]`` in (x, y, z, w) order -> rotation matrices ``[..., 3, 3]``."""
    q = quat / quat.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    x, y, z, w = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*q.shape[:-1], 3, 3)


def pose_encoding_to_cameras(pose_enc: torch.Tensor, image_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """VGGT's ``pose_enc [..., 9]`` (T xyz, quaternion xyzw, fov_h, fov_w) -> cameras.

    Returns:
        extrinsics ``[..., 3, 4]`` camera-from-world ``[R | t]`` and
        intrinsics ``[..., 3, 3]`` in pixels with the principal point at the image centre.
    """
    h, w = image_hw
    rot = quat_to_mat(pose_enc[..., 3:7])
    extrinsics = torch.cat([rot, pose_enc[..., :3, None]], dim=-1)
    fy = (h / 2.0) / torch.tan(pose_enc[..., 7] / 2.0)
    fx = (w / 2.0) / torch.tan(pose_enc[..., 8] / 2.0)
    intrinsics = torch.zeros(*pose_enc.shape[:-1], 3, 3, dtype=pose_enc.dtype, device=pose_enc.device)
    intrinsics[..., 0, 0] = fx
    intrinsics[..., 1, 1] = fy
    intrinsics[..., 0, 2] = w / 2.0
    intrinsics[..., 1, 2] = h / 2.0
    intrinsics[..., 2, 2] = 1.0
    return extrinsics, intrinsics


def invert_extrinsics(extrinsics: np.ndarray) -> np.ndarray:
    """Camera-from-world ``[..., 3, 4]`` -> world-from-camera ``[..., 3, 4]``."""
    rot = extrinsics[..., :3, :3]
    t = extrinsics[..., :3, 3:]
    rot_t = np.swapaxes(rot, -1, -2)
    return np.concatenate([rot_t, -rot_t @ t], axis=-1)


def unproject_depth(depth: np.ndarray, extrinsics: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """Depth ``[S, H, W]`` (z along the optical axis) -> world points ``[S, H, W, 3]``.

    Pixel (i, j) is sampled at its index (i, j), the convention VGGT's own unprojection and
    its training data use, so points agree with ``world_points`` of a well-trained model.
    """
    s, h, w = depth.shape
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    out = np.empty((s, h, w, 3), dtype=np.float32)
    cam_to_world = invert_extrinsics(extrinsics.astype(np.float64))
    for i in range(s):
        k = intrinsics[i].astype(np.float64)
        z = depth[i].astype(np.float64)
        cam = np.stack([(u - k[0, 2]) / k[0, 0] * z, (v - k[1, 2]) / k[1, 1] * z, z], axis=-1)
        out[i] = cam @ cam_to_world[i, :, :3].T + cam_to_world[i, :, 3]
    return out


def project_points(points: np.ndarray, extrinsics: np.ndarray, intrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points ``[N, 3]`` into one camera -> (pixels ``[N, 2]`` in index convention, depth ``[N]``)."""
    cam = points @ extrinsics[:3, :3].T + extrinsics[:3, 3]
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (cam[:, :2] / z[:, None]) * np.diag(intrinsics)[:2] + intrinsics[:2, 2]
    return uv, z
