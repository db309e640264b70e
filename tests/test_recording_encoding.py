"""How the attention is drawn, read back from the .rrd and checked against numbers computed here.

The run uses the constructed demo model, whose global block 2 gives peaked maps (a hot spot and
near-zero elsewhere), as a trained correspondence head would."""

import numpy as np
import pytest

from vggt_attn_rerun.api import record_attention
from vggt_attn_rerun.testing import matching_vggt
from vggt_attn_rerun.viz.options import RecordingOptions
from vggt_attn_rerun.viz.paths import Paths

from .helpers import Recording

QUERY = (1, 2, 3)  # frame, row, col
K = 3
BLOCK = 2  # the constructed block


@pytest.fixture(scope="module")
def run(tmp_path_factory, scene_images):
    # Every patch keeps its 3D point (confidence percentile 0), so patch points index all patches.
    options = RecordingOptions(kinds=("global",), conf_percentile=0.0, max_points=100, rays=K)
    f, r, c = QUERY
    result, rec = record_attention(matching_vggt(block=BLOCK), scene_images, [f"{f}:p{r},{c}"], options=options)
    path = tmp_path_factory.mktemp("enc") / "run.rrd"
    rec.save(path)
    rec.flush()
    rec.disconnect()
    return result, Recording(path)


def _head_mean(result, block) -> np.ndarray:
    """Head-mean patch map of the block: ``[S, gh, gw]`` raw probabilities."""
    li = list(result.rows.blocks).index(block)
    return result.rows.patches("global")[li, 0].double().mean(0).numpy()


def _without_query_key(p, fill=-np.inf) -> np.ndarray:
    """The map with the query's own key replaced by ``fill`` (so arg-min/max never pick it)."""
    p = p.copy()
    p[QUERY] = fill
    return p


def _rgba(packed: int) -> np.ndarray:
    return np.array([(packed >> 24) & 255, (packed >> 16) & 255, (packed >> 8) & 255, packed & 255])


def _luma(rgb) -> float:
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def _centroids(result) -> np.ndarray:
    """Mean predicted world point of every patch, ``[S * gh * gw, 3]``."""
    lay = result.layout
    pts = result.predictions["world_points"][0].double().numpy()
    pts = pts.reshape(lay.num_frames, lay.grid_h, lay.patch_size, lay.grid_w, lay.patch_size, 3)
    return pts.mean(axis=(2, 4)).reshape(-1, 3)


def test_hottest_patch_is_bright_and_opaque_and_coldest_faint(run):
    result, recording = run
    lay = result.layout
    p = _head_mean(result, BLOCK)
    hot = np.unravel_index(np.argmax(_without_query_key(p)), p.shape)
    cold = np.unravel_index(np.argmin(_without_query_key(p, np.inf)), p.shape)
    for (s, r, c), want in ((hot, "hot"), (cold, "cold")):
        path = Paths.overlay(s, 0, "global")
        (context,) = recording.static(path, "AnnotationContext:context")
        colors = {e["class_id"]: _rgba(e["class_description"]["info"]["color"]) for e in context}
        u8 = np.asarray(recording.temporal(path, "SegmentationImage:buffer", "block")[BLOCK][0])
        rgba = colors[int(u8.reshape(lay.grid_h, lay.grid_w)[r, c])]
        if want == "hot":
            assert rgba[3] == 255 and _luma(rgba) > 180
        else:
            assert rgba[3] < 40


def test_hottest_3d_point_is_the_largest_and_brightest(run):
    result, recording = run
    p = _head_mean(result, BLOCK)
    ent = Paths.patch_points(0, "global")
    radii = np.asarray(recording.temporal(ent, "Points3D:radii", "block")[BLOCK])
    (context,) = recording.static(ent, "AnnotationContext:context")
    colors = {e["class_id"]: _rgba(e["class_description"]["info"]["color"]) for e in context}
    rgba = np.array([colors[c] for c in recording.temporal(ent, "Points3D:class_ids", "block")[BLOCK]])
    luma = np.array([_luma(c) for c in rgba])
    hot, cold = int(np.argmax(_without_query_key(p))), int(np.argmin(_without_query_key(p, np.inf)))
    assert radii[hot] == radii.max() and luma[hot] == luma.max()
    assert radii[cold] < radii[hot] / 4 and luma[cold] > 20  # small but not black on a dark background
    assert (rgba[:, 3] == 255).all()  # points are opaque: size, not alpha, fades them


def test_3d_points_sit_at_the_patch_centroids(run):
    result, recording = run
    got = np.asarray(recording.static(Paths.patch_points(0, "global"), "Points3D:positions"))
    np.testing.assert_allclose(got, _centroids(result), rtol=1e-4, atol=1e-5)


def _expected_rays(result, p: np.ndarray) -> np.ndarray:
    """Ends of the rays: centroids of the K most attended patches of the other views, hottest first."""
    other = np.ones(p.shape, bool)
    other[QUERY[0]] = False
    flat, cand = p.reshape(-1), np.flatnonzero(other.reshape(-1))
    top = cand[np.argsort(-flat[cand], kind="stable")[:K]]
    return _centroids(result)[top]


def test_rays_go_from_the_query_point_to_the_top_k_patches_of_other_views(run):
    result, recording = run
    strips = recording.temporal(Paths.rays(0, "global"), "LineStrips3D:strips", "block")
    assert sorted(strips) == list(result.rows.blocks)
    origin = _centroids(result).reshape(result.layout.num_frames, -1, 3)[QUERY[0]][
        QUERY[1] * result.layout.grid_w + QUERY[2]
    ]
    for block in result.rows.blocks:
        got = np.asarray(strips[block])  # [K, 2, 3]
        np.testing.assert_allclose(got[:, 0], np.broadcast_to(origin, (K, 3)), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got[:, 1], _expected_rays(result, _head_mean(result, block)), rtol=1e-4, atol=1e-5)


def test_rays_on_the_head_timeline_follow_each_head_at_the_focus_block(run):
    result, recording = run
    strips = recording.temporal(Paths.rays(0, "global"), "LineStrips3D:strips", "head")
    last = result.rows.patches("global")[-1, 0].double().numpy()  # [H, S, gh, gw]
    for h in range(result.rows.num_heads):
        np.testing.assert_allclose(np.asarray(strips[h])[:, 1], _expected_rays(result, last[h]), rtol=1e-4, atol=1e-5)


def test_the_scale_note_names_the_scale_of_the_map_on_screen(run):
    result, recording = run
    notes = recording.temporal(Paths.scale_note(0, "global"), "TextDocument:text", "block")
    vmax = _without_query_key(_head_mean(result, BLOCK)).max()
    assert f"0 .. {vmax:.3g}" in notes[BLOCK][0] and f"block {BLOCK}, head mean" in notes[BLOCK][0]
