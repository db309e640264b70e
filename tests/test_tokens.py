"""Token layout conversions (core.tokens), each tested both ways."""

import pytest

from vggt_attn_rerun.core.images import FrameTransform
from vggt_attn_rerun.core.tokens import Query, TokenLayout, parse_index_list, parse_query
from vggt_attn_rerun.errors import UserError

# 3 frames of 518x392 pixels: 37 wide x 28 high patches, as VGGT sees a 4:3 photo
LAY = TokenLayout(num_frames=3, grid_h=28, grid_w=37)


def test_vggt_sizes():
    assert LAY.patch_start == 5
    assert LAY.tokens_per_frame == 5 + 28 * 37 == 1041
    assert LAY.num_tokens == 3 * 1041
    assert LAY.image_size == (392, 518)
    assert TokenLayout.for_image_size(2, 518, 518).tokens_per_frame == 1374


def test_global_index_splits_into_frame_and_local_and_back():
    assert LAY.split(2 * 1041 + 7) == (2, 7)
    assert LAY.join(2, 7) == 2 * 1041 + 7
    assert all(LAY.join(*LAY.split(t)) == t for t in range(0, LAY.num_tokens, 97))


def test_patches_are_row_major_after_the_special_tokens():
    assert LAY.patch_to_local(0, 0) == 5
    assert LAY.patch_to_local(1, 0) == 5 + 37
    assert LAY.local_to_patch(5 + 37 * 3 + 4) == (3, 4)
    assert LAY.local_to_patch(LAY.patch_to_local(27, 36)) == (27, 36)


def test_patch_centre_and_pixel_to_patch_are_inverse():
    assert LAY.patch_center(0, 0) == (7.0, 7.0)
    assert LAY.patch_center(2, 3) == (3 * 14 + 7, 2 * 14 + 7)
    assert LAY.pixel_to_patch(3 * 14 + 7, 2 * 14 + 7) == (2, 3)
    assert LAY.pixel_to_patch(13.99, 0) == (0, 0)
    assert LAY.pixel_to_patch(14.0, 0) == (0, 1)


def test_original_photo_pixel_maps_through_the_crop_and_back():
    # a 1036x1036 photo resized by 0.5 to 518x518 then centre-cropped to 518x392: 63 rows cut on top
    t = FrameTransform(1036, 1036, 0.5, 0.5, 0.0, -63.0, 518, 392)
    q = Query.from_original_pixel(LAY, 1, 500.0, 400.0, t)
    assert (q.frame, q.patch(LAY)) == (1, (int((400 * 0.5 - 63) // 14), int(250 // 14)))
    ox, oy = q.original_pixel(LAY, t)
    assert q == Query.from_original_pixel(LAY, 1, ox, oy, t)
    assert abs(ox - 500) <= 14 and abs(oy - 400) <= 14  # within one patch of the click


def test_cropped_away_pixels_are_refused_not_clamped():
    t = FrameTransform(1036, 1036, 0.5, 0.5, 0.0, -63.0, 518, 392)
    with pytest.raises(UserError, match="cropped away"):
        Query.from_original_pixel(LAY, 0, 10.0, 20.0, t)
    with pytest.raises(UserError, match=r"valid x in \[0, 1036\)"):
        Query.from_original_pixel(LAY, 0, 1036.0, 500.0, t)


def test_special_tokens_can_be_queried_and_have_no_pixel():
    cam = Query.from_special(LAY, 2, "camera")
    assert cam.local == 0 and cam.token(LAY) == 2 * 1041
    assert cam.patch(LAY) is None and cam.model_pixel(LAY) is None
    assert Query.from_special(LAY, 0, "register_3").local == 4
    assert cam.name(LAY) == "f2_camera"


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: LAY.split(3 * 1041), r"valid global tokens are 0\.\.3122"),
        (lambda: LAY.split(-1), r"valid global tokens are 0\.\.3122"),
        (lambda: LAY.patch_to_local(28, 0), r"valid rows are 0\.\.27, cols 0\.\.36"),
        (lambda: LAY.local_to_patch(2), r"patches are 5\.\.1040"),
        (lambda: LAY.check_frame(3), r"valid frames are 0\.\.2"),
        (lambda: LAY.pixel_to_patch(518, 0), r"valid x in \[0, 518\)"),
        (lambda: LAY.special_index("register_4"), r"register_0\.\.register_3"),
    ],
)
def test_out_of_range_input_names_the_valid_range(call, match):
    with pytest.raises(UserError, match=match):
        call()


def test_parse_query_accepts_every_form():
    t = [FrameTransform.identity(518, 392)] * 3
    assert parse_query("1:p2,3", LAY) == Query.from_patch(LAY, 1, 2, 3)
    assert parse_query("1:patch=2,3", LAY).local == LAY.patch_to_local(2, 3)
    assert parse_query("2:100,50", LAY, t).patch(LAY) == (50 // 14, 100 // 14)
    assert parse_query("2:100.5,50.25", LAY).patch(LAY) == (3, 7)
    assert parse_query("0:camera", LAY).local == 0
    assert parse_query("1500", LAY).token(LAY) == 1500


@pytest.mark.parametrize("text", ["", "x", "1:", "1:2", "1:p2", "a:1,2", "1:2,3,4", "1:foo bar"])
def test_malformed_queries_say_what_is_valid(text):
    with pytest.raises(UserError, match="expected FRAME:X,Y"):
        parse_query(text, LAY)


def test_parse_index_list_ranges_lists_all_and_last():
    assert parse_index_list("0-3,7", 24) == (0, 1, 2, 3, 7)
    assert parse_index_list("all", 4) == (0, 1, 2, 3)
    assert parse_index_list("-1", 24) == (23,)
    assert parse_index_list("23,0,0", 24) == (0, 23)
    with pytest.raises(UserError, match=r"valid blocks are 0\.\.23"):
        parse_index_list("20-24", 24)
    with pytest.raises(UserError, match="cannot parse blocks"):
        parse_index_list("1..3", 24)
