"""images.py: Pillow loading that matches vggt's loader and keeps the photo -> model pixel map."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vggt_attn_rerun.core.images import (
    FrameTransform,
    LoadedImages,
    expand_image_paths,
    images_from_tensor,
    load_images,
)
from vggt_attn_rerun.errors import UserError

GRAY = (128, 128, 128)
RED = (255, 0, 0)
SMALL = {"target_size": 56, "patch_size": 14}  # 4x4 patches: fast, same code path as 518/14


def _photo(tmp_path: Path, name: str, width: int, height: int, color=GRAY, mode: str = "RGB") -> Path:
    path = tmp_path / name
    Image.new(mode, (width, height), color).save(path)
    return path


def _photo_with_block(tmp_path: Path, width: int, height: int, box: tuple[int, int, int, int]) -> Path:
    """A gray photo with a red block covering ``box = (x0, y0, x1, y1)``."""
    pixels = np.full((height, width, 3), GRAY, np.uint8)
    x0, y0, x1, y1 = box
    pixels[y0:y1, x0:x1] = RED
    path = tmp_path / "block.png"
    Image.fromarray(pixels).save(path)
    return path


def _noise(tmp_path: Path, name: str, width: int, height: int, seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path = tmp_path / name
    Image.fromarray(pixels).save(path)
    return path


def _rgb_at(images: LoadedImages, frame: int, x: float, y: float) -> np.ndarray:
    """The model image's colour (0..255) at continuous model coordinates (x, y)."""
    return images.tensor[frame, :, int(y), int(x)].numpy() * 255


# -- FrameTransform ---------------------------------------------------------------------------------
@pytest.mark.parametrize("point", [(0.0, 0.0), (3.5, 7.25), (99.9, 0.1)])
def test_transform_round_trip(point):
    t = FrameTransform(100, 50, 0.56, 0.56, 3.0, -7.0, 56, 28)
    assert t.model_to_original(*t.original_to_model(*point)) == pytest.approx(point)


def test_transform_maps_corners_of_a_padded_photo():
    t = FrameTransform(40, 100, 28 / 40, 56 / 100, 14, 0, 56, 56)
    assert t.original_to_model(0, 0) == (14, 0)
    assert t.original_to_model(40, 100) == pytest.approx((42, 56))


def test_transform_original_size():
    assert FrameTransform(40, 100, 1, 1, 0, 0, 40, 100).original_size == (40, 100)


# -- shapes and transforms of the two modes ------------------------------------------------------
def test_crop_mode_wide_photo_keeps_aspect(tmp_path):
    images = load_images([_photo(tmp_path, "a.png", 80, 40)], "crop", **SMALL)
    assert images.tensor.shape == (1, 3, 28, 56)
    assert images.layout_hw == (28, 56)
    assert images.transforms[0] == FrameTransform(80, 40, 56 / 80, 28 / 40, 0, 0, 56, 28)


def test_crop_mode_tall_photo_is_centre_cropped(tmp_path):
    images = load_images([_photo(tmp_path, "a.png", 40, 100)], "crop", **SMALL)
    # width 40 -> 56 makes height 140; rows (140 - 56) // 2 = 42 onwards are kept
    assert images.tensor.shape == (1, 3, 56, 56)
    assert images.transforms[0].offset_y == -42
    assert images.transforms[0].valid_model_box() == (0, 0, 56, 56)


def test_pad_mode_tall_photo_is_padded_white(tmp_path):
    images = load_images([_photo(tmp_path, "a.png", 40, 100)], "pad", **SMALL)
    t = images.transforms[0]
    # height 100 -> 56 makes width round(22.4 / 14) * 14 = 28, centred with 14 white columns each side
    assert images.tensor.shape == (1, 3, 56, 56)
    assert (t.offset_x, t.offset_y) == (14, 0)
    assert t.valid_model_box() == (14, 0, 42, 56)
    assert torch.all(images.tensor[0, :, :, :14] == 1.0) and torch.all(images.tensor[0, :, :, 42:] == 1.0)


def test_pad_mode_wide_photo_is_padded_white_above_and_below(tmp_path):
    images = load_images([_photo(tmp_path, "a.png", 80, 40)], "pad", **SMALL)
    assert images.transforms[0].valid_model_box() == (0, 14, 56, 42)
    assert torch.all(images.tensor[0, :, :14] == 1.0)


def test_extreme_aspect_ratio_is_refused(tmp_path):
    with pytest.raises(UserError, match="aspect ratio"):
        load_images([_photo(tmp_path, "a.png", 200, 10)], "crop", **SMALL)


# -- a known pixel lands where the transform says ----------------------------------------------------
def test_block_lands_where_crop_transform_says(tmp_path):
    # 112x448 -> 56x224 (scale 0.5), centre crop keeps model rows from 84: offset_y = -84
    images = load_images([_photo_with_block(tmp_path, 112, 448, (40, 200, 80, 240))], "crop", **SMALL)
    t = images.transforms[0]
    mx, my = t.original_to_model(60, 220)
    assert (mx, my) == (30, 26)
    np.testing.assert_allclose(_rgb_at(images, 0, mx, my), RED, atol=2)
    np.testing.assert_allclose(_rgb_at(images, 0, 5, 5), GRAY, atol=2)


def test_block_lands_where_pad_transform_says(tmp_path):
    # 56x112 -> 28x56 (scale 0.5), centred with 14 white columns on the left
    images = load_images([_photo_with_block(tmp_path, 56, 112, (8, 70, 40, 100))], "pad", **SMALL)
    t = images.transforms[0]
    mx, my = t.original_to_model(24, 85)
    assert (mx, my) == (26, 42.5)
    np.testing.assert_allclose(_rgb_at(images, 0, mx, my), RED, atol=2)
    assert t.model_to_original(mx, my) == (24, 85)


# -- several frames ------------------------------------------------------------------------------
def test_mixed_sizes_are_padded_to_the_largest(tmp_path):
    wide = _photo(tmp_path, "wide.png", 112, 56)  # crop -> 56x28
    square = _photo(tmp_path, "square.png", 56, 56)  # crop -> 56x56
    images = load_images([wide, square], "crop", **SMALL)
    assert images.tensor.shape == (2, 3, 56, 56)
    t = images.transforms[0]
    assert (t.offset_x, t.offset_y, t.model_w, t.model_h) == (0, 14, 56, 56)
    assert t.valid_model_box() == (0, 14, 56, 42)
    assert torch.all(images.tensor[0, :, :14] == 1.0) and torch.all(images.tensor[0, :, 42:] == 1.0)
    assert images.transforms[1] == FrameTransform(56, 56, 1.0, 1.0, 0, 0, 56, 56)


def test_paths_are_kept_in_order(tmp_path):
    paths = [_photo(tmp_path, "b.png", 56, 56), _photo(tmp_path, "a.png", 56, 56)]
    assert load_images(paths, **SMALL).paths == paths


def test_rgba_is_composited_on_white(tmp_path):
    path = _photo(tmp_path, "clear.png", 56, 56, color=(255, 0, 0, 0), mode="RGBA")
    assert torch.all(load_images([path], **SMALL).tensor == 1.0)


def test_values_are_float32_pixels_over_255(tmp_path):
    images = load_images([_photo(tmp_path, "a.png", 56, 56, color=(0, 51, 255))], **SMALL)
    assert images.tensor.dtype == torch.float32
    assert images.tensor[0, :, 0, 0].tolist() == [0.0, np.float32(51) / np.float32(255), 1.0]


# -- bit-identical to vggt's loader ------------------------------------------------------------------
@pytest.fixture
def vggt_loader(monkeypatch):
    """vggt's load_and_preprocess_images, with torchvision's ToTensor stubbed if it is missing."""
    if importlib.util.find_spec("vggt") is None or importlib.util.find_spec("vggt.utils.load_fn") is None:
        pytest.skip("vggt is not importable")
    stubbed = importlib.util.find_spec("torchvision") is None
    if stubbed:

        class ToTensor:  # torchvision's: uint8 HWC -> float32 CHW / 255
            def __call__(self, pic):
                return torch.from_numpy(np.array(pic, np.uint8)).permute(2, 0, 1).contiguous().float().div(255)

        transforms = types.ModuleType("torchvision.transforms")
        transforms.ToTensor = ToTensor
        torchvision = types.ModuleType("torchvision")
        torchvision.transforms = transforms
        monkeypatch.setitem(sys.modules, "torchvision", torchvision)
        monkeypatch.setitem(sys.modules, "torchvision.transforms", transforms)
    module = importlib.import_module("vggt.utils.load_fn")
    yield module.load_and_preprocess_images
    if stubbed:  # do not leave a module bound to the fake torchvision behind
        sys.modules.pop("vggt.utils.load_fn", None)


@pytest.mark.parametrize("mode", ["crop", "pad"])
@pytest.mark.parametrize("size", [(61, 37), (37, 61), (50, 50), (40, 200)])
def test_equals_vggt_loader(tmp_path, vggt_loader, mode, size):
    path = _noise(tmp_path, "a.png", *size, seed=1)
    assert torch.equal(load_images([path], mode).tensor, vggt_loader([str(path)], mode))


@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_equals_vggt_loader_mixed_sizes(tmp_path, vggt_loader, mode):
    paths = [_noise(tmp_path, "a.png", 61, 37, 1), _noise(tmp_path, "b.jpg", 37, 61, 2)]
    rgba = tmp_path / "c.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (30, 45, 4), dtype=np.uint8)).save(rgba)
    paths.append(rgba)
    ours = load_images(paths, mode).tensor
    assert torch.equal(ours, vggt_loader([str(p) for p in paths], mode))


# -- images from a tensor ---------------------------------------------------------------------------
def test_images_from_tensor_has_identity_transforms():
    images = images_from_tensor(torch.rand(2, 3, 28, 42))
    assert images.paths is None and images.layout_hw == (28, 42)
    assert images.transforms[1].original_to_model(3.5, 4.0) == (3.5, 4.0)
    assert images.transforms[1].valid_model_box() == (0, 0, 42, 28)


def test_images_from_tensor_drops_a_batch_of_one():
    assert images_from_tensor(torch.rand(1, 2, 3, 28, 28)).tensor.shape == (2, 3, 28, 28)


@pytest.mark.parametrize(
    "tensor, message",
    [
        (torch.rand(2, 3, 30, 28), "multiple of the patch size"),
        (torch.rand(2, 4, 28, 28), "shape"),
        (torch.rand(3, 28, 28), "shape"),
        (torch.full((1, 3, 14, 14), 2.0), r"\[0, 1\]"),
        (torch.zeros(1, 3, 14, 14, dtype=torch.uint8), "floating point"),
    ],
)
def test_images_from_tensor_refuses_bad_input(tensor, message):
    with pytest.raises(UserError, match=message):
        images_from_tensor(tensor)


# -- errors ----------------------------------------------------------------------------------------
def test_unknown_mode_is_refused(tmp_path):
    with pytest.raises(UserError, match="crop, pad"):
        load_images([_photo(tmp_path, "a.png", 56, 56)], "stretch")


def test_empty_list_is_refused():
    with pytest.raises(UserError, match="at least one image"):
        load_images([])


def test_non_image_file_is_refused_by_name(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(UserError, match="notes.png"):
        load_images([path])


def test_truncated_image_is_refused_by_name(tmp_path):
    path = _noise(tmp_path, "cut.png", 40, 40, seed=0)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UserError, match="cut.png"):
        load_images([path])


def test_missing_image_is_refused(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_images([tmp_path / "missing.png"])


# -- expand_image_paths ----------------------------------------------------------------------------
def test_folder_gives_its_images_sorted(tmp_path):
    _photo(tmp_path, "b.png", 14, 14)
    _photo(tmp_path, "a.JPG", 14, 14)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    assert expand_image_paths([str(tmp_path)]) == [tmp_path / "a.JPG", tmp_path / "b.png"]


def test_items_keep_the_users_order(tmp_path):
    b, a = _photo(tmp_path, "b.png", 14, 14), _photo(tmp_path, "a.png", 14, 14)
    assert expand_image_paths([str(b), str(a)]) == [b, a]


def test_glob_gives_matching_images_sorted(tmp_path):
    paths = [_photo(tmp_path, f"{name}.png", 14, 14) for name in ("c", "a", "b")]
    _photo(tmp_path, "a.bmp", 14, 14)
    assert expand_image_paths([str(tmp_path / "*.png")]) == sorted(paths)


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(UserError, match="missing.png does not exist"):
        expand_image_paths([str(tmp_path / "missing.png")])


def test_empty_folder_is_refused(tmp_path):
    with pytest.raises(UserError, match="holds no images"):
        expand_image_paths([str(tmp_path)])


def test_folder_without_images_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="holds no images"):
        expand_image_paths([str(tmp_path)])


def test_glob_matching_nothing_is_refused(tmp_path):
    with pytest.raises(UserError, match="matches no images"):
        expand_image_paths([str(tmp_path / "*.png")])


def test_duplicate_is_refused_by_name(tmp_path):
    path = _photo(tmp_path, "a.png", 14, 14)
    with pytest.raises(UserError, match="a.png is given more than once"):
        expand_image_paths([str(path), str(tmp_path)])


def test_no_items_is_refused():
    with pytest.raises(UserError, match="no images"):
        expand_image_paths([])


def test_exif_orientation_is_applied_so_portrait_photos_stay_upright(tmp_path):
    landscape = np.zeros((40, 60, 3), np.uint8)
    landscape[:, :10] = 255  # a white band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the photo is shown 40 wide, 60 high
    path = tmp_path / "phone.jpg"
    Image.fromarray(landscape).save(path, exif=exif, quality=95)
    loaded = load_images([path], mode="pad", target_size=56)
    assert loaded.transforms[0].original_size == (40, 60)
    top = loaded.tensor[0, :, :8].mean()  # the band is on top once upright
    assert top > 0.9


def test_16_bit_grayscale_keeps_its_picture_instead_of_turning_white(tmp_path):
    ramp = (np.linspace(0, 65535, 56)[None, :].repeat(28, 0)).astype(np.uint16)
    path = tmp_path / "depth16.png"
    Image.fromarray(ramp).save(path)
    t = load_images([path], mode="crop", target_size=56).tensor[0, 0]
    assert t[:, :5].mean() < 0.1 and t[:, -5:].mean() > 0.9


def test_a_large_photo_is_resized(tmp_path):
    path = tmp_path / "large.png"
    Image.new("RGB", (4000, 3000), (10, 200, 30)).save(path)
    loaded = load_images([path])
    assert loaded.tensor.shape == (1, 3, 392, 518)


def test_a_decompression_bomb_is_refused_in_one_line(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("RGB", (300, 300)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 300x300 is then over twice the limit
    with pytest.raises(UserError, match=r"cannot read image .*bomb\.png .*DecompressionBombError"):
        load_images([path])
