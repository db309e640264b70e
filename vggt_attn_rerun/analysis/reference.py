"""The geometry a score is measured against: the model's own predictions or the truth.

``Geometry`` holds the cameras (and optionally the depth) of a run's S views in MODEL INPUT
pixels, VGGT's index convention (pixel ``j`` sampled at ``u = j``, the OpenCV convention):

- ``extrinsics [S, 3, 4]``: camera-from-world ``[R | t]`` (OpenCV: x right, y down, z forward);
- ``intrinsics [S, 3, 3]``; ``depth [S, H, W]`` (z along the optical axis, NaN = unknown) or None;
- ``reference``: ``"model"`` (VGGT's predicted cameras and depth: ``model_geometry``) or
  ``"truth"`` (cameras that came with the data: ``truth_geometry``).

``truth_geometry`` maps cameras given in the ORIGINAL photo's pixels through each frame's
resize/crop/pad (``core.images.FrameTransform``, ``model = original * scale + offset`` in
continuous pixels): ``fx' = fx * sx``, ``cx' = (cx + 0.5) * sx + ox - 0.5`` (the +-0.5 moves
between the index and the continuous convention), and samples the depth at each model pixel's
centre (nearest photo pixel; NaN outside the photo, e.g. in white padding).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vggt_attn_rerun.core.geometry import pose_encoding_to_cameras
from vggt_attn_rerun.core.images import FrameTransform, LoadedImages
from vggt_attn_rerun.core.tokens import TokenLayout
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.io.cameras import read_cameras

REFERENCES = ("model", "truth")


@dataclass
class Geometry:
    """Cameras and optional depth of S views in model input pixels (see the module docstring)."""

    extrinsics: np.ndarray
    intrinsics: np.ndarray
    depth: np.ndarray | None
    reference: str = "model"

    def __post_init__(self) -> None:
        if self.reference not in REFERENCES:
            raise UserError(f"reference must be one of {', '.join(REFERENCES)}, got {self.reference!r}")


def model_geometry(predictions: Mapping[str, object], layout: TokenLayout, needed_by: str = "the scores") -> Geometry:
    """VGGT's predicted cameras (``pose_enc``) and depth (``depth``, None when absent) as a Geometry."""
    from vggt_attn_rerun.analysis.visibility import prediction_array  # visibility imports this module

    h, w = layout.image_size
    pose_enc = prediction_array(predictions, "pose_enc", (layout.num_frames, 9), needed_by)
    extr, intr = (t.numpy() for t in pose_encoding_to_cameras(torch.from_numpy(pose_enc), (h, w)))
    depth = None
    if "depth" in predictions:
        depth = prediction_array(predictions, "depth", (layout.num_frames, h, w), needed_by)
    return Geometry(extr, intr, depth, "model")


def check_cameras(extrinsics: np.ndarray, intrinsics: np.ndarray, num_frames: int, where: str) -> None:
    """UserError unless ``[S, 3, 4]`` finite extrinsics and ``[S, 3, 3]`` finite intrinsics with focal > 0."""
    if extrinsics.shape != (num_frames, 3, 4) or intrinsics.shape != (num_frames, 3, 3):
        raise UserError(
            f"{where}: cameras must be extrinsics [{num_frames}, 3, 4] and intrinsics [{num_frames}, 3, 3], got "
            f"{list(extrinsics.shape)} and {list(intrinsics.shape)}"
        )
    if not (np.isfinite(extrinsics).all() and np.isfinite(intrinsics).all()):
        raise UserError(f"{where}: cameras hold non-finite values")
    if not (intrinsics[:, 0, 0] > 0).all() or not (intrinsics[:, 1, 1] > 0).all():
        raise UserError(f"{where}: focal lengths (intrinsics[0, 0], [1, 1]) must be > 0")


def truth_geometry(
    extrinsics: np.ndarray,
    intrinsics: np.ndarray,
    depth: Sequence[np.ndarray] | None,
    transforms: Sequence[FrameTransform],
) -> Geometry:
    """True cameras (and depth) given in each original photo's pixels -> a Geometry in model pixels.

    Args:
        extrinsics: ``[S, 3, 4]`` OpenCV camera-from-world. intrinsics: ``[S, 3, 3]`` in the photo's
            pixels, OpenCV convention (pixel ``j`` centred at ``u = j``).
        depth: None, or S arrays ``[orig_h, orig_w]`` of z in the photo's pixels (NaN or <= 0 = unknown).
        transforms: the S frame transforms of the loaded images (``LoadedImages.transforms``).
    """
    s = len(transforms)
    extr = np.asarray(extrinsics, np.float64)
    intr = np.asarray(intrinsics, np.float64)
    check_cameras(extr, intr, s, "ground-truth cameras")
    k = intr.copy()
    for i, t in enumerate(transforms):
        k[i, 0, 0], k[i, 0, 1] = intr[i, 0, 0] * t.scale_x, intr[i, 0, 1] * t.scale_x
        k[i, 1, 1] = intr[i, 1, 1] * t.scale_y
        k[i, 0, 2] = (intr[i, 0, 2] + 0.5) * t.scale_x + t.offset_x - 0.5
        k[i, 1, 2] = (intr[i, 1, 2] + 0.5) * t.scale_y + t.offset_y - 0.5
    model_depth = None
    if depth is not None:
        if len(depth) != s:
            raise UserError(f"ground-truth depth: got {len(depth)} maps for {s} frames")
        model_depth = np.stack([_resample_depth(np.asarray(d, np.float64), t) for d, t in zip(depth, transforms,
                                                                                             strict=True)])  # fmt: skip
    return Geometry(extr, k, model_depth, "truth")


def _resample_depth(depth: np.ndarray, t: FrameTransform) -> np.ndarray:
    """``[orig_h, orig_w]`` -> ``[model_h, model_w]``: the photo pixel under each model pixel's centre."""
    if depth.shape != (t.orig_h, t.orig_w):
        raise UserError(f"ground-truth depth has shape {list(depth.shape)}, the photo is {t.orig_h} x {t.orig_w}")
    x = (np.arange(t.model_w) + 0.5 - t.offset_x) / t.scale_x
    y = (np.arange(t.model_h) + 0.5 - t.offset_y) / t.scale_y
    col, row = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    inside = (row[:, None] >= 0) & (row[:, None] < t.orig_h) & (col[None] >= 0) & (col[None] < t.orig_w)
    out = depth[np.clip(row, 0, t.orig_h - 1)[:, None], np.clip(col, 0, t.orig_w - 1)[None]]
    out = np.where(inside & np.isfinite(out) & (out > 0), out, np.nan)
    return out


def patch_points(geometry: Geometry, frames: np.ndarray, patches: np.ndarray, patch_size: int) -> np.ndarray:
    """``[Q, 3]`` world points: the mean of the depth unprojected over each query patch's pixels.

    ``frames [Q]``, ``patches [Q, 2]`` (row, col; -1 = no patch: NaN point). Pixels with unknown
    depth are skipped; a patch with none gets NaN.
    """
    if geometry.depth is None:
        raise UserError(f"the {geometry.reference} geometry has no depth: the correspondence scores need depth")
    ps = patch_size
    out = np.full((len(frames), 3), np.nan)
    v, u = np.mgrid[0:ps, 0:ps].astype(np.float64)
    for i, (f, (r, c)) in enumerate(zip(frames, patches, strict=True)):
        if r < 0:
            continue
        z = geometry.depth[f, r * ps : (r + 1) * ps, c * ps : (c + 1) * ps]
        k = geometry.intrinsics[f]
        ok = np.isfinite(z) & (z > 0)
        if not ok.any():
            continue
        x_cam = np.stack([((u + c * ps) - k[0, 2]) / k[0, 0] * z, ((v + r * ps) - k[1, 2]) / k[1, 1] * z, z], -1)[ok]
        rot, t = geometry.extrinsics[f, :, :3], geometry.extrinsics[f, :, 3]
        out[i] = ((x_cam - t) @ rot).mean(0)  # R^T (x - t)
    return out


def cameras_geometry(path: str | Path, images: LoadedImages) -> Geometry:
    """The true geometry of loaded photos from ``cameras.npz`` or a COLMAP model (``io.cameras``),
    matched to the photos by file name and mapped through their resize/crop (``truth_geometry``)."""
    if images.paths is None:
        raise UserError("cameras are matched to the photos by file name: give image files, not a tensor")
    extr, intr, depth = read_cameras(path).for_photos(images.paths)
    return truth_geometry(extr, intr, depth, images.transforms)
