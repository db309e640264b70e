"""The head grid on both timelines, the legend on screen, and the peak outlines."""

import numpy as np
import pytest

from tests.helpers import Recording, segmentation_grid
from vggt_attn_rerun.analysis.maps import PEAK_MIN_U8, peak_patches, quantize
from vggt_attn_rerun.api import record_attention
from vggt_attn_rerun.testing import matching_vggt
from vggt_attn_rerun.viz import colormap
from vggt_attn_rerun.viz.options import RecordingOptions
from vggt_attn_rerun.viz.paths import Paths

BLOCKS = [1, 2]  # block 2 of matching_vggt is the constructed, peaked one


@pytest.fixture(scope="module")
def run(tmp_path_factory, scene_images):
    options = RecordingOptions(kinds=("global",), focus_block=2, max_points=300)
    result, rec = record_attention(matching_vggt(), scene_images, ["0:p1,2"], blocks=BLOCKS, options=options)
    path = tmp_path_factory.mktemp("legend") / "run.rrd"
    rec.save(path)
    rec.flush()
    rec.disconnect()
    return result, Recording(path), options


def test_the_head_grid_has_every_heads_map_on_the_head_timeline(run):
    result, recording, _ = run
    lay, rows = result.layout, result.rows
    for h in range(rows.num_heads):
        got = recording.temporal(Paths.head(0, "global", h), "SegmentationImage:buffer", "head")
        assert list(got) == [0]  # one row that holds for every head
        p = result.rows.patches("global")[1, 0, h, 0].double().numpy()  # block 2, head h, view 0 [gh, gw]
        every_view = result.rows.patches("global")[1, 0, h].double().numpy().ravel()  # [S * gh * gw]
        vmax = np.delete(every_view, 1 * lay.grid_w + 2).max()  # the query's own key (view 0, p1,2) left out
        np.testing.assert_array_equal(segmentation_grid(got[0], lay), quantize(p, vmax))


def test_the_colour_bar_is_the_colormap_cold_to_hot(run):
    _, recording, options = run
    fmt = recording.static(Paths.colorbar, "Image:format")[0]
    bar = np.asarray(recording.static(Paths.colorbar, "Image:buffer")[0], np.uint8)
    bar = bar.reshape(fmt["height"], fmt["width"], 3)
    np.testing.assert_array_equal(bar[0], colormap.visible_colors(np.arange(256), options.colormap))


def test_the_legend_explains_query_projection_and_peaks(run):
    _, recording, _ = run
    text = next(iter(recording.temporal(Paths.scale_note(0, "global"), "TextDocument:text", "block").values()))[0]
    assert "`q0` = the query" in text and "`q0 projected`" in text and "3 hottest patches" in text


def test_the_projected_query_is_labelled_as_such(run):
    _, recording, _ = run
    labels = [recording.static(Paths.projected(s, 0), "Points2D:labels") for s in (1, 2)
              if Paths.projected(s, 0) in recording.entities()]  # fmt: skip
    assert labels and all(v == ["q0 projected"] for v in labels)


def test_peak_outlines_sit_on_the_hottest_patches_of_each_view(run):
    result, recording, _ = run
    lay = result.layout
    found = 0
    for s in range(lay.num_frames):
        overlays = recording.temporal(Paths.overlay(s, 0, "global"), "SegmentationImage:buffer", "block")
        peaks = recording.temporal(Paths.peaks(s, 0, "global"), "Boxes2D:centers", "block")
        for block, centers in peaks.items():
            u8 = segmentation_grid(overlays[block], lay)
            cells = {(int(y), int(x)) for x, y in np.floor(np.asarray(centers).reshape(-1, 2))}
            if s == 0:
                assert (1, 2) not in cells  # the query's own patch is never a peak
                u8[1, 2] = 0
            unmarked = [u8[i, j] for i in range(lay.grid_h) for j in range(lay.grid_w) if (i, j) not in cells]
            for r, c in cells:  # every outline is hot, and no unmarked patch of the view is hotter
                assert u8[r, c] >= PEAK_MIN_U8 and u8[r, c] >= max(unmarked, default=0)
            found += len(cells)
    assert found > 0


def test_peak_boxes_in_3d_follow_the_2d_outlines(run):
    _, recording, _ = run
    boxes = recording.temporal(Paths.peaks_3d(0, "global"), "Boxes3D:centers", "block")
    assert boxes and any(len(v) for v in boxes.values())


def test_peak_boxes_in_3d_are_wireframes_that_leave_the_points_inside_visible_and_clickable(run):
    import rerun as rr

    _, recording, _ = run
    fill = recording.static(Paths.peaks_3d(0, "global"), "Boxes3D:fill_mode")
    assert fill == [rr.components.FillMode.MajorWireframe.value]


def test_peaks_of_a_known_map():
    p = np.full((1, 2, 3, 3), 0.01)
    p[0, 0, 2, 1] = 0.5  # one hot patch in view 0
    p[0, 0, 0, 0] = 0.4  # the query's own patch: left out
    u8 = quantize(p, np.full((1, 2, 1, 1), 0.5))
    got = peak_patches(p, u8, 3, self_patch=(0, 0, 0))
    assert np.argwhere(got).tolist() == [[0, 0, 2, 1]]  # view 1 is flat: no peak


def test_a_uniform_map_has_no_peaks():
    p = np.full((2, 3, 4, 4), 1 / 48)
    assert not peak_patches(p, quantize(p, np.full((2, 3, 1, 1), 1 / 48)), 3).any()


def test_peaks_keep_at_most_k_per_view(rng):
    p = rng.uniform(0, 1, (1, 1, 5, 5)) ** 8
    u8 = quantize(p, np.full((1, 1, 1, 1), p.max()))
    got = peak_patches(p, u8, 2)
    assert got.sum() <= 2
    assert set(np.flatnonzero(got)) <= set(np.argsort(-p.ravel())[:2])


def test_block_x_head_matrices_have_labelled_axes(run):
    result, recording, _ = run
    labels = recording.static(f"{Paths.matrix(0, 'global', 'entropy')}/axes", "Points2D:labels")
    last_head = result.rows.num_heads - 1
    assert {"block 1", "b2", "h0", f"h{last_head}"} <= set(labels)


def test_a_deep_matrix_labels_about_five_rows_and_always_its_first_and_last():
    from vggt_attn_rerun.viz.log_summaries import matrix_axes

    labels = [str(x) for x in matrix_axes(list(range(24)), 16, 12).labels.as_arrow_array().to_pylist()]
    rows = [x for x in labels if x.startswith("b")]
    heads = [x for x in labels if x.startswith("h")]
    assert rows[0] == "block 0" and rows[-1] == "b23" and 4 <= len(rows) <= 6
    assert heads[0] == "h0" and heads[-1] == "h15" and 4 <= len(heads) <= 6
