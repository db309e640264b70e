"""Summaries, block x head matrices, geometric consistency and log_queries, read back from the .rrd."""

import numpy as np
import pytest
import rerun as rr

from vggt_attn_rerun.analysis.consistency import STATUS_NAMES, geometric_consistency
from vggt_attn_rerun.analysis.summaries import METRICS, block_head_matrix, summarize
from vggt_attn_rerun.api import record_attention
from vggt_attn_rerun.core.capture import capture
from vggt_attn_rerun.core.images import images_from_tensor
from vggt_attn_rerun.core.tokens import Query
from vggt_attn_rerun.viz import colormap
from vggt_attn_rerun.viz.log_run import log_queries
from vggt_attn_rerun.viz.options import RecordingOptions
from vggt_attn_rerun.viz.paths import APPLICATION_ID, MEAN, Paths

from .test_recording import Recording

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


def test_summary_series_equal_summarize(run):
    result, recording = run
    summ = summarize(result.rows, "global", top_k=OPTIONS.top_k)
    heads = result.rows.num_heads
    for metric in METRICS:
        series = recording.temporal(Paths.summary(1, "global", metric), "Scalars:scalars", "block")
        assert sorted(series) == list(result.rows.blocks)
        for li, b in enumerate(result.rows.blocks):
            want = getattr(summ, metric)[li, 1]  # [H]
            assert len(series[b]) == heads + 1  # every head, then the head mean
            np.testing.assert_allclose(series[b][:heads], want, rtol=1e-12, atol=1e-15)
            assert series[b][heads] == pytest.approx(want.mean(), rel=1e-12, abs=1e-15)
    names = recording.static(Paths.summary(1, "global", "entropy"), "SeriesLines:names")
    assert names == [f"head {h}" for h in range(heads)] + ["head mean"]


def test_matrix_image_is_blocks_by_heads_cells(run):
    result, recording = run
    rows, cell = result.rows, OPTIONS.matrix_cell
    got = _image(recording, Paths.matrix(0, "global", "entropy"))
    assert got.shape == (len(rows.blocks) * cell, rows.num_heads * cell, 3)
    values = summarize(rows, "global").entropy[:, 0]  # [L, H]
    np.testing.assert_array_equal(got, block_head_matrix(values, colormap.lut(OPTIONS.colormap), cell, 0.0, 1.0))
    assert recording.static(Paths.matrix(0, "global", "entropy"), "vmax") == [1.0]
    legend = recording.static(Paths.matrix_legend(0, "global"), "TextDocument:text")[0]
    assert "rows = captured blocks" in legend and "columns = heads" in legend


def test_means_over_queries_are_logged(run):
    result, recording = run
    mean = summarize(result.rows, "global").own_view_mass.mean(axis=1)  # [L, H]
    series = recording.temporal(Paths.summary(MEAN, "global", "own_view_mass"), "Scalars:scalars", "block")
    b = result.rows.blocks[-1]
    np.testing.assert_allclose(series[b][:-1], mean[-1], rtol=1e-12)
    assert {Paths.matrix(MEAN, "global", "entropy"), Paths.consistency(MEAN, "score")} <= recording.entities()


def test_projected_marker_only_on_valid_views(run, scene_images):
    result, recording = run
    cons = geometric_consistency(result.rows, result.predictions)
    assert [STATUS_NAMES[c] for c in cons.status[0]] == ["own_view", "valid", "outside_image"]
    got = recording.static(Paths.projected(1, 0), "Points2D:positions")
    np.testing.assert_allclose(got, cons.projected_xy[0, 1][None], rtol=1e-6)
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
    cons = geometric_consistency(result.rows, result.predictions)
    series = recording.temporal(Paths.consistency(0, "peak_dist"), "Scalars:scalars", "block")
    assert recording.static(Paths.consistency(0, "peak_dist"), "SeriesLines:names") == ["view 1"]
    for li, b in enumerate(result.rows.blocks):
        assert series[b] == pytest.approx([cons.peak_dist_pixels[li, 0, :, 1].mean()], rel=1e-12)


def test_log_queries_writes_only_the_new_queries(tmp_path, tiny_model, scene_images):
    result = capture(tiny_model, scene_images, lambda lay: [Query.from_patch(lay, 1, 2, 3)], blocks=[0, 3],
                     kinds=("global",))  # fmt: skip
    rec = rr.RecordingStream(APPLICATION_ID)
    path = tmp_path / "more.rrd"
    rec.save(path)
    log_queries(rec, result, images_from_tensor(scene_images), OPTIONS, first_index=5)
    rec.flush()
    rec.disconnect()
    found = {e for e in Recording(path).entities() if not e.startswith("__")}  # __properties: Rerun's own
    assert {Paths.info(5), Paths.overlay(0, 5, "global"), Paths.summary(5, "global", "entropy")} <= found
    assert Paths.marker(1, 5) in found
    assert all("q5" in e.split("/") for e in found), sorted(e for e in found if "q5" not in e.split("/"))
    assert Paths.cloud not in found and "world" not in found and Paths.query_index not in found
