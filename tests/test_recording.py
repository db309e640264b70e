"""Recordings are read back from the .rrd with rr.chunk.RrdReader: the logger is not trusted."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rerun as rr
from PIL import Image

from vggt_attn_rerun.api import record_attention
from vggt_attn_rerun.core.capture import capture
from vggt_attn_rerun.core.geometry import pose_encoding_to_cameras
from vggt_attn_rerun.core.images import as_loaded_images, images_from_tensor
from vggt_attn_rerun.core.tokens import Query
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.viz import colormap
from vggt_attn_rerun.viz.log_run import log_run
from vggt_attn_rerun.viz.options import RecordingOptions
from vggt_attn_rerun.viz.paths import APPLICATION_ID, MAP_DIMS, Paths, mass_series

from .helpers import Recording, segmentation_grid

KINDS = ("frame", "global")
MAX_POINTS = 500
PATCH_QUERY = (1, 2, 3)  # frame, row, col
RERUN = shutil.which("rerun") or str(Path(sys.executable).with_name("rerun"))


def _record(tmp_path, model, images, options, queries=None, blocks=None) -> tuple:
    queries = queries or [f"{PATCH_QUERY[0]}:p{PATCH_QUERY[1]},{PATCH_QUERY[2]}", "2:camera"]
    result, rec = record_attention(model, images, queries, blocks=blocks, options=options)
    path = tmp_path / "run.rrd"
    rec.save(path)  # the stream buffered everything so far: the file gets it all
    rec.flush()
    rec.disconnect()
    return result, Recording(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model, scene_images):
    options = RecordingOptions(kinds=KINDS, max_points=MAX_POINTS)
    result, recording = _record(tmp_path_factory.mktemp("rec"), tiny_model, scene_images, options)
    return result, recording, options


def _patches(result, kind, q=0) -> np.ndarray:
    return result.rows.patches(kind)[:, q].double().numpy()  # [L, H, S, gh, gw]


def _without_query_key(p) -> np.ndarray:
    """``[..., S, gh, gw]`` with the query's own key set to 0."""
    p = np.array(p, np.float64)
    f, r, c = PATCH_QUERY
    p[..., f, r, c] = 0
    return p


def _map_scale(p) -> np.ndarray:
    """The documented default scale, written out again: each map ``[..., S, gh, gw]`` divided by its
    largest patch probability over all views, the query's own key left out -> ``[..., S]``."""
    top = _without_query_key(p).max(axis=(-3, -2, -1))
    return np.repeat(np.maximum(top, 1e-12)[..., None], p.shape[-3], axis=-1)


def _documented_u8(p, vmax) -> np.ndarray:
    return np.rint(255 * np.clip(p / vmax[..., None, None], 0, 1)).astype(np.uint8)


def _tensor(recording, kind, q=0) -> np.ndarray:
    data = recording.static(Paths.maps(q, kind), "Tensor:data")[0]
    return np.asarray(data["buffer"], np.uint8).reshape(data["shape"])


# -- what is there ----------------------------------------------------------------------------


def test_expected_entities_exist(run):
    result, recording, _ = run
    s = result.layout.num_frames
    expected = {"world", Paths.cloud, Paths.query_point(0), Paths.info(0), Paths.info(1)}
    expected |= {"heads/q0/image", "heads/q0/query", f"world/frames/{PATCH_QUERY[0]}/image/queries/q0/patch"}
    for f in range(s):
        expected |= {Paths.frame(f), Paths.image(f), Paths.overlay_root(f)}
        expected |= {Paths.overlay(f, q, k) for q in (0, 1) for k in KINDS}
    expected |= {Paths.rays(0, "global")}
    for k in KINDS:
        expected |= {Paths.maps(0, k), Paths.patch_points(0, k), Paths.head(0, k, 0), Paths.scale_note(0, k)}
        expected |= {Paths.mass(0, k, name) for name in mass_series(s)}
    assert expected <= recording.entities()


def test_world_is_opencv_rdf(run):
    _, recording, _ = run
    assert recording.static("world", "ViewCoordinates:xyz")[0] == list(
        rr.ViewCoordinates.RDF.as_arrow_array()[0].as_py()
    )


def test_camera_poses_equal_predicted_extrinsics(run):
    result, recording, _ = run
    extr, _ = pose_encoding_to_cameras(result.predictions["pose_enc"][0].double(), result.layout.image_size)
    for s in range(result.layout.num_frames):
        ent = Paths.frame(s)
        rot = np.asarray(recording.static(ent, "Transform3D:mat3x3")[0]).reshape(3, 3).T  # stored column-major
        t = np.asarray(recording.static(ent, "Transform3D:translation")[0])
        assert recording.static(ent, "Transform3D:relation") == [rr.TransformRelation.ChildFromParent.value]
        np.testing.assert_allclose(rot, extr[s, :, :3].numpy(), atol=1e-6)
        np.testing.assert_allclose(t, extr[s, :, 3].numpy(), atol=1e-6)


def test_pinhole_is_the_predicted_intrinsics_with_pixel_centres_at_half_integers(run):
    # VGGT samples pixel j at u = j; Rerun draws pixel j's centre at j + 0.5.
    result, recording, _ = run
    _, intr = pose_encoding_to_cameras(result.predictions["pose_enc"][0].double(), result.layout.image_size)
    k = np.asarray(recording.static(Paths.image(1), "Pinhole:image_from_camera")[0]).reshape(3, 3).T
    want = intr[1].numpy().copy()
    want[0, 2] += 0.5
    want[1, 2] += 0.5
    np.testing.assert_allclose(k, want, rtol=1e-6)


# -- the maps ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_tensor_holds_every_map_under_its_own_scale(run, kind):
    result, recording, _ = run
    p = _patches(result, kind)
    np.testing.assert_array_equal(_tensor(recording, kind), _documented_u8(p, _map_scale(p)))


def test_tensor_has_block_head_view_y_x_dims(run):
    result, recording, _ = run
    data = recording.static(Paths.maps(0, "global"), "Tensor:data")[0]
    lay, rows = result.layout, result.rows
    assert data["names"] == list(MAP_DIMS) == ["block", "head", "view", "y", "x"]
    assert data["shape"] == [len(rows.blocks), rows.num_heads, lay.num_frames, lay.grid_h, lay.grid_w]


def test_every_maps_scale_is_logged_for_reading_absolute_probabilities(run):
    result, recording, _ = run
    p = _patches(result, "global")
    assert recording.static(Paths.scales(0, "global"), "vmax_shape") == list(p.shape[:3])
    np.testing.assert_allclose(recording.static(Paths.scales(0, "global"), "vmax"), _map_scale(p).reshape(-1))


def test_block_timeline_overlay_shows_head_mean_under_its_own_scale(run):
    result, recording, _ = run
    rows, lay = result.rows, result.layout
    p = _patches(result, "global").mean(axis=1)  # [L, S, gh, gw]
    mean = _documented_u8(p, _map_scale(p))
    for s in range(lay.num_frames):
        got = recording.temporal(Paths.overlay(s, 0, "global"), "SegmentationImage:buffer", "block")
        assert sorted(got) == list(rows.blocks)
        for li, b in enumerate(rows.blocks):
            np.testing.assert_array_equal(segmentation_grid(got[b], lay), mean[li, s])


def test_head_timeline_overlay_shows_each_head_at_last_block(run):
    result, recording, _ = run
    lay = result.layout
    p = _patches(result, "frame")[-1]  # [H, S, gh, gw]
    per_head = _documented_u8(p, _map_scale(p))
    got = recording.temporal(Paths.overlay(1, 0, "frame"), "SegmentationImage:buffer", "head")
    assert sorted(got) == list(range(result.rows.num_heads))
    for h, value in got.items():
        np.testing.assert_array_equal(segmentation_grid(value, lay), per_head[h, 1])


def test_overlay_rows_carry_one_timeline_only(run):
    _, recording, _ = run
    for _, rb in recording.chunks[Paths.overlay(0, 0, "global")]:
        assert not {"block", "head"} <= set(rb.schema.names)


def test_head_grid_shows_every_head_of_the_query_frame(run):
    result, recording, _ = run
    lay, rows = result.layout, result.rows
    p = _patches(result, "global")
    u8 = _documented_u8(p, _map_scale(p))  # [L, H, S, gh, gw]
    for h in range(rows.num_heads):
        got = recording.temporal(Paths.head(0, "global", h), "SegmentationImage:buffer", "block")
        for li, b in enumerate(rows.blocks):
            np.testing.assert_array_equal(segmentation_grid(got[b], lay), u8[li, h, PATCH_QUERY[0]])


def test_mass_series_sum_to_one(run):
    result, recording, _ = run
    names = mass_series(result.layout.num_frames)
    series = [recording.temporal(Paths.mass(0, "global", n), "Scalars:scalars", "block") for n in names]
    for b in result.rows.blocks:
        assert sum(s[b][0] for s in series) == pytest.approx(1.0, abs=1e-5)


def test_patch_points_are_static_with_values_per_block(run):
    result, recording, _ = run
    ent = Paths.patch_points(0, "global")
    positions = np.asarray(recording.static(ent, "Points3D:positions"))
    colors = recording.temporal(ent, "Points3D:class_ids", "block")  # the u8 value: context -> color
    assert np.isfinite(positions).all() and 0 < len(positions) <= result.layout.num_patches * 3
    assert sorted(colors) == list(result.rows.blocks)
    assert all(len(c) == len(positions) for c in colors.values())


# -- geometry and queries ---------------------------------------------------------------------


def test_query_marker_sits_at_patch_centre(run):
    _, recording, _ = run
    f, r, c = PATCH_QUERY
    xy = recording.static(Paths.marker(f, 0), "Points2D:positions")
    assert xy == [[(c + 0.5) * 14, (r + 0.5) * 14]]


def test_query_point_is_mean_of_point_map_over_patch(run):
    result, recording, _ = run
    f, r, c = PATCH_QUERY
    pts = result.predictions["world_points"][0, f, r * 14 : (r + 1) * 14, c * 14 : (c + 1) * 14]
    got = recording.static(Paths.query_point(0), "Points3D:positions")
    np.testing.assert_allclose(got[0], pts.reshape(-1, 3).double().mean(0).numpy(), rtol=1e-5, atol=1e-6)


def test_the_query_note_states_the_scale_and_where_the_scale_on_screen_is(run):
    _, recording, _ = run
    text = recording.static(Paths.info(0), "TextDocument:text")[0]
    assert "Scale `map`: the maximum over all views of this (block, head) map" in text
    assert "`queries/q0/{kind}/scale`" in text


def test_special_token_query_has_a_note_and_no_marker(run):
    _, recording, _ = run
    assert not any(e.startswith("world/frames/2/image/queries/q1") for e in recording.entities())
    assert Paths.query_point(1) not in recording.entities()
    assert "camera" in recording.static(Paths.info(1), "TextDocument:text")[0]


def test_point_cloud_is_finite_and_capped(run):
    _, recording, _ = run
    pts = np.asarray(recording.static(Paths.cloud, "Points3D:positions"))
    assert 0 < len(pts) <= MAX_POINTS and np.isfinite(pts).all()


def test_depth_points_are_unprojected_with_predicted_cameras(tmp_path, tiny_model, scene_images):
    # The tiny model's world points are its depth unprojected plus 0.01 * noise: the clouds agree.
    options = RecordingOptions(points="depth", conf_percentile=0.0, max_points=10**6)
    _, recording = _record(tmp_path, tiny_model, scene_images, options, ["0:p1,1"], blocks=[3])
    f_pts = np.asarray(recording.static(Paths.cloud, "Points3D:positions"))
    assert len(f_pts) == scene_images[:, 0].numel()
    pred = tiny_model(scene_images)["world_points"][0].reshape(-1, 3).detach().numpy()
    np.testing.assert_allclose(f_pts, pred, atol=0.02)


def test_recording_passes_rerun_verify(run):
    _, recording, _ = run
    out = subprocess.run([RERUN, "rrd", "verify", str(recording.path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]


def test_embedded_blueprint_sets_block_timeline(run):
    _, recording, _ = run
    (store,) = recording.reader.blueprints()
    assert store.application_id == APPLICATION_ID == recording.reader.recordings()[0].application_id
    timelines = [
        v
        for ch in recording.reader.stream(store=store).filter(components="TimePanelBlueprint:timeline")
        for v in ch.to_record_batch().column("TimePanelBlueprint:timeline").to_pylist()
        if v is not None
    ]
    assert timelines == [["block"]]


# -- options ----------------------------------------------------------------------------------


def test_view_scale_scales_each_view_of_each_map_by_its_own_max(tmp_path, tiny_model, scene_images):
    options = RecordingOptions(kinds=("global",), scale="view", max_points=100)
    result, recording = _record(tmp_path, tiny_model, scene_images, options, queries=["1:p2,3"])
    p = _patches(result, "global")
    vmax = np.maximum(_without_query_key(p).max(axis=(-2, -1)), 1e-12)  # [L, H, S]
    assert len(set(vmax[-1, 0].round(12))) == result.layout.num_frames  # views really get different scales
    got = _tensor(recording, "global")
    np.testing.assert_array_equal(got, _documented_u8(p, vmax))
    assert (_without_query_key(got).max(axis=(-2, -1)) == 255).all()


def test_global_scale_is_one_scale_for_every_block_head_and_view(tmp_path, tiny_model, scene_images):
    options = RecordingOptions(kinds=("global",), scale="global", max_points=100)
    result, recording = _record(tmp_path, tiny_model, scene_images, options, queries=["1:p2,3"])
    p = _patches(result, "global")
    vmax = _without_query_key(p).max()
    np.testing.assert_array_equal(_tensor(recording, "global"), _documented_u8(p, np.full(p.shape[:3], vmax)))
    (labels,) = recording.static(Paths.overlay(0, 0, "global"), "AnnotationContext:context")
    assert labels[255]["class_description"]["info"]["label"] == f"p≈{vmax:.3g}"  # hover reads p


@pytest.mark.parametrize(
    ("kwargs", "valid"),
    [
        ({"kinds": ("cross",)}, "frame, global"),
        ({"points": "mesh"}, "world_points, depth"),
        ({"colormap": "jet"}, "inferno"),
        ({"conf_percentile": 101}, "[0, 100]"),
        ({"max_points": 0}, ">= 1"),
        ({"jpeg_quality": 0}, "1..100"),
        ({"focus_head": -1}, ">= 0"),
        ({"scale": "log"}, "map, global, view"),
        ({"gamma": 0}, "[0.05, 20]"),
        ({"clip_percentile": 10}, "[50, 100]"),
        ({"rays": -1}, "0..64"),
        ({"conf_threshold": float("nan")}, "finite"),
    ],
)
def test_invalid_options_raise_one_line_user_error(kwargs, valid):
    with pytest.raises(UserError) as err:
        RecordingOptions(**kwargs)
    assert valid in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "valid"),
    [
        ({"focus_head": 9}, "valid heads are 0..3"),
        ({"focus_block": 1}, "captured blocks are [0, 3]"),
        ({"grid_view": 5}, "valid views are 0..2"),
        ({"kinds": ("frame",)}, "captured kinds are ['global']"),
    ],
)
def test_options_are_checked_against_the_run(tiny_model, scene_images, kwargs, valid):
    result = capture(tiny_model, scene_images, lambda lay: [Query.from_patch(lay, 0, 1, 1)], blocks=[0, 3],
                     kinds=("global",))  # fmt: skip
    with pytest.raises(UserError, match=valid.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        log_run(
            rr.RecordingStream(APPLICATION_ID),
            result,
            images_from_tensor(scene_images),
            RecordingOptions(**kwargs),
        )


def test_image_files_are_loaded_as_vggt_input(tmp_path):
    pixels = (np.random.default_rng(0).random((2, 28, 42, 3)) * 255).astype(np.uint8)
    paths = [tmp_path / f"{i}.png" for i in range(2)]
    for p, px in zip(paths, pixels, strict=True):
        Image.fromarray(px).save(p)
    loaded = as_loaded_images(paths)
    assert loaded.paths == paths and list(loaded.tensor.shape) == [2, 3, 350, 518]


def test_colormap_lut_matches_matplotlib():
    mpl = pytest.importorskip("matplotlib")
    for name in colormap.COLORMAPS:
        ref = np.round(mpl.colormaps[name](np.arange(256))[:, :3] * 255)
        assert np.abs(colormap.lut(name).astype(float) - ref).max() <= 3


def test_log_run_rejects_images_of_another_run(tiny_model, scene_images):
    result = capture(tiny_model, scene_images, lambda lay: [Query(0, 5)], blocks=[0], kinds=("global",))
    with pytest.raises(UserError, match="same images"):
        log_run(
            rr.RecordingStream(APPLICATION_ID),
            result,
            images_from_tensor(scene_images[:2]),
            RecordingOptions(),
        )


def test_a_degenerate_camera_is_left_out_with_a_warning(tmp_path, tiny_model, scene_images):
    result = capture(tiny_model, scene_images, lambda lay: [Query.from_patch(lay, 0, 1, 1)], blocks=[3])
    result.predictions["pose_enc"] = result.predictions["pose_enc"].clone()
    result.predictions["pose_enc"][0, 1, 8] = 0.0  # zero horizontal field of view: infinite focal length
    rec = rr.RecordingStream(APPLICATION_ID)
    path = tmp_path / "degenerate.rrd"
    rec.save(path)
    with pytest.warns(UserWarning, match="Degenerate camera in view 1"):
        log_run(rec, result, images_from_tensor(scene_images), RecordingOptions(max_points=100))
    rec.flush()
    rec.disconnect()
    recording = Recording(path)
    assert Paths.image(1) in recording.entities()  # the photo is still there
    with pytest.raises(AssertionError, match="no static Pinhole"):
        recording.static(Paths.image(1), "Pinhole:image_from_camera")
    assert np.isfinite(recording.static(Paths.image(0), "Pinhole:image_from_camera")).all()
