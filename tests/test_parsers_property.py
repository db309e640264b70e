"""Property tests: the token/pixel conversions invert each other on random layouts and
preprocessing transforms, and the parsers of user text fail only with UserError."""

import math

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from vggt_attn_rerun.core.images import FrameTransform
from vggt_attn_rerun.core.tokens import Query, TokenLayout, parse_index_list, parse_query
from vggt_attn_rerun.errors import UserError

# Modest example counts: these run beside other suites on two shared cores.
FEW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

layouts = st.builds(
    TokenLayout,
    num_frames=st.integers(1, 8),
    grid_h=st.integers(1, 40),
    grid_w=st.integers(1, 40),
    patch_size=st.integers(1, 20),
    num_registers=st.integers(0, 8),
)


@st.composite
def layout_and_token(draw):
    layout = draw(layouts)
    return layout, draw(st.integers(0, layout.num_tokens - 1))


@st.composite
def layout_and_transforms(draw):
    """A layout and, per frame, a transform from a random photo onto its model image.

    Like images.load_images: scale and offset arbitrary (a crop gives negative offsets, padding
    positive ones), the model image the layout's size.
    """
    layout = draw(layouts)
    model_h, model_w = layout.image_size
    transforms = []
    for _ in range(layout.num_frames):
        orig_w, orig_h = draw(st.integers(1, 3000)), draw(st.integers(1, 3000))
        sx = draw(st.floats(0.05, 20.0))
        sy = draw(st.one_of(st.just(sx), st.floats(0.05, 20.0)))
        ox = draw(st.floats(-0.5 * orig_w * sx, model_w))
        oy = draw(st.floats(-0.5 * orig_h * sy, model_h))
        transforms.append(FrameTransform(orig_w, orig_h, sx, sy, ox, oy, model_w, model_h))
    return layout, transforms


# -- the layout's own conversions ------------------------------------------------------------------


@FEW
@given(layout_and_token())
def test_token_frame_local_patch_pixel_round_trip(case):
    layout, token = case
    frame, local = layout.split(token)
    assert 0 <= frame < layout.num_frames and 0 <= local < layout.tokens_per_frame
    assert layout.join(frame, local) == token
    assert Query.from_token(layout, token).token(layout) == token
    if not layout.is_patch(local):
        assert local < layout.patch_start
        with pytest.raises(UserError):
            layout.local_to_patch(local)
        return
    row, col = layout.local_to_patch(local)
    assert layout.patch_to_local(row, col) == local
    x, y = layout.patch_center(row, col)
    assert layout.pixel_to_patch(x, y) == (row, col)
    q = Query.from_patch(layout, frame, row, col)
    assert q.token(layout) == token and q.patch(layout) == (row, col)
    assert Query.from_model_pixel(layout, frame, x, y).token(layout) == token


@FEW
@given(layouts, st.floats(0, 1, exclude_max=True), st.floats(0, 1, exclude_max=True))
def test_every_model_pixel_lies_in_its_patch(layout, fx, fy):
    h, w = layout.image_size
    x, y = fx * w, fy * h
    row, col = layout.pixel_to_patch(x, y)
    ps = layout.patch_size
    assert col * ps <= x < (col + 1) * ps and row * ps <= y < (row + 1) * ps


@FEW
@given(layout_and_transforms(), st.data())
def test_original_pixel_round_trip(case, data):
    layout, transforms = case
    frame = data.draw(st.integers(0, layout.num_frames - 1))
    t = transforms[frame]
    # Pixels as a user types them: fixed-point text, which is what the parser reads back.
    x = float(f"{data.draw(st.floats(0, t.orig_w, exclude_max=True)):.3f}")
    y = float(f"{data.draw(st.floats(0, t.orig_h, exclude_max=True)):.3f}")
    assume(x < t.orig_w and y < t.orig_h)
    mx, my = t.original_to_model(x, y)
    back = t.model_to_original(mx, my)
    assert math.isclose(back[0], x, rel_tol=1e-9, abs_tol=1e-6)
    assert math.isclose(back[1], y, rel_tol=1e-9, abs_tol=1e-6)

    h, w = layout.image_size
    text = f"{frame}:{x:.3f},{y:.3f}"
    if not (0 <= mx < w and 0 <= my < h):
        with pytest.raises(UserError, match="cropped away"):
            parse_query(text, layout, transforms)
        return
    q = parse_query(text, layout, transforms)
    assert q.frame == frame and q.patch(layout) == layout.pixel_to_patch(mx, my)
    # The query's marker (its patch centre), taken back to the photo and forward again, is the centre.
    cx, cy = q.model_pixel(layout)
    ox, oy = q.original_pixel(layout, t)
    fx, fy = t.original_to_model(ox, oy)
    assert math.isclose(fx, cx, rel_tol=1e-9, abs_tol=1e-6) and math.isclose(fy, cy, rel_tol=1e-9, abs_tol=1e-6)


# -- formatted valid queries parse back to what they say -------------------------------------------


@FEW
@given(layout_and_token(), st.sampled_from(["{f}:p{r},{c}", "{f}:patch={r},{c}", " {f} : p {r} , {c} "]))
def test_formatted_queries_round_trip(case, patch_form):
    layout, token = case
    frame, local = layout.split(token)
    assert parse_query(str(token), layout).token(layout) == token
    assert parse_query(f" {token} ", layout).token(layout) == token
    if layout.is_patch(local):
        r, c = layout.local_to_patch(local)
        assert parse_query(patch_form.format(f=frame, r=r, c=c), layout).token(layout) == token
        x, y = layout.patch_center(r, c)
        assert parse_query(f"{frame}:{x:.2f},{y:.2f}", layout).token(layout) == token  # model pixels
    else:
        name = layout.special_names[local]
        assert parse_query(f"{frame}:{name}", layout).token(layout) == token
        assert parse_query(f"{frame}:{name.upper()}", layout).token(layout) == token


# -- arbitrary text: UserError or a valid answer, never another exception ----------------------------

FIXED = TokenLayout(3, 4, 6, 14, 4)
FIXED_MAPS = [FrameTransform(84, 56, 1.0, 1.0, 0.0, 0.0, 84, 56)] * 3
NUMBER = r"-?[0-9٣]{1,6}(\.[0-9]{0,4})?"  # includes a non-ASCII digit, which \d matches
query_like = st.one_of(
    st.text(max_size=40),
    st.from_regex(rf"\A-?[0-9]{{1,4}}\s?:\s?(p|patch=|P|)\s?{NUMBER}\s?,\s?{NUMBER}\Z"),
    st.from_regex(r"\A-?[0-9]{1,3}:[A-Za-z_]{0,12}[0-9]{0,3}\Z"),
    st.from_regex(rf"\A\s*{NUMBER}\s*\Z"),
)


@settings(max_examples=200, deadline=None)
@given(query_like, st.booleans())
def test_parse_query_fails_only_with_user_error(text, with_maps):
    try:
        q = parse_query(text, FIXED, FIXED_MAPS if with_maps else None)
    except UserError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert 0 <= q.token(FIXED) < FIXED.num_tokens


index_like = st.one_of(
    st.text(max_size=30),
    st.from_regex(r"\A(\s?-?[0-9٣]{1,3}(\s?-\s?[0-9]{1,3})?\s?,?){1,4}\Z"),
    st.sampled_from(["all", "ALL", "*", "", " ", "-0", "--1", "0-", "-1-2"]),
)


@settings(max_examples=200, deadline=None)
@given(index_like, st.integers(1, 64))
def test_parse_index_list_fails_only_with_user_error(text, count):
    try:
        out = parse_index_list(text, count)
    except UserError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert list(out) == sorted(set(out)) and all(0 <= i < count for i in out)


@FEW
@given(st.integers(1, 64).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1), min_size=1))))
def test_parse_index_list_round_trips_lists_and_ranges(case):
    count, chosen = case
    ordered = sorted(chosen)
    assert parse_index_list(",".join(map(str, ordered)), count) == tuple(ordered)
    assert parse_index_list(" , ".join(map(str, reversed(ordered))), count) == tuple(ordered)
    lo, hi = ordered[0], ordered[-1]
    assert parse_index_list(f"{lo}-{hi}", count) == tuple(range(lo, hi + 1))
    assert parse_index_list("-1", count) == (count - 1,)
    assert parse_index_list("all", count) == tuple(range(count))


# -- integers of any length: UserError with the syntax, never int()'s ValueError -----------------------

long_digits = st.integers(19, 6000).map(lambda n: "7" * n)
QUERY_TEMPLATES = ["{n}", "{n}:camera", "0:p{n},1", "0:p1,{n}", "0:{n},1", "1:patch={n},{n}", "{n}:p1,1"]


@FEW
@given(long_digits, st.sampled_from(QUERY_TEMPLATES), st.booleans())
def test_queries_with_huge_integers_fail_with_user_error(digits, template, with_maps):
    text = template.format(n=digits)
    try:
        q = parse_query(text, FIXED, FIXED_MAPS if with_maps else None)
    except UserError as e:
        assert "\n" not in str(e)
        return
    assert 0 <= q.token(FIXED) < FIXED.num_tokens  # a huge pixel coordinate may parse as a float


@FEW
@given(long_digits, st.sampled_from(["{n}", "0-{n}", "{n}-{n}", "-{n}", "1,{n},2"]), st.integers(1, 64))
def test_index_lists_with_huge_integers_fail_with_user_error(digits, template, count):
    with pytest.raises(UserError, match="cannot parse|out of range"):
        parse_index_list(template.format(n=digits), count)


@FEW
@given(st.one_of(st.text(max_size=30), long_digits.map(lambda d: f"{d}x2"),
                 st.from_regex(r"\A\s*[0-9]{1,8}\s*[xX*]\s*[0-9]{1,8}\s*\Z")),
       st.one_of(st.none(), st.integers(0, 9)))  # fmt: skip
def test_query_grid_text_fails_only_with_user_error(text, frame):
    from vggt_attn_rerun.cli.checks import parse_query_grid

    try:
        frame_, rows, cols = parse_query_grid(text, frame)
    except UserError as e:
        assert str(e).startswith("--query-grid ") and str(e).endswith("expected ROWSxCOLS with both >= 1, e.g. 8x8")
        return
    assert rows >= 1 and cols >= 1 and frame_ == (frame or 0)


@FEW
@given(st.lists(st.text(max_size=20), max_size=8), st.sampled_from(["\n", "\r\n", "\r"]), st.booleans())
def test_queries_file_lines_are_the_text_before_comments(tmp_path_factory, lines, newline, bom):
    from vggt_attn_rerun.cli.checks import read_queries_file

    path = tmp_path_factory.mktemp("q") / "q.txt"
    text = newline.join(lines)
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode("utf-8", "surrogatepass"))
    expected = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    expected = [q for q in expected if q]
    try:
        got = [q for q, _ in read_queries_file(path)]
    except UserError as e:
        assert expected == [] or "cannot read" in str(e)
        return
    assert got == expected
