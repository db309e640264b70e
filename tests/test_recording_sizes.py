"""3D sizes follow the scene's own extent; what the 3D view cannot show is said in the notes."""

import numpy as np
import pytest
import rerun as rr

from tests.helpers import Recording
from vggt_attn_rerun.analysis.scene import scene_extent
from vggt_attn_rerun.core.capture import capture
from vggt_attn_rerun.core.images import images_from_tensor
from vggt_attn_rerun.core.tokens import Query
from vggt_attn_rerun.viz.log_run import log_run
from vggt_attn_rerun.viz.options import RecordingOptions
from vggt_attn_rerun.viz.paths import APPLICATION_ID, Paths

GEOMETRY = ("world_points", "depth")


@pytest.fixture(scope="module")
def base(tiny_model, scene_images):
    return capture(tiny_model, scene_images, lambda lay: [Query.from_patch(lay, 0, 1, 2)], blocks=[2, 3])


def _scaled(result, k: float, shift: float = 0.0):
    """The same run in a world ``k`` times larger (points, depths, camera positions), moved by ``shift`` along z."""
    pred = dict(result.predictions)
    for name in GEOMETRY:
        pred[name] = pred[name] * k
    pred["world_points"] = pred["world_points"] + shift
    pose = pred["pose_enc"].clone()
    pose[..., :3] = pose[..., :3] * k
    pred["pose_enc"] = pose
    return type(result)(pred, result.rows, result.layout, None, result.model_label)


def _log(tmp_path, result, images, name: str) -> Recording:
    rec = rr.RecordingStream(APPLICATION_ID)
    path = tmp_path / f"{name}.rrd"
    rec.save(path)
    log_run(rec, result, images_from_tensor(images), RecordingOptions(max_points=200))
    rec.flush()
    rec.disconnect()
    return Recording(path)


def _proportions(recording: Recording) -> np.ndarray:
    """Every world-unit size of the 3D view divided by the spread of the logged patch points."""
    positions = np.asarray(recording.static(Paths.patch_points(0, "global"), "Points3D:positions"))
    spread = float(np.linalg.norm(np.ptp(positions, axis=0)))
    query = recording.static(Paths.query_point(0), "Points3D:radii")[0]
    plane = np.ravel(recording.static(Paths.image(0), "Pinhole:image_plane_distance"))[0]
    rows = recording.temporal(Paths.patch_points(0, "global"), "Points3D:radii", "block").values()
    heat = np.concatenate([np.ravel(r) for r in rows])
    return np.array([query, plane, heat.min(), heat.max()]) / spread


def test_a_scene_scaled_by_1000_or_by_0_001_gives_the_same_picture(tmp_path, base, scene_images):
    one = _proportions(_log(tmp_path, base, scene_images, "one"))
    for k in (1000.0, 0.001):
        np.testing.assert_allclose(_proportions(_log(tmp_path, _scaled(base, k), scene_images, f"k{k}")), one,
                                   rtol=1e-3)  # fmt: skip


def test_a_small_scene_far_from_the_first_camera_keeps_a_small_query_point(tmp_path, base, scene_images):
    # An untrained model's points: a few hundredths across, about one unit away from the camera.
    small = _scaled(base, 0.01, shift=1.0)
    recording = _log(tmp_path, small, scene_images, "small")
    positions = np.asarray(recording.static(Paths.patch_points(0, "global"), "Points3D:positions"))
    spread = float(np.linalg.norm(np.ptp(positions, axis=0)))
    # (sized from the distance to the first camera, it was as wide as the whole scene)
    assert recording.static(Paths.query_point(0), "Points3D:radii")[0] < 0.5 * spread


def test_the_extent_ignores_a_few_stray_points(rng):
    points = rng.uniform(0, 1, (10_000, 3))
    stray = np.concatenate([points, np.full((50, 3), 1e6)])
    assert scene_extent(stray) == pytest.approx(scene_extent(points), rel=0.02)
    assert scene_extent(points) == pytest.approx(np.sqrt(3) * 0.96, rel=0.02)  # 2nd..98th percentile box


def _notes(recording: Recording) -> str:
    return recording.static(Paths.notes, "TextDocument:text")[0]


def test_a_degenerate_camera_is_named_in_the_notes_and_the_legend(tmp_path, base, scene_images):
    result = _scaled(base, 1.0)
    result.predictions["pose_enc"][0, 1, 8] = 0.0  # zero field of view
    with pytest.warns(UserWarning, match="Degenerate camera in view 1"):
        recording = _log(tmp_path, result, scene_images, "camera")
    assert "Degenerate camera in view 1 " in _notes(recording)
    legend = next(iter(recording.temporal(Paths.scale_note(0, "global"), "TextDocument:text", "block").values()))
    assert "Degenerate camera in view 1" in legend[0]


def test_points_all_at_one_place_are_named_in_the_notes(tmp_path, base, scene_images):
    result = _scaled(base, 1.0)
    result.predictions["world_points"] = result.predictions["world_points"] * 0 + 0.5
    with pytest.warns(UserWarning, match="every kept point is at the same place"):
        recording = _log(tmp_path, result, scene_images, "points")
    assert "Degenerate point map: every kept point is at the same place" in _notes(recording)
    radius = recording.static(Paths.query_point(0), "Points3D:radii")[0]
    assert np.isfinite(radius) and radius > 0


def test_a_sound_scene_has_no_warning_in_its_notes(tmp_path, base, scene_images):
    assert "⚠" not in _notes(_log(tmp_path, base, scene_images, "sound"))
