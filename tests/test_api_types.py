"""The Python API takes the natural forms of its arguments and names what is valid for the rest."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vggt_attn_rerun import Query, capture, load_images
from vggt_attn_rerun.core.images import LoadedImages, images_from_tensor
from vggt_attn_rerun.core.tokens import TokenLayout
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.testing import synthetic_scene


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    out = []
    for i, img in enumerate(synthetic_scene(2, 56, 84, seed=3)):
        out.append(folder / f"v{i}.png")
        Image.fromarray(img).save(out[-1])
    return out


def _load(paths):
    return load_images(paths, target_size=84)


def test_load_images_takes_one_path_as_a_str_or_a_path(photos):
    for one in (str(photos[0]), photos[0]):
        loaded = _load(one)
        assert loaded.tensor.shape[0] == 1 and loaded.paths == [photos[0]]


def test_load_images_takes_a_list_of_strs_or_paths(photos):
    a, b = _load([str(p) for p in photos]), _load(photos)
    assert a.paths == b.paths == photos and torch.equal(a.tensor, b.tensor)


def test_load_images_returns_loaded_images_as_they_are(photos):
    loaded = _load(photos)
    assert load_images(loaded) is loaded


@pytest.mark.parametrize("bad", [[123], 123, b"a.png", [None], {"a.png": 1}])
def test_load_images_refuses_other_types_naming_what_is_valid(bad):
    with pytest.raises(UserError, match="valid are an image path .str or pathlib.Path., a list of them, or Loaded"):
        load_images(bad)


@pytest.mark.parametrize("patch_size", [0, -14, 1.5])
def test_a_patch_size_that_is_not_a_positive_integer_is_refused(photos, patch_size):
    for call in (
        lambda: load_images(photos, patch_size=patch_size),
        lambda: images_from_tensor(torch.rand(1, 3, 28, 28), patch_size=patch_size),
        lambda: TokenLayout.for_image_size(1, 28, 28, patch_size),
    ):
        with pytest.raises(UserError, match="patch_size must be an integer >= 1"):
            call()


def test_capture_takes_loaded_images(tiny_model, photos):
    loaded = _load(photos)
    q = [Query(1, 7)]
    a, b = capture(tiny_model, loaded, q, blocks=[0]), capture(tiny_model, loaded.tensor, q, blocks=[0])
    assert torch.equal(a.rows.probs["global"], b.rows.probs["global"])


def test_capture_takes_query_strings_as_record_attention_does(tiny_model, photos):
    loaded = _load(photos)
    res = capture(tiny_model, loaded, ["0:p1,1", "1:camera", "1:10,20", "30"], blocks=[0])
    lay = res.layout
    pixel = Query.from_original_pixel(lay, 1, 10, 20, loaded.transforms[1])
    assert res.rows.queries == (Query.from_patch(lay, 0, 1, 1), Query(1, 0), pixel, Query.from_token(lay, 30))
    with pytest.raises(UserError, match="cannot parse query"):
        capture(tiny_model, loaded, ["0:nowhere!"], blocks=[0])
    with pytest.raises(UserError, match="valid are Query objects or FRAME:X,Y"):
        capture(tiny_model, loaded, [3.5], blocks=[0])


def test_one_kind_may_be_given_as_a_string(tiny_model, scene_images):
    res = capture(tiny_model, scene_images, [Query(0, 5)], blocks=[1], kinds="global")
    assert res.rows.kinds == ("global",)
    with pytest.raises(UserError, match="valid kinds are frame, global"):
        capture(tiny_model, scene_images, [Query(0, 5)], kinds="g")


@pytest.mark.parametrize("blocks", [[1.7], [True], ["1"], "1"])
def test_block_indices_must_be_integers(tiny_model, scene_images, blocks):
    with pytest.raises(UserError, match=r"valid blocks are (the integers )?0\.\.3|block indices 0\.\.3"):
        capture(tiny_model, scene_images, [Query(0, 5)], blocks=blocks)


def test_numpy_integer_blocks_are_fine(tiny_model, scene_images):
    res = capture(tiny_model, scene_images, [Query(0, 5)], blocks=np.array([2, 0]))
    assert res.rows.blocks == (0, 2)


@pytest.mark.parametrize("args", [(0.5, 5), (0, 5.0), (-1, 5), ("0", 5), (True, 5)])
def test_query_indices_must_be_integers_at_least_zero(args):
    with pytest.raises(UserError, match="must be an integer >= 0"):
        Query(*args)


def test_query_takes_numpy_integers_as_plain_ints():
    q = Query(np.int64(1), np.int32(7))
    assert (q.frame, q.local) == (1, 7) and type(q.frame) is int and type(q.local) is int


def test_a_batch_of_several_scenes_is_refused_clearly(tiny_model, scene_images):
    batch = torch.stack([scene_images, scene_images])
    with pytest.raises(UserError, match="batch of 2 scenes: one scene at a time"):
        capture(tiny_model, batch, [Query(0, 5)])
    assert isinstance(images_from_tensor(scene_images[None]), LoadedImages)  # a batch of one is fine
