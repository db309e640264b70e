"""Synthetic photos for tests and demos."""

from __future__ import annotations

import math

import numpy as np


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
