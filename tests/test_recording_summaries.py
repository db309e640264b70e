"""Summaries, block x head matrices, geometric consistency and log_added_queries, read back from the .rrd.

Every expected value is computed here from the raw rows and predictions, written out again from
the documented definitions (analysis/summaries.py, analysis/consistency.py), not with the
functions the logger calls.
"""

import numpy as np
import pytest
import rerun as rr

from vggt_attn_rerun.analysis.summaries import METRICS
from vggt_attn_rerun.api import record_attention
from vggt_attn_rerun.core.capture import capture
from vggt_attn_rerun.core.geometry import pose_encoding_to_cameras
from vggt_attn_rerun.core.images import images_from_tensor
from vggt_attn_rerun.core.tokens import Query
from vggt_attn_rerun.viz import colormap
from vggt_attn_rerun.viz.log_run import log_added_queries
from vggt_attn_rerun.viz.options import RecordingOptions
from vggt_attn_rerun.viz.paths import APPLICATION_ID, MEAN, Paths

from .helpers import Recording

# Frame 0 patch (1, 0): on the synthetic scene its point projects into view 1 and falls outside
# view 2 (checked below, so that a changed tiny model shows up as such and not as a wrong marker).
QUERIES = ["0:p1,0", "1:p2,3", "2:camera"]
OPTIONS = RecordingOptions(kinds=("global",), max_points=200)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model, scene_images):
    result, rec = record_attention(tiny_model, scene_images, QUERIES, options=OPTIONS)
    path = tmp_path_factory.mktemp("summ") / "run.rrd"
    rec.save(path)
    rec.flush()
    rec.disconnect()
    return result, Recording(path)


def _image(recording: Recording, entity: str) -> np.ndarray:
    fmt = recording.static(entity, "Image:format")[0]
    buf = np.asarray(recording.static(entity, "Image:buffer")[0], np.uint8)
    return buf.reshape(fmt["height"], fmt["width"], 3)


def _metrics(result, q: int) -> dict[str, np.ndarray]:
    """The documented summaries of query q, from its raw global rows: metric -> ``[L, H]``."""
    lay = result.layout
    p = result.rows.probs["global"][:, q].double().numpy()  # [L, H, S, P]
    frame = result.rows.queries[q].frame
    view = p[..., lay.patch_start :].sum(-1)  # [L, H, S]
    flat = p.reshape(*p.shape[:2], -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(flat > 0, flat * np.log(flat), 0.0)
    return {
        "own_view_mass": view[..., frame],
        "other_views_mass": view.sum(-1) - view[..., frame],
        "camera_mass": p[..., 0].sum(-1),
        "register_mass": p[..., 1 : lay.patch_start].sum((-1, -2)),
        "entropy": -plogp.sum(-1) / np.log(flat.shape[-1]),
        "top_k_mass": -np.sort(-flat, axis=-1)[..., : OPTIONS.top_k].sum(-1),
    }


def test_summary_metrics_are_the_documented_ones():
    assert set(METRICS) == {
        "own_view_mass", "other_views_mass", "camera_mass", "register_mass", "entropy", "top_k_mass",
    }  # fmt: skip


def test_summary_series_equal_the_documented_metrics(run):
    result, recording = run
    expected = _metrics(result, 1)
    heads = result.rows.num_heads
    for metric in METRICS:
        series = recording.temporal(Paths.summary(1, "global", metric), "Scalars:scalars", "block")
        assert sorted(series) == list(result.rows.blocks)
        for li, b in enumerate(result.rows.blocks):
            want = expected[metric][li]  # [H]
            assert len(series[b]) == heads + 1  # every head, then the head mean
            np.testing.assert_allclose(series[b][:heads], want, rtol=1e-9, atol=1e-12)
            assert series[b][heads] == pytest.approx(want.mean(), rel=1e-9, abs=1e-12)
    names = recording.static(Paths.summary(1, "global", "entropy"), "SeriesLines:names")
    assert names == [f"head {h}" for h in range(heads)] + ["head mean"]


def test_matrix_image_is_blocks_by_heads_cells(run):
    result, recording = run
    rows, cell = result.rows, OPTIONS.matrix_cell
    got = _image(recording, Paths.matrix(0, "global", "entropy"))
    assert got.shape == (len(rows.blocks) * cell, rows.num_heads * cell, 3)
    values = _metrics(result, 0)["entropy"]  # [L, H], drawn on 0..1
    index = np.rint(255 * np.clip(values, 0, 1)).astype(int)
    want = np.repeat(np.repeat(colormap.lut(OPTIONS.colormap)[index], cell, axis=0), cell, axis=1)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert recording.static(Paths.matrix(0, "global", "entropy"), "vmax") == [1.0]
    legend = recording.static(Paths.matrix_legend(0, "global"), "TextDocument:text")[0]
    assert "rows = captured blocks" in legend and "columns = heads" in legend


def test_means_over_queries_are_logged(run):
    result, recording = run
    mean = np.mean([_metrics(result, q)["own_view_mass"] for q in range(len(QUERIES))], axis=0)  # [L, H]
    series = recording.temporal(Paths.summary(MEAN, "global", "own_view_mass"), "Scalars:scalars", "block")
    b = result.rows.blocks[-1]
    np.testing.assert_allclose(series[b][:-1], mean[-1], rtol=1e-12)
    assert {Paths.matrix(MEAN, "global", "entropy"), Paths.consistency(MEAN, "score")} <= recording.entities()


def _projection(result, q: int = 0) -> np.ndarray:
    """The documented projection of query q's 3D point (mean world point over its patch) into
    every view: ``[S, 3]`` continuous (x, y) in model pixels and depth z."""
    lay = result.layout
    (f, (r, c)), ps = (result.rows.queries[q].frame, result.rows.queries[q].patch(lay)), lay.patch_size
    point = result.predictions["world_points"][0, f, r * ps : (r + 1) * ps, c * ps : (c + 1) * ps]
    x = point.reshape(-1, 3).double().mean(0).numpy()
    extr, intr = (a.numpy() for a in pose_encoding_to_cameras(result.predictions["pose_enc"][0].double(),
                                                              lay.image_size))  # fmt: skip
    cam = np.einsum("sij,j->si", extr[:, :, :3], x) + extr[:, :, 3]
    u = intr[:, 0, 0] * cam[:, 0] / cam[:, 2] + intr[:, 0, 2] + 0.5
    v = intr[:, 1, 1] * cam[:, 1] / cam[:, 2] + intr[:, 1, 2] + 0.5
    return np.stack([u, v, cam[:, 2]], -1)


def test_projected_marker_only_on_valid_views(run, scene_images):
    result, recording = run
    proj = _projection(result)
    h, w = result.layout.image_size
    inside = (proj[:, 2] > 0) & (proj[:, 0] >= 0) & (proj[:, 0] < w) & (proj[:, 1] >= 0) & (proj[:, 1] < h)
    assert list(inside[1:]) == [True, False]  # view 1 sees it, view 2 does not (view 0: own view)
    got = recording.static(Paths.projected(1, 0), "Points2D:positions")
    np.testing.assert_allclose(got, proj[1, :2][None], rtol=1e-5)
    assert {"world/frames/1/image/queries/q0/projected/cross", "world/frames/1/image/queries/q0/projected/window"} <= (
        recording.entities()
    )
    for s in (0, 2):  # own view, outside the image: no marker, no children
        assert not any(e.startswith(Paths.projected(s, 0)) for e in recording.entities())
    notes = recording.static(Paths.info(0), "TextDocument:text")[0]
    assert "view 2: excluded, outside_image" in notes
    assert "Counts: valid 1, own_view 1, outside_image 1." in notes


def test_special_token_query_is_excluded_everywhere(run):
    _, recording = run
    assert not any("/queries/q2/projected" in e for e in recording.entities())
    assert "no_point 2" in recording.static(Paths.info(2), "TextDocument:text")[0]


def test_peak_distance_series_is_head_mean_per_valid_view(run):
    result, recording = run
    lay = result.layout
    x, y, _ = _projection(result)[1]
    series = recording.temporal(Paths.consistency(0, "peak_dist"), "Scalars:scalars", "block")
    assert recording.static(Paths.consistency(0, "peak_dist"), "SeriesLines:names") == ["view 1"]
    patches = result.rows.patches("global")[:, 0, :, 1].double().numpy()  # [L, H, gh, gw]: view 1
    for li, b in enumerate(result.rows.blocks):
        dists = []
        for h in range(result.rows.num_heads):
            r, c = np.unravel_index(np.argmax(patches[li, h]), (lay.grid_h, lay.grid_w))
            dists.append(np.hypot((c + 0.5) * lay.patch_size - x, (r + 0.5) * lay.patch_size - y))
        assert series[b] == pytest.approx([np.mean(dists)], rel=1e-6)


def test_log_added_queries_writes_only_the_new_queries(tmp_path, tiny_model, scene_images):
    result = capture(tiny_model, scene_images, lambda lay: [Query.from_patch(lay, 1, 2, 3)], blocks=[0, 3],
                     kinds=("global",))  # fmt: skip
    rec = rr.RecordingStream(APPLICATION_ID)
    path = tmp_path / "more.rrd"
    rec.save(path)
    log_added_queries(rec, result, images_from_tensor(scene_images), OPTIONS, first_index=5)
    rec.flush()
    rec.disconnect()
    found = {e for e in Recording(path).entities() if not e.startswith("__")}  # __properties: Rerun's own
    assert {Paths.info(5), Paths.overlay(0, 5, "global"), Paths.summary(5, "global", "entropy")} <= found
    assert Paths.marker(1, 5) in found
    assert all("q5" in e.split("/") for e in found), sorted(e for e in found if "q5" not in e.split("/"))
    assert Paths.cloud not in found and "world" not in found and Paths.query_index not in found


def test_the_mean_gain_matrix_is_score_minus_the_uniform_null_on_a_symmetric_diverging_range(run):
    result, recording = run
    from vggt_attn_rerun.analysis.consistency import geometric_consistency

    cons = geometric_consistency(result.rows, result.predictions, radius=OPTIONS.consistency_radius)
    path = Paths.consistency(MEAN, "gain")
    values = np.asarray(recording.static(path, "values"), np.float64).reshape(cons.score.shape)
    np.testing.assert_allclose(values, cons.score - cons.null_score, atol=1e-12)
    vmin, vmax = recording.static(path, "vmin")[0], recording.static(path, "vmax")[0]
    assert vmin == -vmax == pytest.approx(-np.nanmax(np.abs(values)))
    assert len(recording.static(path, "significant")) == values.size
    notes_legend = recording.static(Paths.matrix_legend(MEAN, "global"), "TextDocument:text")[0]
    assert "consistency/gain" in notes_legend and "muted" in notes_legend
