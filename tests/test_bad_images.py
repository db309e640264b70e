"""Bad images and image paths: one `error: ...` line, exit code 2, no traceback, reported before the
model loads; unusual but valid images are read."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from vggt_attn_rerun.core.images import IMAGE_SUFFIXES
from vggt_attn_rerun.testing import synthetic_scene

from .helpers import FAST, assert_error, invoke

SUFFIXES = ", ".join(IMAGE_SUFFIXES)
READABLE = ", ".join(s.lstrip(".") for s in IMAGE_SUFFIXES)


# -- image paths and files ------------------------------------------------------------------------


def test_missing_file(tmp_path, no_model):
    missing = tmp_path / "nope.png"
    result = invoke(missing, *FAST)
    assert_error(result, 2, f"image path {missing} does not exist: give an image file, a folder or a glob pattern")


def test_missing_folder(tmp_path, no_model):
    missing = tmp_path / "photos"
    result = invoke(f"{missing}/", *FAST)
    assert_error(result, 2, f"image path {missing}/ does not exist: give an image file, a folder or a glob pattern")


def test_empty_folder(tmp_path, no_model):
    (tmp_path / "empty").mkdir()
    result = invoke(tmp_path / "empty", *FAST)
    assert_error(result, 2, f"folder {tmp_path / 'empty'} holds no images: expected files ending in {SUFFIXES}")


def test_folder_with_no_images(tmp_path, no_model):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    result = invoke(folder, *FAST)
    assert_error(result, 2, f"folder {folder} holds no images: expected files ending in {SUFFIXES}")


def test_glob_matching_nothing(tmp_path, no_model):
    pattern = f"{tmp_path}/*.jpg"
    result = invoke(pattern, *FAST)
    assert_error(result, 2, f"pattern {pattern!r} matches no images: expected files ending in {SUFFIXES}")


def test_not_an_image(tmp_path, no_model):
    text = tmp_path / "notes.txt"
    text.write_text("not pixels")
    result = invoke(text, *FAST)
    line = assert_error(result, 2, prefix=f"cannot read image {text} (UnidentifiedImageError:")
    assert line.endswith(f"expected a readable {READABLE} file")


def test_truncated_png(scene, tmp_path, no_model):
    broken = tmp_path / "broken.png"
    data = (scene / "view_0.png").read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    result = invoke(broken, *FAST)
    line = assert_error(result, 2, prefix=f"cannot read image {broken} (OSError:")
    assert "truncated" in line


def test_corrupt_png_header(tmp_path, no_model):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    result = invoke(corrupt, *FAST)
    assert_error(result, 2, prefix=f"cannot read image {corrupt} (")


def test_duplicate_paths(scene, no_model):
    one = scene / "view_0.png"
    result = invoke(one, scene, *FAST)  # the folder holds view_0.png again
    assert_error(result, 2, f"image {one} is given more than once: each view may appear only once")


def test_unusual_png_modes_and_mixed_sizes_are_handled(tmp_path):
    folder = tmp_path / "modes"
    folder.mkdir()
    rgb = synthetic_scene(1, 70, 98)[0]
    Image.fromarray(rgb).convert("L").save(folder / "a_gray.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(folder / "b_rgba.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "c_palette.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(folder / "d_16bit.png")
    Image.fromarray(synthetic_scene(1, 40, 30)[0]).save(folder / "e_portrait.png")  # another size
    assert Image.open(folder / "d_16bit.png").mode.startswith("I")
    out = tmp_path / "modes.rrd"
    result = invoke(folder, *FAST, "--headless", "--save", out)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and out.exists()


def test_image_smaller_than_a_patch_is_upscaled(tmp_path):
    """Decision: handled, like vggt's own preprocessing (resized to the model size), with a warning."""
    tiny = tmp_path / "tiny.png"
    Image.fromarray(synthetic_scene(1, 9, 12)[0]).save(tiny)
    out = tmp_path / "tiny.rrd"
    result = invoke(tiny, *FAST, "--headless", "--save", out)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0] == f"warning: image {tiny} is only 12x9 pixels: upscaled to 84x56"
    assert out.exists()


def test_image_too_thin_to_make_a_patch_row(tmp_path, no_model):
    thin = tmp_path / "thin.png"
    Image.new("RGB", (300, 2), "gray").save(thin)
    result = invoke(thin, *FAST)
    message = f"image {thin} is 300x2: its aspect ratio (150:1) is too extreme; valid images are at most 50:1"
    assert_error(result, 2, message)


# -- resource bombs: refused before any pixel is resized ---------------------------------------------


@pytest.mark.parametrize("size", [(1, 1000), (30000, 1)])
def test_extreme_aspect_ratio_is_refused_before_resizing(tmp_path, no_model, monkeypatch, size):
    from PIL import Image as PILImage

    monkeypatch.setattr(PILImage.Image, "resize", lambda *a, **k: pytest.fail("must not resize"))
    path = tmp_path / "thin.png"
    Image.new("RGB", size, "gray").save(path)
    w, h = size
    ratio = max(w, h) // min(w, h)
    message = f"image {path} is {w}x{h}: its aspect ratio ({ratio}:1) is too extreme; valid images are at most 50:1"
    assert_error(invoke(path, *FAST), 2, message)


def test_float_image_in_0_1_is_scaled_not_black(tmp_path):
    from vggt_attn_rerun.core.images import load_images

    ramp = np.tile(np.linspace(0, 1, 28, dtype=np.float32), (14, 1))  # [14, 28] in [0, 1]
    path = tmp_path / "float.tiff"
    Image.fromarray(ramp, mode="F").save(path)
    assert Image.open(path).mode == "F"
    loaded = load_images([path], target_size=28, patch_size=14)
    expected = torch.from_numpy(np.rint(ramp * 255) / 255).float()
    assert torch.allclose(loaded.tensor[0, 0], expected, atol=1e-6)  # no resize at 28 px: exact
    assert loaded.tensor.max() == 1.0


@pytest.mark.parametrize(("values", "shown"), [((0.0, 255.0), "[0, 255]"), ((-1.0, 0.5), "[-1, 0.5]")])
def test_float_image_outside_0_1_is_refused(tmp_path, no_model, values, shown):
    pixels = np.full((14, 28), values[0], np.float32)
    pixels[0, 0] = values[1]
    path = tmp_path / "float.tiff"
    Image.fromarray(pixels, mode="F").save(path)
    message = (
        f"image {path} holds floating-point pixels in {shown}: valid float images hold values in [0, 1]; "
        "convert it to 8 or 16 bits"
    )
    assert_error(invoke(path, *FAST), 2, message)
