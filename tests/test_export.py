"""Saving a run to one file and re-opening it without the model (io.runfile)."""

import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import vggt_attn_rerun.io.runfile as export
from vggt_attn_rerun.core.capture import CaptureResult, capture
from vggt_attn_rerun.core.images import images_from_tensor, load_images
from vggt_attn_rerun.core.rows import AttentionRows
from vggt_attn_rerun.core.tokens import Query, TokenLayout
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.io.runfile import (
    FORMAT_NAME,
    SAVED_PREDICTIONS,
    is_run_file,
    load_extra,
    load_run,
    save_run,
)
from vggt_attn_rerun.testing import synthetic_scene


def _queries(lay):
    return [
        Query.from_patch(lay, 0, 1, 2),
        Query.from_special(lay, 2, "register_1"),
        Query(1, lay.patch_to_local(3, 5), "a label"),
    ]


@pytest.fixture(scope="module")
def photo_run(tiny_model, tmp_path_factory):
    """A capture of 3 photos loaded from files (pad mode: non-trivial transforms, and paths)."""
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i, img in enumerate(synthetic_scene(3, 60, 90, seed=2)):
        paths.append(folder / f"view{i}.png")
        Image.fromarray(img).save(paths[-1])
    images = load_images(paths, mode="pad", target_size=84)  # 90x60 -> 84x56, padded to 84x84
    res = capture(tiny_model, images.tensor, _queries, blocks=[0, 2, 3])
    return res, images


def _assert_same_run(a: CaptureResult, ai, b: CaptureResult, bi, probs_exact=True):
    assert b.layout == a.layout and b.rows.layout == a.rows.layout
    assert b.rows.blocks == a.rows.blocks and b.rows.num_heads == a.rows.num_heads
    assert b.rows.queries == a.rows.queries
    assert [q.label for q in b.rows.queries] == [q.label for q in a.rows.queries]
    assert b.rows.kinds == a.rows.kinds and len(a.rows.kinds) > 0
    for kind in a.rows.kinds:
        if probs_exact:
            assert b.rows.probs[kind].dtype == a.rows.probs[kind].dtype
            assert torch.equal(b.rows.probs[kind], a.rows.probs[kind])  # bit-exact
    assert set(b.predictions) == {k for k in SAVED_PREDICTIONS if k in a.predictions} and len(b.predictions) > 0
    for name, value in b.predictions.items():
        assert value.dtype == a.predictions[name].dtype
        assert torch.equal(value, a.predictions[name])
    assert b.qk_cache is None
    assert bi.tensor.dtype == torch.float32 and torch.equal(bi.tensor, ai.tensor)
    assert bi.transforms == ai.transforms
    assert bi.paths == ai.paths


def test_round_trip_is_exact(photo_run, tmp_path):
    res, images = photo_run
    assert images.transforms[0].offset_y == 14  # white padding above: a real transform
    out = save_run(tmp_path / "run.npz", res, images, extra={"model": "tiny", "blocks": [0, 2, 3]})
    assert out == tmp_path / "run.npz" and is_run_file(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.npz"]  # no temp file left behind
    res2, images2 = load_run(out)
    _assert_same_run(res, images, res2, images2)
    assert load_extra(out) == {"model": "tiny", "blocks": [0, 2, 3]}
    # nothing in the file needs pickle, and the images are stored once, as uint8
    with np.load(out, allow_pickle=False) as z:
        members = {name: z[name] for name in z.files}
    assert members["images_uint8"].dtype == np.uint8 and members["images_uint8"].shape == (3, 84, 84, 3)
    assert "images_float32" not in members
    assert str(members["__format__"]) == FORMAT_NAME


def test_user_tensors_that_are_not_uint8_still_round_trip(tmp_path):
    lay = TokenLayout(2, 1, 2)
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(1, 1, 2, 2, lay.tokens_per_frame, generator=g)
    rows = AttentionRows(lay, (Query(0, 5),), (0,), 2, {"global": probs / probs.sum((-1, -2), keepdim=True)})
    preds = {
        "pose_enc": torch.randn(1, 2, 9, generator=g).to(torch.bfloat16),  # numpy has no bf16
        "depth": torch.rand(1, 2, 14, 28, 1, generator=g),
        "images": torch.rand(1, 2, 3, 14, 28),  # not saved: the input images are
        "pose_enc_list": [torch.zeros(1, 2, 9)],
    }
    res = CaptureResult(preds, rows, lay)
    images = images_from_tensor(torch.rand(2, 3, 14, 28, generator=g))
    save_run(tmp_path / "r.npz", res, images)
    res2, images2 = load_run(tmp_path / "r.npz")
    _assert_same_run(res, images, res2, images2)
    assert set(res2.predictions) == {"pose_enc", "depth"}
    assert res2.predictions["pose_enc"].dtype == torch.bfloat16


def test_fp16_storage_is_smaller_and_close(photo_run, tmp_path):
    res, images = photo_run
    half = save_run(tmp_path / "half.npz", res, images, probs_dtype=torch.float16)
    full = save_run(tmp_path / "full.npz", res, images)
    assert half.stat().st_size < full.stat().st_size
    res2, images2 = load_run(half)
    _assert_same_run(res, images, res2, images2, probs_exact=False)
    for kind in res.rows.kinds:
        assert res2.rows.probs[kind].dtype == torch.float16
        torch.testing.assert_close(res2.rows.probs[kind].float(), res.rows.probs[kind], atol=1e-3, rtol=1e-3)


def test_extra_arrays_and_bad_extras(photo_run, tmp_path):
    res, images = photo_run
    score = np.arange(12, dtype=np.float64).reshape(3, 4)
    names = np.array(["a", "b"])
    save_run(tmp_path / "x.npz", res, images, extra={"score": score, "note": "hi", "names": names})
    extra = load_extra(tmp_path / "x.npz")
    np.testing.assert_array_equal(extra["score"], score)
    np.testing.assert_array_equal(extra["names"], ["a", "b"])
    assert extra["note"] == "hi"
    with pytest.raises(UserError, match="JSON"):
        save_run(tmp_path / "bad.npz", res, images, extra={"f": object()})
    with pytest.raises(UserError, match="dtype"):
        save_run(tmp_path / "bad.npz", res, images, extra={"f": np.array([object()])})
    with pytest.raises(UserError, match="identifier"):
        save_run(tmp_path / "bad.npz", res, images, extra={"a b": 1})
    assert not (tmp_path / "bad.npz").exists()


def test_files_that_are_not_ours_are_refused(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.zeros(3))
    missing = tmp_path / "missing.npz"
    for path in (text, plain, missing, tmp_path):
        assert not is_run_file(path)
    for path in (text, plain):
        with pytest.raises(UserError, match=f"{path}.*not a vggt-attn-rerun run file"):
            load_run(path)
    with pytest.raises(UserError, match=f"{missing} does not exist"):
        load_run(missing)


def test_another_format_version_is_refused_by_name(tmp_path):
    old = tmp_path / "old.npz"
    np.savez_compressed(old, __format__=np.array(FORMAT_NAME), format_version=np.array("0"))
    assert is_run_file(old)  # ours, so an importer can report the version problem
    with pytest.raises(UserError, match=f"{old} has format version 0.*reads version 1"):
        load_run(old)


def test_a_damaged_file_is_refused(photo_run, tmp_path):
    res, images = photo_run
    good = save_run(tmp_path / "good.npz", res, images)
    bad = tmp_path / "bad.npz"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            if item.filename != "blocks.npy":
                zout.writestr(item, zin.read(item.filename))
    with pytest.raises(UserError, match=f"{bad} is damaged.*blocks"):
        load_run(bad)


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_an_error_mid_write_leaves_no_file(photo_run, tmp_path, monkeypatch, error):
    res, images = photo_run

    def fail(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise error

    monkeypatch.setattr(export.np, "savez_compressed", fail)
    expect = (
        pytest.raises(UserError, match=f"cannot save run to {tmp_path / 'run.npz'}: No space left")
        if isinstance(error, OSError)
        else pytest.raises(KeyboardInterrupt)
    )
    with expect:
        save_run(tmp_path / "run.npz", res, images)
    assert list(tmp_path.iterdir()) == []
    # an existing file under the final name is left untouched
    (tmp_path / "run.npz").write_bytes(b"previous")
    with pytest.raises((UserError, KeyboardInterrupt)):
        save_run(tmp_path / "run.npz", res, images)
    assert (tmp_path / "run.npz").read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["run.npz"]


def test_mismatched_inputs_and_folders_are_refused(photo_run, tmp_path):
    res, images = photo_run
    with pytest.raises(UserError, match="folder"):
        save_run(tmp_path / "nope" / "run.npz", res, images)
    with pytest.raises(UserError, match="is a folder"):
        save_run(tmp_path, res, images)
    other = images_from_tensor(torch.rand(2, 3, 84, 84))
    with pytest.raises(UserError, match="do not match"):
        save_run(tmp_path / "run.npz", res, other)
    assert list(tmp_path.iterdir()) == []
