"""Many queries from the command line: --query-grid / --frame and --queries-file, in one forward pass."""

import pytest

from vggt_attn_rerun.api import query_grid
from vggt_attn_rerun.cli import checks
from vggt_attn_rerun.core import loading
from vggt_attn_rerun.core.tokens import TokenLayout
from vggt_attn_rerun.errors import UserError

from .helpers import FAST, entities, info_text, invoke

GRID_2X3 = [(1, 1), (1, 3), (1, 5), (3, 1), (3, 3), (3, 5)]  # band centres: rows (k + .5) * 4 / 2, cols * 6 / 3


def test_query_grid_spreads_patches_over_bands():
    layout = TokenLayout.for_image_size(3, 56, 84, 14, 4)
    got = [(q.frame, q.patch(layout)) for q in query_grid(layout, 1, 2, 3)]
    assert got == [(1, rc) for rc in GRID_2X3]
    with pytest.raises(UserError, match="does not fit the 4x6 patches"):
        query_grid(layout, 0, 5, 3)


def test_cli_query_grid_is_one_forward_pass(scene, tmp_path, forward_calls):
    out = tmp_path / "grid.rrd"
    result = invoke(scene, *FAST, "--headless", "--save", out, "--query-grid", "2x3", "--frame", "1")
    assert result.exit_code == 0, result.output
    assert "6 queries" in result.stderr
    assert forward_calls == [1]
    for i, (r, c) in enumerate(GRID_2X3):
        assert f"frame 1, patch row {r}, col {c}" in info_text(out, i)
    assert "/queries/q6/info" not in entities(out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--query-grid", "5x3"], "--query-grid 5x3: a 5x3 grid does not fit the 4x6 patches of frame 0"),
        (["--query-grid", "8by8"], "--query-grid 8by8: expected ROWSxCOLS with both >= 1, e.g. 8x8"),
        (["--query-grid", "2x2", "--frame", "3"], "--frame 3: valid frames are 0..2"),
        (["--frame", "1"], "--frame 1: --frame picks the view of --query-grid; add --query-grid RxC"),
    ],
)
def test_bad_query_grid_is_refused_before_the_model(scene, tmp_path, monkeypatch, args, message):
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the model must not load"))
    result = invoke(scene, *FAST, "--headless", "--save", tmp_path / "x.rrd", *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().startswith(f"error: {message}"), result.stderr


def test_queries_file_skips_comments_and_blank_lines(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text("# my queries\n0:p1,2\n\n  1:camera   # the camera token\n#2:p0,0\n7\n")
    assert checks.read_queries_file(path) == [
        ("0:p1,2", f"--queries-file {path} line 2"),
        ("1:camera", f"--queries-file {path} line 4"),
        ("7", f"--queries-file {path} line 6"),
    ]


def test_cli_queries_file_in_order_then_grid(scene, tmp_path, forward_calls):
    queries = tmp_path / "q.txt"
    queries.write_text("# two queries\n2:p0,1\n1:camera  # special token\n")
    out = tmp_path / "q.rrd"
    result = invoke(scene, *FAST, "--headless", "--save", out, "-q", "0:p3,5", "--queries-file", queries,
                    "--query-grid", "1x1", "--frame", "2")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert forward_calls == [1]
    expected = ["frame 0, patch row 3, col 5", "frame 2, patch row 0, col 1", "frame 1, special token `camera`",
                "frame 2, patch row 2, col 3"]  # fmt: skip
    for i, text in enumerate(expected):
        assert text in info_text(out, i)


def test_bad_line_of_queries_file_names_its_number(scene, tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the model must not load"))
    queries = tmp_path / "q.txt"
    queries.write_text("0:p1,2\n# fine\n1:p1;2\n")
    result = invoke(scene, *FAST, "--headless", "--save", tmp_path / "x.rrd", "--queries-file", queries)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: --queries-file {queries} line 3: cannot parse query '1:p1;2'")
    assert len(result.stderr.strip().splitlines()) == 1


def test_queries_file_without_queries_or_missing(scene, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n\n")
    result = invoke(scene, *FAST, "--headless", "--save", tmp_path / "x.rrd", "--queries-file", empty)
    assert result.exit_code == 2 and "no queries in it" in result.stderr
    result = invoke(scene, *FAST, "--headless", "--save", tmp_path / "x.rrd", "--queries-file", tmp_path / "nope")
    assert result.exit_code == 2 and "file does not exist" in result.stderr
