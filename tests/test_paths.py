"""Entity paths are built and read back by one module (viz.paths): the two must agree."""

import pytest

from vggt_attn_rerun.viz.paths import Paths, clean_path, head_grid_query, image_frame, in_patch_units

FRAMES = (0, 3, 12)
QUERIES = (0, 7, 25)


@pytest.mark.parametrize("frame", FRAMES)
def test_every_path_on_an_image_reads_back_its_frame(frame):
    built = [
        Paths.image(frame),
        Paths.overlay_root(frame),
        Paths.overlay(frame, 4, "global"),
        Paths.marker(frame, 4),
        Paths.marker_patch(frame, 4),
        Paths.projected(frame, 4),
        Paths.projected_cross(frame, 4),
        Paths.projected_window(frame, 4),
    ]
    assert [image_frame(p) for p in built] == [frame] * len(built)
    assert [image_frame("/" + p) for p in built] == [frame] * len(built)  # as the viewer writes them


@pytest.mark.parametrize("query", QUERIES)
def test_every_path_of_a_head_grid_reads_back_its_query(query):
    built = [
        Paths.heads_root(query),
        Paths.heads_backdrop(query),
        Paths.heads_marker(query),
        Paths.heads_kind(query, "frame"),
        Paths.head(query, "global", 15),
    ]
    assert [head_grid_query(p) for p in built] == [query] * len(built)
    assert all(image_frame(p) is None for p in built)


def test_paths_off_the_images_read_back_nothing():
    others = [
        Paths.frame(2),
        Paths.cloud,
        Paths.query_point(2),
        Paths.patch_points(2, "global"),
        Paths.info(2),
        Paths.maps(2, "global"),
        Paths.summary(2, "global", "entropy"),
        Paths.consistency(2, "score"),
        Paths.query_index,
        "world",
        "world/frames/2/imagery",
        "heads/qx/global",
    ]
    assert [(image_frame(p), head_grid_query(p)) for p in others] == [(None, None)] * len(others)


def test_patch_units_are_the_subtrees_under_a_patch_scale():
    in_patches = [
        Paths.overlay_root(1),
        Paths.overlay(1, 0, "frame"),
        Paths.heads_kind(2, "global"),
        Paths.head(2, "global", 3),
    ]
    in_pixels = [
        Paths.image(1),
        Paths.marker(1, 0),
        Paths.heads_root(2),
        Paths.heads_backdrop(2),
        Paths.heads_marker(2),
    ]
    assert [in_patch_units(p) for p in in_patches] == [True] * len(in_patches)
    assert [in_patch_units(p) for p in in_pixels] == [False] * len(in_pixels)


def test_clean_path_drops_the_viewers_leading_slash():
    assert clean_path(" /world/frames/2/image/ ") == Paths.image(2)
