"""Synthetic photos for tests and demos, and rendered scenes with exact cameras and depth."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vggt_attn_rerun.io.cameras import NPZ_NAME, write_cameras_npz


def synthetic_scene(num_frames: int = 3, height: int = 56, width: int = 84, seed: int = 0) -> np.ndarray:
    """A textured scene seen by a camera sliding sideways: ``[S, H, W, 3]`` uint8 photos.

    Each view is a window into one larger procedural texture, shifted by a few pixels per
    frame, so the same surface point appears in several views (useful to see cross-view
    attention).
    """
    rng = np.random.default_rng(seed)
    big_w = width + 8 * num_frames
    yy, xx = np.mgrid[0:height, 0:big_w].astype(np.float32)
    base = np.zeros((height, big_w, 3), np.float32)
    for _ in range(6):
        fx, fy, phase = rng.uniform(0.02, 0.15), rng.uniform(0.02, 0.15), rng.uniform(0, 2 * math.pi)
        color = rng.uniform(0.2, 1.0, 3)
        base += np.sin(xx * fx + yy * fy + phase)[..., None] * color
    for _ in range(5):  # a few solid discs to give distinct landmarks
        cx, cy, r = rng.uniform(0, big_w), rng.uniform(0, height), rng.uniform(4, 10)
        base[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(-3, 3, 3)
    base = (base - base.min()) / (np.ptp(base) + 1e-6)
    views = [base[:, 8 * i : 8 * i + width] for i in range(num_frames)]
    return (np.stack(views) * 255).round().astype(np.uint8)


#: the camera paths of ``render_scene``
CAMERA_PATHS = ("sideways", "forward", "orbit")


@dataclass
class RenderedScene:
    """Photos with their exact geometry: ``images [S, H, W, 3]`` uint8, ``intrinsics [S, 3, 3]``
    (OpenCV convention: pixel j centred at u = j), ``extrinsics [S, 3, 4]`` (OpenCV camera-from-world),
    ``depth [S, H, W]`` (z along the optical axis; every pixel hits a surface)."""

    images: np.ndarray
    intrinsics: np.ndarray
    extrinsics: np.ndarray
    depth: np.ndarray


def _value_noise(u: np.ndarray, v: np.ndarray, rng: np.random.Generator, scales=(0.8, 0.25)) -> np.ndarray:
    """``[..., 3]`` colors in [0, 1]: bilinear random color lattices at a coarse and a fine scale."""
    out = np.zeros(u.shape + (3,))
    for weight, scale in zip((0.45, 0.55), scales, strict=True):
        n = 64
        lattice = rng.uniform(0, 1, (n, n, 3))
        x, y = u / scale, v / scale
        x0, y0 = np.floor(x), np.floor(y)
        fx, fy = (x - x0)[..., None], (y - y0)[..., None]
        i0, j0 = x0.astype(np.int64) % n, y0.astype(np.int64) % n
        i1, j1 = (i0 + 1) % n, (j0 + 1) % n
        top = lattice[j0, i0] * (1 - fx) + lattice[j0, i1] * fx
        bottom = lattice[j1, i0] * (1 - fx) + lattice[j1, i1] * fx
        out += weight * (top * (1 - fy) + bottom * fy)
    return out


def _camera_path(path: str, num_frames: int, step: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Camera-from-world rotations and world centres (OpenCV axes: x right, y down, z forward)."""
    rots, centres = [], []
    for i in range(num_frames):
        if path == "sideways":
            rots.append(np.eye(3))
            centres.append(np.array([step * i, 0.0, 0.0]))
        elif path == "forward":
            rots.append(np.eye(3))
            centres.append(np.array([0.0, 0.0, step * i]))
        else:  # orbit around (0, 0, 3), looking at it
            a = step * i
            c, s = math.cos(a), math.sin(a)
            rots.append(np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]))
            centres.append(np.array([3 * math.sin(a), 0.0, 3 - 3 * math.cos(a)]))
    return rots, centres


def render_scene(
    path: str = "sideways",
    num_frames: int = 3,
    height: int = 84,
    width: int = 126,
    seed: int = 0,
    step: float | None = None,
) -> RenderedScene:
    """Render a procedural scene with exact cameras and depth (numpy ray casting, no downloads).

    The scene: a textured wall at z = 4, a textured floor at y = 1 and two textured boxes in
    front of the wall (random sizes and places from ``seed``), seen by ``num_frames`` pinhole
    cameras on a ``path`` of CAMERA_PATHS: ``sideways`` (x steps of ``step``, default 0.6),
    ``forward`` (z steps, default 0.8), ``orbit`` (around the point (0, 0, 3) by ``step``
    radians, default 0.25). Textures are random color lattices (value noise), so every patch
    looks different. Lighting is flat: a surface point has the same color in every view.
    """
    if path not in CAMERA_PATHS:
        raise ValueError(f"unknown camera path {path!r}: valid are {', '.join(CAMERA_PATHS)}")
    rng = np.random.default_rng(seed)
    step = {"sideways": 0.6, "forward": 0.8, "orbit": 0.25}[path] if step is None else step
    f = 0.9 * width
    k = np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1.0]])
    boxes = []
    for _ in range(2):
        lo = np.array([rng.uniform(-1.4, 0.6), rng.uniform(-0.6, 0.3), rng.uniform(2.4, 3.2)])
        boxes.append((lo, lo + np.array([rng.uniform(0.4, 0.8), rng.uniform(0.4, 0.7), rng.uniform(0.3, 0.6)])))
    textures = [int(rng.integers(1 << 31)) for _ in range(2 + 3 * len(boxes))]
    rots, centres = _camera_path(path, num_frames, step)
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    cam_dirs = np.stack([(u - k[0, 2]) / f, (v - k[1, 2]) / f, np.ones_like(u)], -1)  # z_cam = 1
    images, depths, extr = [], [], []
    for rot, centre in zip(rots, centres, strict=True):
        d = cam_dirs @ rot  # world directions R^T d: the ray parameter is z_cam
        best = np.full((height, width), np.inf)
        color = np.zeros((height, width, 3))
        # Planes: the wall z = 4 (texture x, y) and the floor y = 1 (texture x, z).
        for axis, level, (ta, tb), tex in ((2, 4.0, (0, 1), textures[0]), (1, 1.0, (0, 2), textures[1])):
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (level - centre[axis]) / d[..., axis]
            hit = np.isfinite(t) & (t > 1e-6) & (t < best)
            p = centre + t[..., None] * d
            best = np.where(hit, t, best)
            color = np.where(hit[..., None], _value_noise(p[..., ta], p[..., tb], np.random.default_rng(tex)), color)
        for b, (lo, hi) in enumerate(boxes):
            with np.errstate(divide="ignore", invalid="ignore"):
                t0, t1 = (lo - centre) / d, (hi - centre) / d
            tn = np.minimum(t0, t1)
            t_in, t_out = tn.max(-1), np.maximum(t0, t1).min(-1)
            face = tn.argmax(-1)  # the axis of the face the ray enters through
            hit = (t_in <= t_out) & (t_in > 1e-6) & (t_in < best)
            p = centre + t_in[..., None] * d
            for axis in range(3):
                a, c = [x for x in range(3) if x != axis]
                tex = _value_noise(p[..., a], p[..., c], np.random.default_rng(textures[2 + 3 * b + axis]))
                sel = hit & (face == axis)
                color = np.where(sel[..., None], tex, color)
            best = np.where(hit, t_in, best)
        images.append((np.clip(color, 0, 1) * 255).round().astype(np.uint8))
        depths.append(best)
        extr.append(np.concatenate([rot, -(rot @ centre)[:, None]], 1))
    return RenderedScene(np.stack(images), np.stack([k] * num_frames), np.stack(extr), np.stack(depths))


def write_scene(folder: str | Path, scene: RenderedScene, depth: bool = True) -> Path:
    """A scene folder: ``00.png``, ``01.png``, ... and ``cameras.npz`` (``io.cameras``; depth optional)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    names = [f"{i:02d}.png" for i in range(len(scene.images))]
    for name, img in zip(names, scene.images, strict=True):
        Image.fromarray(img).save(out / name)
    write_cameras_npz(out / NPZ_NAME, names, scene.intrinsics, scene.extrinsics, scene.depth if depth else None)
    return out
