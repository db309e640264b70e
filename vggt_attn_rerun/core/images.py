"""Loading photos into VGGT's input tensor with Pillow only, keeping the pixel mapping.

``load_images`` gives the same tensor, bit for bit, as vggt's
``vggt.utils.load_fn.load_and_preprocess_images`` (which needs torchvision), and also records,
for every frame, the affine map between the original photo and the model image
(``FrameTransform``), so that a click on the photo can be turned into a patch token and back.

Pixel coordinates are continuous (see tokens.py): pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)``,
which is the convention PIL's resize uses, so resizing by ``s`` maps ``x -> x * s`` exactly.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from vggt_attn_rerun.core.tokens import VGGT_IMAGE_SIZE, as_index
from vggt_attn_rerun.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MODES = ("crop", "pad")
_WHITE = 255
# Limits checked before any pixel is resized: a 1x1000 photo would otherwise be upscaled to
# 518x518000 (3 GB in the resize) only to be cropped back to 518x518.
MAX_IMAGE_SIZE = 4 * VGGT_IMAGE_SIZE  # model input width / long side: 2072 px, 148 patches
MAX_ASPECT_RATIO = 50  # long side / short side of a photo


@dataclass(frozen=True)
class FrameTransform:
    """Affine map from a pixel of the original photo to the model input image of one frame.

    ``model = original * scale + offset``, per axis. ``offset`` is where the resized photo's
    top-left corner lands in the model image: negative after a centre crop, positive after
    white padding.
    """

    orig_w: int
    orig_h: int
    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    model_w: int
    model_h: int

    @classmethod
    def identity(cls, width: int, height: int) -> FrameTransform:
        return cls(width, height, 1.0, 1.0, 0.0, 0.0, width, height)

    @property
    def original_size(self) -> tuple[int, int]:
        """(width, height) of the original photo."""
        return self.orig_w, self.orig_h

    def original_to_model(self, x: float, y: float) -> tuple[float, float]:
        return x * self.scale_x + self.offset_x, y * self.scale_y + self.offset_y

    def model_to_original(self, x: float, y: float) -> tuple[float, float]:
        return (x - self.offset_x) / self.scale_x, (y - self.offset_y) / self.scale_y

    def valid_model_box(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)``: the part of the model image covered by photo pixels.

        Excludes white padding; after a crop it is the whole image. Rounded to 6 decimals
        because ``orig * (new / orig)`` is not always exactly ``new`` in floating point.
        """
        x0, y0 = self.original_to_model(0.0, 0.0)
        x1, y1 = self.original_to_model(float(self.orig_w), float(self.orig_h))
        return (
            round(max(0.0, x0), 6),
            round(max(0.0, y0), 6),
            round(min(float(self.model_w), x1), 6),
            round(min(float(self.model_h), y1), 6),
        )


@dataclass
class LoadedImages:
    """Model input and its provenance.

    Attributes:
        tensor: ``[S, 3, H, W]`` float32 in [0, 1], H and W multiples of the patch size.
        paths: the S source files, or None when the images came from a tensor.
        transforms: S maps from each original photo to its model image.
    """

    tensor: torch.Tensor
    paths: list[Path] | None
    transforms: list[FrameTransform]

    @property
    def layout_hw(self) -> tuple[int, int]:
        """(H, W) of the model input image, as TokenLayout.for_image_size wants them."""
        return int(self.tensor.shape[-2]), int(self.tensor.shape[-1])


# -- finding files ----------------------------------------------------------------------------------
def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _images_in_folder(folder: Path) -> list[Path]:
    found = sorted(p for p in folder.iterdir() if p.is_file() and _is_image_name(p))
    if not found:
        raise UserError(f"folder {folder} holds no images: expected files ending in {', '.join(IMAGE_SUFFIXES)}")
    return found


def _images_from_glob(pattern: str) -> list[Path]:
    found = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
    images = [p for p in found if p.is_file() and _is_image_name(p)]
    if not images:
        raise UserError(f"pattern {pattern!r} matches no images: expected files ending in {', '.join(IMAGE_SUFFIXES)}")
    return images


def expand_image_paths(items: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Turn files, folders and glob patterns into a list of image files.

    The user's order of ``items`` is kept (frame 0 is VGGT's reference view); the images of a
    folder or a pattern are sorted by name. Folders are not searched recursively (a pattern with
    ``**`` is). A path given twice, directly or through a folder or pattern, is an error.
    """
    if not items:
        raise UserError("no images given: pass image files, folders or glob patterns")
    out: list[Path] = []
    for item in items:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            out.extend(_images_in_folder(path))
        elif path.exists():
            out.append(path)
        elif any(c in text for c in "*?["):
            out.extend(_images_from_glob(text))
        else:
            raise UserError(f"image path {text} does not exist: give an image file, a folder or a glob pattern")
    seen: dict[Path, Path] = {}
    for p in out:
        key = p.resolve()
        if key in seen:
            raise UserError(f"image {p} is given more than once: each view may appear only once")
        seen[key] = p
    return out


# -- loading ----------------------------------------------------------------------------------------
def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit grayscale ("I;16", "I") -> "L" by keeping the high byte.

    PIL's ``convert("RGB")`` clips such images at 255, which turns a 16-bit photo white (and
    vggt's loader does just that); scaling keeps the picture.
    """
    a = np.asarray(img, dtype=np.int64)
    if a.max(initial=0) > 255:
        a = a >> 8 if a.max() <= 65535 else (a - a.min()) * 255 // max(int(np.ptp(a)), 1)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), mode="L")


def _float_to_8bit(img: Image.Image, path: Path) -> Image.Image:
    """A float image (mode "F", e.g. a 32-bit TIFF) with values in [0, 1] -> "L" (x 255, rounded).

    PIL's ``convert("RGB")`` would clip such values to 0 or 1 out of 255: a black picture. Other
    ranges have no agreed meaning (0..255? HDR?) and are refused rather than guessed.
    """
    a = np.asarray(img, dtype=np.float64)
    if a.size == 0 or not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        finite = a[np.isfinite(a)]
        span = f"[{finite.min():g}, {finite.max():g}]" if finite.size else "NaN/inf only"
        odd = "" if finite.size == a.size else " and NaN/inf"
        raise UserError(
            f"image {path} holds floating-point pixels in {span}{odd}: valid float images hold values "
            "in [0, 1]; convert it to 8 or 16 bits"
        )
    return Image.fromarray(np.rint(a * 255).astype(np.uint8), mode="L")


def _open_rgb(path: Path) -> Image.Image:
    """Open a photo as RGB, upright, with transparent pixels white.

    Two differences from vggt's loader, both for photos it gets wrong: the EXIF orientation is
    applied (vggt ignores it, so a phone's portrait photo reaches the model sideways; pixel
    queries refer to the upright photo, as image viewers show it), and 16-bit grayscale is scaled
    to 8 bits instead of clipped to white. For every other photo the result is vggt's, bit for bit.
    """
    try:
        with Image.open(path) as img:
            img.load()  # surfaces truncated or corrupt data here, not later in resize
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                img = _to_8bit(img)
            elif img.mode == "F":
                img = _float_to_8bit(img, path)
            if img.mode == "RGBA":
                white = Image.new("RGBA", img.size, (255, 255, 255, 255))
                return Image.alpha_composite(white, img).convert("RGB")
            return img.convert("RGB")
    except UserError:
        raise
    except FileNotFoundError as e:
        raise UserError(f"image {path} does not exist") from e
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise UserError(
            f"cannot read image {path} ({e.__class__.__name__}: {e}): expected a readable "
            f"{', '.join(s.lstrip('.') for s in IMAGE_SUFFIXES)} file"
        ) from e


def check_image_size(size: int, patch: int) -> int:
    """The model input size (``--image-size``): a multiple of ``patch`` up to ``MAX_IMAGE_SIZE``."""
    if not (isinstance(size, int) and patch <= size <= MAX_IMAGE_SIZE and size % patch == 0):
        raise UserError(
            f"--image-size {size}: must be a multiple of {patch} from {patch} to {MAX_IMAGE_SIZE} "
            f"(VGGT was trained at {VGGT_IMAGE_SIZE})"
        )
    return size


def _check_aspect_ratio(width: int, height: int, path: Path) -> None:
    long_side, short_side = max(width, height), max(min(width, height), 1)
    if long_side > MAX_ASPECT_RATIO * short_side:
        raise UserError(
            f"image {path} is {width}x{height}: its aspect ratio ({long_side / short_side:.0f}:1) is too extreme; "
            f"valid images are at most {MAX_ASPECT_RATIO}:1"
        )


def _resized_size(width: int, height: int, mode: str, target: int, patch: int) -> tuple[int, int]:
    """(new_w, new_h) before any crop or pad: the long side (crop: the width) becomes ``target``,
    the other keeps the aspect ratio rounded to a multiple of ``patch``."""
    if mode == "pad" and height > width:
        return round(width * (target / height) / patch) * patch, target
    return target, round(height * (target / width) / patch) * patch


def _preprocess(img: Image.Image, path: Path, mode: str, target: int, patch: int) -> tuple[np.ndarray, FrameTransform]:
    """One photo -> ``[h, w, 3]`` uint8 model image and its transform (before mixed-size padding)."""
    width, height = img.size
    check_image_size(target, patch)
    _check_aspect_ratio(width, height, path)  # before resizing: the resize is what would allocate
    new_w, new_h = _resized_size(width, height, mode, target, patch)
    if new_w < patch or new_h < patch:
        raise UserError(
            f"image {path} is {width}x{height}: its aspect ratio is too extreme (it would become "
            f"{new_w}x{new_h} pixels); valid images are at least {patch} model pixels on each side"
        )
    pixels = np.asarray(img.resize((new_w, new_h), Image.Resampling.BICUBIC), dtype=np.uint8)
    off_x, off_y = 0, 0
    if mode == "crop" and new_h > target:
        top = (new_h - target) // 2
        pixels = pixels[top : top + target]
        off_y = -top
    if mode == "pad":
        pixels, (left, top) = _pad_white(pixels, target, target)
        off_x, off_y = left, top
    h, w = pixels.shape[:2]
    transform = FrameTransform(width, height, new_w / width, new_h / height, off_x, off_y, w, h)
    return pixels, transform


def _pad_white(pixels: np.ndarray, height: int, width: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Centre ``pixels`` [h, w, 3] on a white ``height x width`` canvas; the odd pixel goes after.

    Returns the canvas and (left, top)."""
    h, w = pixels.shape[:2]
    top, left = (height - h) // 2, (width - w) // 2
    if (top, left) == (0, 0) and (h, w) == (height, width):
        return pixels, (0, 0)
    canvas = np.full((height, width, 3), _WHITE, dtype=np.uint8)
    canvas[top : top + h, left : left + w] = pixels
    return canvas, (left, top)


def _shift(t: FrameTransform, dx: int, dy: int, width: int, height: int) -> FrameTransform:
    return FrameTransform(t.orig_w, t.orig_h, t.scale_x, t.scale_y, t.offset_x + dx, t.offset_y + dy, width, height)


_PATHS_HELP = "valid are an image path (str or pathlib.Path), a list of them, or LoadedImages"


def _as_paths(paths: object) -> list[Path]:
    """One path or a sequence of paths -> a list of Paths; anything else is a UserError."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if isinstance(paths, (bytes, bytearray)) or not isinstance(paths, Sequence):  # a set has no frame order
        raise UserError(f"cannot load images from {type(paths).__name__} {paths!r:.60}: {_PATHS_HELP}")
    bad = [p for p in paths if not isinstance(p, (str, os.PathLike))]
    if bad:
        raise UserError(f"image path {bad[0]!r:.60} is a {type(bad[0]).__name__}: {_PATHS_HELP}")
    if not paths:
        raise UserError("no images given: at least one image is required")
    return [Path(p) for p in paths]


def load_images(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | LoadedImages,
    mode: str = "crop",
    target_size: int = 518,
    patch_size: int = 14,
) -> LoadedImages:
    """Load photos as VGGT input, exactly as ``vggt.utils.load_fn.load_and_preprocess_images``.

    crop: width -> ``target_size``, height keeps the aspect ratio (multiple of ``patch_size``),
    centre-cropped to ``target_size`` if taller. pad: the long side -> ``target_size``, then
    white-padded to a ``target_size`` square. Frames of different shapes are white-padded,
    centred, to the largest height and width.

    Args:
        paths: one image file (str or Path), a list of them (the frames, in order), or
            LoadedImages (returned as they are). Anything else: UserError.

    Returns:
        LoadedImages with ``tensor [S, 3, H, W]`` float32 in [0, 1] and one transform per frame.
    """
    if isinstance(paths, LoadedImages):
        return paths
    if mode not in MODES:
        raise UserError(f"unknown image mode {mode!r}: valid modes are {', '.join(MODES)}")
    patch_size = as_index(patch_size, "patch_size", 1)
    target_size = as_index(target_size, "target_size", patch_size)
    files = _as_paths(paths)
    frames, transforms = [], []
    for path in files:
        pixels, transform = _preprocess(_open_rgb(path), path, mode, target_size, patch_size)
        frames.append(pixels)
        transforms.append(transform)

    height = max(f.shape[0] for f in frames)
    width = max(f.shape[1] for f in frames)
    batch = np.empty((len(frames), height, width, 3), dtype=np.uint8)
    for i, pixels in enumerate(frames):
        batch[i], (left, top) = _pad_white(pixels, height, width)
        transforms[i] = _shift(transforms[i], left, top, width, height)

    # float32 / 255 is what torchvision's ToTensor computes, so the result matches vggt bit for bit.
    tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).to(torch.float32).div(255).contiguous()
    return LoadedImages(tensor, files, transforms)


def images_from_tensor(t: torch.Tensor, patch_size: int = 14) -> LoadedImages:
    """Wrap a user tensor ``[S, 3, H, W]`` or ``[1, S, 3, H, W]`` in [0, 1] (identity transforms)."""
    if not isinstance(t, torch.Tensor):
        raise UserError(f"images must be a torch.Tensor [S, 3, H, W], got {type(t).__name__}")
    patch_size = as_index(patch_size, "patch_size", 1)
    _check_batch(t)
    if t.dim() == 5 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 4 or t.shape[1] != 3 or t.shape[0] < 1:
        raise UserError(f"images must have shape [S, 3, H, W] or [1, S, 3, H, W], got {list(t.shape)}")
    if not t.is_floating_point():
        raise UserError(f"images must be floating point in [0, 1], got dtype {t.dtype}")
    height, width = int(t.shape[2]), int(t.shape[3])
    if height % patch_size or width % patch_size or height == 0 or width == 0:
        raise UserError(
            f"image size {width}x{height} is not a multiple of the patch size {patch_size}: "
            f"use load_images to resize photos"
        )
    t = t.detach().to(torch.float32)
    if not torch.isfinite(t).all() or t.min() < 0 or t.max() > 1:
        raise UserError(
            f"image values must be finite and in [0, 1], got range [{t.min().item():g}, {t.max().item():g}]"
        )
    transforms = [FrameTransform.identity(width, height) for _ in range(t.shape[0])]
    return LoadedImages(t.contiguous(), None, transforms)


def _check_batch(t: torch.Tensor) -> None:
    if t.ndim == 5 and t.shape[0] != 1:
        raise UserError(
            f"images {list(t.shape)} hold a batch of {t.shape[0]} scenes: one scene at a time is supported "
            f"(images [S, 3, H, W] or [1, S, 3, H, W]); loop over the scenes, images[b] for each b"
        )


def batched_images(images: torch.Tensor | LoadedImages) -> torch.Tensor:
    """``[S, 3, H, W]`` or ``[1, S, 3, H, W]`` (or LoadedImages) -> ``[1, S, 3, H, W]``; anything
    else, a batch of several scenes included, is a UserError."""
    if isinstance(images, LoadedImages):
        images = images.tensor
    if not isinstance(images, torch.Tensor):
        raise UserError(f"images must be a torch.Tensor [S, 3, H, W], got {type(images).__name__}")
    _check_batch(images)
    if images.ndim == 4:
        images = images[None]
    if images.ndim != 5 or images.shape[0] != 1 or images.shape[2] != 3:
        raise UserError(f"images must be [S, 3, H, W] or [1, S, 3, H, W], got {list(images.shape)}")
    return images


ImagesLike = LoadedImages | torch.Tensor | str | os.PathLike | Sequence[str | os.PathLike]


def as_loaded_images(images: ImagesLike) -> LoadedImages:
    """LoadedImages from LoadedImages, a tensor ``[S, 3, H, W]``, or image files / folders / globs."""
    if isinstance(images, LoadedImages):
        return images
    if isinstance(images, torch.Tensor):
        return images_from_tensor(images)
    items = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    return load_images(expand_image_paths(items))
