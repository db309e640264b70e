"""True cameras (and depth) that come with a scene: a COLMAP reconstruction or ``cameras.npz``.

Two formats, both giving per photo (by file name) the intrinsics ``K [3, 3]`` in the photo's
own pixels, OpenCV convention (pixel ``j`` centred at ``u = j``), and the OpenCV camera-from-world
extrinsics ``[R | t] [3, 4]`` (x right, y down, z forward: ``x_cam = R X + t``):

- **COLMAP** (what COLMAP and VGGT's own exporter write): a folder with ``cameras.bin`` and
  ``images.bin`` (or the ``.txt`` files), read with ``pycolmap`` (the ``colmap`` extra). Only the
  pinhole models (``SIMPLE_PINHOLE``, ``PINHOLE``) are read: undistort other models first
  (``colmap image_undistorter``). COLMAP puts pixel centres at ``+0.5``; the reader moves the
  principal point by -0.5 into the OpenCV convention. COLMAP has no dense depth.
- **cameras.npz**: ``names [S]`` (unicode, the photos' file names), ``intrinsics [S, 3, 3]``,
  ``extrinsics [S, 3, 4]`` (or ``[S, 4, 4]`` with last row ``0 0 0 1``), and optional
  ``depth [S, H, W]`` (z along the optical axis in the photo's pixels; 0 or NaN = unknown; all
  photos of one size). ``write_cameras_npz`` writes it.

``find_cameras(folder)`` looks in a scene folder for ``cameras.npz``, then ``sparse/0/``, then
``sparse/`` (COLMAP's layout: ``images/`` beside ``sparse/0/``).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.io.atomic import write_file
from vggt_attn_rerun.io.checked_npz import CheckedNpz, NpzDamaged

PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")
NPZ_NAME = "cameras.npz"


@dataclass
class SceneCameras:
    """Cameras by photo name (see the module docstring); ``depth`` None when the source has none."""

    names: list[str]
    intrinsics: np.ndarray  # [N, 3, 3] OpenCV convention, photo pixels
    extrinsics: np.ndarray  # [N, 3, 4] OpenCV camera-from-world
    depth: np.ndarray | None  # [N, H, W] or None
    source: str

    def for_photos(self, photos: Sequence[str | Path]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray] | None]:
        """(extrinsics ``[S, 3, 4]``, intrinsics ``[S, 3, 3]``, depth maps or None) in the order of ``photos``.

        Photos are matched by file name; UserError names the first photo with no camera.
        """
        index = {name: i for i, name in enumerate(self.names)}
        picks = []
        for photo in photos:
            name = Path(photo).name
            if name not in index:
                known = ", ".join(sorted(index)[:5]) + (" ..." if len(index) > 5 else "")
                raise UserError(f"{self.source}: no camera for photo {name} (cameras are named: {known})")
            picks.append(index[name])
        depth = None if self.depth is None else [self.depth[i] for i in picks]
        return self.extrinsics[picks], self.intrinsics[picks], depth


def find_cameras(folder: Path) -> Path | None:
    """The cameras of a scene folder: ``cameras.npz``, ``sparse/0/`` or ``sparse/`` (first found), else None."""
    for candidate in (folder / NPZ_NAME, folder / "sparse" / "0", folder / "sparse"):
        if candidate.is_file() or (candidate.is_dir() and _is_colmap(candidate)):
            return candidate
    return None


def _is_colmap(folder: Path) -> bool:
    return any((folder / f"{part}.{ext}").is_file() for part in ("cameras", "images") for ext in ("bin", "txt"))


def read_cameras(path: str | Path) -> SceneCameras:
    """The cameras at ``path``: a ``.npz`` file, a COLMAP folder, or a scene folder holding one."""
    p = Path(path).expanduser()
    if p.is_dir() and not _is_colmap(p):
        found = find_cameras(p)
        if found is None:
            raise UserError(
                f"cameras {path}: no cameras.npz, COLMAP model (cameras.bin/images.bin or .txt) or sparse/ folder in it"
            )
        p = found
    if p.is_dir():
        return _read_colmap(p)
    if p.is_file():
        return _read_npz(p)
    raise UserError(f"cameras {path}: no such file or folder (give cameras.npz or a COLMAP sparse folder)")


def _read_npz(path: Path) -> SceneCameras:
    what = f"cameras file {path}"
    try:
        with CheckedNpz(path, what) as z:
            names_a = z.read("names", "U", (None,))
            s = len(names_a)
            intr = z.read("intrinsics", "fiu", (s, 3, 3)).astype(np.float64)
            ext_head = z.header("extrinsics") if z.has("extrinsics") else None
            if ext_head is None:
                raise z.damaged("member 'extrinsics' is missing")
            extr = z.read("extrinsics", "fiu", (s, ext_head.shape[1] if len(ext_head.shape) == 3 else 3, 4))
            extr = extr.astype(np.float64)
            depth = z.read("depth", "fiu", (s, None, None)).astype(np.float64) if z.has("depth") else None
    except NpzDamaged as e:
        raise UserError(f"{what} is not a readable npz archive: {e}") from None
    if extr.shape[1] == 4:
        if not np.allclose(extr[:, 3], [0, 0, 0, 1]):
            raise UserError(f"{what}: 4x4 extrinsics need the last row 0 0 0 1")
        extr = extr[:, :3]
    names = [str(n) for n in names_a]
    if len(set(names)) != len(names):
        raise UserError(f"{what}: a photo name appears twice in 'names'")
    return SceneCameras(names, intr, extr, depth, what)


def _read_colmap(folder: Path) -> SceneCameras:
    what = f"COLMAP model {folder}"
    try:
        import pycolmap
    except ImportError:
        raise UserError(f"{what}: reading COLMAP needs pycolmap: pip install 'vggt-attn-rerun[colmap]'") from None
    try:
        rec = pycolmap.Reconstruction(str(folder))
    except Exception as e:  # pycolmap raises its own types for unreadable models
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{what}: pycolmap cannot read it ({why})") from None
    names, intr, extr = [], [], []
    for _, image in sorted(rec.images.items()):
        camera = rec.cameras[image.camera_id]
        if camera.model_name not in PINHOLE_MODELS:
            raise UserError(
                f"{what}: camera {image.camera_id} is {camera.model_name}; only {', '.join(PINHOLE_MODELS)} are "
                "read (undistort first: colmap image_undistorter)"
            )
        pose = image.cam_from_world
        pose = pose() if callable(pose) else pose  # a method since pycolmap 3.12 (frames), a property before
        if pose is None:
            continue  # an image without a registered pose has no camera
        k = np.array(camera.calibration_matrix(), np.float64)
        k[:2, 2] -= 0.5  # COLMAP centres pixel j at j + 0.5
        names.append(image.name.replace("\\", "/").rsplit("/", 1)[-1])
        intr.append(k)
        extr.append(np.array(pose.matrix(), np.float64))
    if not names:
        raise UserError(f"{what}: it has no registered images")
    return SceneCameras(names, np.stack(intr), np.stack(extr), None, what)


def write_cameras_npz(
    path: str | Path,
    names: Sequence[str],
    intrinsics: np.ndarray,
    extrinsics: np.ndarray,
    depth: np.ndarray | None = None,
) -> Path:
    """Write ``cameras.npz`` (module docstring) atomically: ``[S, 3, 3]``, ``[S, 3, 4]``, optional ``[S, H, W]``."""
    arrays = {
        "names": np.array([str(n) for n in names]),
        "intrinsics": np.asarray(intrinsics, np.float64),
        "extrinsics": np.asarray(extrinsics, np.float64),
    }
    if depth is not None:
        arrays["depth"] = np.asarray(depth, np.float32)

    def write(f) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        f.write(buf.getvalue())

    write_file(path, write)
    return Path(path)
