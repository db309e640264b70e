"""True cameras that come with a scene (io.cameras), rendered scenes with exact geometry, and
studies that score against them (reference = truth)."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from vggt_attn_rerun.batch.job import StudyOptions
from vggt_attn_rerun.batch.study import run_study
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.io.cameras import find_cameras, read_cameras, write_cameras_npz
from vggt_attn_rerun.testing import render_scene, uniform_vggt, write_scene

pycolmap = pytest.importorskip("pycolmap")


def _random_cameras(n, seed=0):
    rng = np.random.default_rng(seed)
    extr, intr = [], []
    for _ in range(n):
        r = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        r *= np.sign(np.linalg.det(r))
        extr.append(np.concatenate([r, rng.normal(size=(3, 1))], 1))
        intr.append(np.array([[rng.uniform(80, 120), 0, rng.uniform(50, 70)], [0, rng.uniform(80, 120),
                             rng.uniform(30, 50)], [0, 0, 1]]))  # fmt: skip
    return np.stack(extr), np.stack(intr)


def test_colmap_cameras_written_with_pycolmap_read_back_equal(tmp_path):
    extr, intr = _random_cameras(3)
    rec = pycolmap.Reconstruction()
    for i in range(3):
        cam = pycolmap.Camera.create_from_model_name(i + 1, "PINHOLE", 100.0, 126, 84)
        # COLMAP puts pixel centres at +0.5: the same camera's principal point is 0.5 larger there.
        cam.params = [intr[i, 0, 0], intr[i, 1, 1], intr[i, 0, 2] + 0.5, intr[i, 1, 2] + 0.5]
        rec.add_camera_with_trivial_rig(cam)
        image = pycolmap.Image(name=f"images/{i:02d}.png", camera_id=i + 1, image_id=i + 1)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(extr[i]))
    (tmp_path / "sparse" / "0").mkdir(parents=True)
    rec.write(str(tmp_path / "sparse" / "0"))
    assert find_cameras(tmp_path) == tmp_path / "sparse" / "0"
    cams = read_cameras(tmp_path)
    e, k, depth = cams.for_photos(["x/02.png", "00.png", "01.png"])
    np.testing.assert_allclose(e, extr[[2, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(k, intr[[2, 0, 1]], atol=1e-12)
    assert depth is None


def test_colmap_models_with_distortion_are_refused_with_the_fix(tmp_path):
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera.create_from_model_name(1, "OPENCV", 100.0, 126, 84))
    rec.add_image_with_trivial_frame(pycolmap.Image(name="00.png", camera_id=1, image_id=1),
                                     pycolmap.Rigid3d(np.eye(3, 4)))  # fmt: skip
    rec.write(str(tmp_path))
    with pytest.raises(UserError, match="undistort first"):
        read_cameras(tmp_path)


def test_cameras_npz_reads_back_what_was_written(tmp_path):
    extr, intr = _random_cameras(2, seed=1)
    depth = np.random.default_rng(2).uniform(1, 3, (2, 4, 6)).astype(np.float32)
    write_cameras_npz(tmp_path / "cameras.npz", ["a.png", "b.png"], intr, extr, depth)
    cams = read_cameras(tmp_path)
    e, k, d = cams.for_photos(["b.png", "a.png"])
    np.testing.assert_array_equal(e, extr[[1, 0]])
    np.testing.assert_array_equal(k, intr[[1, 0]])
    np.testing.assert_array_equal(np.stack(d), depth[[1, 0]])


def test_a_photo_without_a_camera_is_named(tmp_path):
    extr, intr = _random_cameras(1)
    write_cameras_npz(tmp_path / "cameras.npz", ["a.png"], intr, extr)
    with pytest.raises(UserError, match="no camera for photo c.png"):
        read_cameras(tmp_path / "cameras.npz").for_photos(["a.png", "c.png"])


@pytest.mark.parametrize("path", ["sideways", "forward", "orbit"])
def test_rendered_depth_and_cameras_carry_a_pixel_to_the_same_color_in_another_view(path):
    scene = render_scene(path, 2, height=42, width=56, seed=3)
    k, e, depth = scene.intrinsics, scene.extrinsics, scene.depth
    v, u = np.mgrid[0:42, 0:56].astype(float)
    cam = np.stack([(u - k[0, 0, 2]) / k[0, 0, 0] * depth[0], (v - k[0, 1, 2]) / k[0, 1, 1] * depth[0], depth[0]], -1)
    world = (cam - e[0, :, 3]) @ e[0, :, :3]
    x1 = world @ e[1, :, :3].T + e[1, :, 3]
    uv = (x1[..., :2] / x1[..., 2:]) * np.diag(k[1])[:2] + k[1, :2, 2]
    col, row = np.round(uv[..., 0]).astype(int), np.round(uv[..., 1]).astype(int)
    inside = (col >= 0) & (col < 56) & (row >= 0) & (row < 42)
    visible = inside & np.isclose(depth[1][row.clip(0, 41), col.clip(0, 55)], x1[..., 2], rtol=3e-2)
    assert visible.mean() > 0.3
    diff = np.abs(scene.images[1][row[visible], col[visible]].astype(int) - scene.images[0][visible].astype(int))
    assert np.median(diff) <= 12  # nearest-pixel sampling of a smooth texture


def test_a_study_of_rendered_scenes_scores_against_the_truth_and_a_uniform_model_gains_nothing(tmp_path):
    for i, path in enumerate(["sideways", "forward", "orbit"]):
        write_scene(tmp_path / "scenes" / f"{path}", render_scene(path, 2, height=56, width=84, seed=i))
    options = StudyOptions(model="tiny", grid=(2, 2), image_size=84, device="cpu", kinds=("global",))
    run_study(tmp_path / "scenes", tmp_path / "out", options, model=uniform_vggt(), progress=False)
    table = pq.read_table(tmp_path / "out" / "scenes.parquet")
    assert set(table["reference"].to_pylist()) == {"truth"}
    for gain in ("correspondence_gain", "peak_dist_gain", "epipolar_gain"):
        values = table[gain].to_numpy()
        assert np.isfinite(values).all()
        np.testing.assert_allclose(values, 0, atol=1e-12)
    summary = pq.read_table(tmp_path / "out" / "summary.parquet")
    assert (summary["epipolar_gain_q"].to_numpy() == 1).all()
    assert "Geometry reference: **truth**" in (tmp_path / "out" / "summary.md").read_text()


def test_the_main_command_scores_against_cameras_given_with_cameras(tmp_path):
    import rerun as rr
    from click.testing import CliRunner

    from vggt_attn_rerun.cli import main as cli

    folder = write_scene(tmp_path / "scene", render_scene("sideways", 2, height=56, width=84, seed=5))
    out = tmp_path / "run.rrd"
    args = [str(folder / "00.png"), str(folder / "01.png"), "--model", "tiny", "--image-size", "84", "--headless",
            "--save", str(out), "--cameras", str(folder / "cameras.npz"), "-q", "0:p1,2"]  # fmt: skip
    result = CliRunner().invoke(cli.cli, args)
    assert result.exit_code == 0, result.output
    texts = [str(t) for c in rr.chunk.RrdReader(out).stream() for b in [c.to_record_batch()]
             if "TextDocument:text" in b.schema.names for t in b["TextDocument:text"].to_pylist()]  # fmt: skip
    assert any("reference = truth" in t for t in texts)


def test_cameras_that_do_not_exist_are_one_clear_line_and_exit_code_2(tmp_path):
    from click.testing import CliRunner

    from vggt_attn_rerun.cli import main as cli

    folder = write_scene(tmp_path / "scene", render_scene("sideways", 2, height=56, width=84, seed=5))
    args = [str(folder), "--model", "tiny", "--headless", "--save", str(tmp_path / "x.rrd"), "--cameras",
            str(tmp_path / "none.npz")]  # fmt: skip
    result = CliRunner().invoke(cli.cli, args)
    assert result.exit_code == 2 and "no such file or folder" in result.output


def test_a_colmap_scene_folder_is_read_with_its_images_folder_and_scores_epipolar_against_the_truth(tmp_path):
    rendered = render_scene("orbit", 2, height=56, width=84, seed=4)
    folder = write_scene(tmp_path / "scenes" / "colmap" / "images", rendered)
    (folder / "cameras.npz").unlink()
    rec = pycolmap.Reconstruction()
    for i in range(2):
        k = rendered.intrinsics[i]
        cam = pycolmap.Camera.create_from_model_name(i + 1, "PINHOLE", 100.0, 84, 56)
        cam.params = [k[0, 0], k[1, 1], k[0, 2] + 0.5, k[1, 2] + 0.5]
        rec.add_camera_with_trivial_rig(cam)
        image = pycolmap.Image(name=f"{i:02d}.png", camera_id=i + 1, image_id=i + 1)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(rendered.extrinsics[i]))
    (tmp_path / "scenes" / "colmap" / "sparse" / "0").mkdir(parents=True)
    rec.write(str(tmp_path / "scenes" / "colmap" / "sparse" / "0"))
    options = StudyOptions(model="tiny", grid=(2, 2), image_size=84, device="cpu", kinds=("global",))
    report = run_study(tmp_path / "scenes", tmp_path / "out", options, model=uniform_vggt(), progress=False)
    assert report.done == 1
    table = pq.read_table(tmp_path / "out" / "scenes.parquet")
    assert set(table["reference"].to_pylist()) == {"truth"}
    np.testing.assert_allclose(table["epipolar_gain"].to_numpy(), 0, atol=1e-12)
    assert np.isnan(table["correspondence_gain"].to_numpy()).all()  # COLMAP brings no depth
