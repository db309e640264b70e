"""Bad queries, blocks, kinds, heads, sizes and numbers on the command line: one `error: ...` line,
exit code 2, no traceback, reported before the model loads."""

import pytest

from .helpers import FAST, HUGE, assert_error, assert_nothing_saved, invoke, save_args

# -- queries, blocks, kinds, heads ----------------------------------------------------------------


@pytest.mark.parametrize(
    "query, message",
    [
        ("87", "token 87 is out of range: valid global tokens are 0..86"),
        ("0:84,10", "pixel (84, 10) is outside photo 0 (84x56): valid x in [0, 84), y in [0, 56)"),
        ("0:p4,0", "patch (row 4, col 0) is out of range: valid rows are 0..3, cols 0..5"),
        ("3:p0,0", "frame 3 is out of range: valid frames are 0..2"),
        ("-1:camera", "frame -1 is out of range: valid frames are 0..2"),
    ],
)
def test_out_of_range_query(scene, no_model, query, message):
    assert_error(invoke(scene, *FAST, "-q", query), 2, f"--query {query}: {message}")


@pytest.mark.parametrize("query", ["0:", "a:1,2", "0:1,2,3", "0:p1", "0:p1,2x", "1.5", "0:1;2"])
def test_malformed_query(scene, no_model, query):
    assert_error(invoke(scene, *FAST, "-q", query), 2, prefix=f"--query {query}: cannot parse query {query!r}")


@pytest.mark.parametrize("blocks", ["x", "1-", "1..3", "0,,2", "3-1-2"])
def test_malformed_blocks(scene, no_model, blocks):
    message = f"cannot parse --blocks {blocks!r}: use e.g. 0-23, 0,12,23, -1 (the last) or all"
    assert_error(invoke(scene, *FAST, "--blocks", blocks), 2, message)


def test_unknown_kind(scene, no_model):
    result = invoke(scene, *FAST, "--kinds", "global,cross")
    assert_error(result, 2, "unknown attention kind 'cross': valid kinds are frame, global")


# Checked once the model is known (a custom model may have other depths), still bad input: exit 2.


def test_block_not_in_model(scene, out):
    result = invoke(scene, *FAST, "--blocks", "2-7", *save_args(out))
    assert_error(result, 2, "--blocks 2-7: blocks '2-7' out of range: valid blocks are 0..3")
    assert_nothing_saved(out)


def test_head_not_in_model(scene, out):
    result = invoke(scene, *FAST, "--focus-head", "9", *save_args(out))
    assert_error(result, 2, "--focus-head 9 does not exist: the model has 4 heads, valid are 0..3")
    assert_nothing_saved(out)


def test_blocks_beyond_the_model(scene, out):
    result = invoke(scene, *FAST, "--blocks", "10", *save_args(out))
    assert_error(result, 2, "--blocks 10: blocks '10' out of range: valid blocks are 0..3")


def test_focus_block_not_in_model(scene, out):
    result = invoke(scene, *FAST, "--focus-block", "9", *save_args(out))
    assert_error(result, 2, "--focus-block 9 does not exist: valid blocks are 0..3")


def test_focus_block_not_captured(scene, out):
    result = invoke(scene, *FAST, "--blocks", "0,3", "--focus-block", "2", *save_args(out))
    assert_error(result, 2, "--focus-block 2 was not captured: captured blocks are 0,3 (see --blocks)")


@pytest.mark.parametrize(
    "args, replacement",
    [
        (["--block", "2"], "--focus-block N"),
        (["--head", "1"], "--focus-head N"),
        (["--per-view-normalize"], "--scale view"),
    ],
)
def test_a_former_spelling_fails_in_one_line_naming_its_replacement(scene, out, args, replacement):
    line = assert_error(invoke(scene, *FAST, *args, *save_args(out)), 2, prefix=f"{args[0]} is no longer an option")
    assert f"use {replacement}" in line
    assert_nothing_saved(out)


def test_unknown_option_is_a_usage_error(scene):
    result = invoke(scene, "--frobnicate")
    line = assert_error(result, 2, prefix="No such option")  # click's wording varies by version
    assert "--frobnicate" in line and line.endswith("(see vggt-attn-rerun --help)")


def test_missing_images_is_a_usage_error():
    assert_error(invoke(), 2, "Missing argument 'IMAGES...'. (see vggt-attn-rerun --help)")


# -- numbers: finite floats, integers of any length, devices -----------------------------------------


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--conf-threshold", "nan"), ("--conf-threshold", "inf"), ("--conf-percentile", "nan"),
     ("--conf-percentile", "-inf")],
)  # fmt: skip
def test_non_finite_numbers_are_refused_before_the_model(scene, no_model, flag, value):
    line = assert_error(invoke(scene, *FAST, flag, value), 2, prefix=f"Invalid value for '{flag}': ")
    assert f"{value!r} is not a finite number" in line


@pytest.mark.parametrize(
    "args",
    [["-q", f"0:p{HUGE},1"], ["-q", HUGE], ["-q", f"{HUGE}:camera"], ["--blocks", HUGE], ["--blocks", f"0-{HUGE}"],
     ["--query-grid", f"{HUGE}x2"], ["--focus-head", HUGE], ["--frame", HUGE, "--query-grid", "2x2"]],
)  # fmt: skip
def test_integers_with_thousands_of_digits_are_bad_input(scene, no_model, args):
    line = assert_error(invoke(scene, *FAST, *args), 2)
    assert "unexpected" not in line
    assert any(hint in line for hint in ("expected", "use e.g.", "not a valid integer")), line[:200]


def test_device_meta_is_refused(scene, no_model):
    result = invoke(scene, *FAST, "--device", "meta")
    valid = "valid are auto, cpu, cuda, cuda:N, mps"
    assert_error(result, 2, f"--device meta: cannot run the model on meta devices; {valid}")


# -- queries files as editors write them; many equal queries -----------------------------------------


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-8"])
@pytest.mark.parametrize("newline", ["\r\n", "\n", "\r"])
def test_queries_file_with_bom_and_any_line_ends(tmp_path, encoding, newline):
    from vggt_attn_rerun.cli.checks import read_queries_file

    path = tmp_path / "q.txt"
    path.write_bytes(newline.join(["0:p1,2", "# comment", "1:camera  # the camera"]).encode(encoding))
    assert [q for q, _ in read_queries_file(path)] == ["0:p1,2", "1:camera"]


def test_queries_file_with_bom_and_crlf_runs(scene, tmp_path, out):
    path = tmp_path / "q.txt"
    path.write_bytes("\ufeff0:p1,2\r\n2:p3,5\r\n".encode())
    result = invoke(scene, *FAST, "--queries-file", path, *save_args(out))
    assert result.exit_code == 0, result.output
    assert "2 queries" in result.stderr


def test_ten_thousand_equal_queries_give_one_warning(scene, tmp_path, out):
    path = tmp_path / "q.txt"
    path.write_text("0:p0,0\n" * 10_000)
    result = invoke(scene, *FAST, "--queries-file", path, *save_args(out))
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: 9999 queries name a token already queried (query '0:p0,0' is the same token as '0:p0,0', ...): "
        "each is used once"
    ]
    assert "1 query," in result.stderr
