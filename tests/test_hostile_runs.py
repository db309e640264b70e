"""Run files crafted to break the loader: refused in one line, before their arrays are read.

Every file here is generated from a small genuine run by replacing, dropping or forging members.
The importer must end such a file with ONE ``error:`` line on stderr, exit 1 and nothing on
stdout; a file that is not a run file (or only pretends to be, with a forged ``__format__``)
exits 66 so that the viewer tries its other importers.
"""

import io
import json
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rerun as rr
import torch

from vggt_attn_rerun.cli import importer
from vggt_attn_rerun.core.capture import capture
from vggt_attn_rerun.core.images import images_from_tensor
from vggt_attn_rerun.core.tokens import Query
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.io.checked_npz import read_bound
from vggt_attn_rerun.io.runfile import FORMAT_NAME, is_run_file, load_run, save_run

S, H, W = 2, 28, 42  # 2 frames of 2x3 patches: P = 5 + 6 = 11 tokens per frame


@pytest.fixture(scope="module")
def good(tiny_model, tmp_path_factory):
    images = images_from_tensor(torch.rand(S, 3, H, W, generator=torch.Generator().manual_seed(0)))
    queries = [Query(0, 6, "first"), Query(1, 7, "second")]
    res = capture(tiny_model, images.tensor, queries, blocks=[0, 1], kinds=["global", "frame"])
    return save_run(tmp_path_factory.mktemp("good") / "good.npz", res, images)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, allow_pickle=True)
    return buf.getvalue()


def _members(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {name: z[name] for name in z.files}


def _rewrite(good, out, **changes):
    """A copy of ``good`` with members replaced (array or raw .npy bytes) or dropped (None)."""
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            name = item.filename.removesuffix(".npy")
            if name not in changes:
                zout.writestr(item.filename, zin.read(item.filename))
        for name, value in changes.items():
            if value is not None:
                zout.writestr(f"{name}.npy", value if isinstance(value, bytes) else _npy(value))
    return out


def _forged_header(shape, dtype="<f4", data=b"\0" * 64) -> bytes:
    """.npy bytes whose header declares ``shape`` but which hold only ``data``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def _hostile(m: dict[str, np.ndarray]) -> dict[str, dict]:
    """Name -> member changes, each making the good run a malformed one."""
    probs, pose = m["probs_global"], m["pred_pose_enc"]
    return {
        "short label list": {"query_labels": m["query_labels"][:1]},
        "transforms with 7 columns": {"transforms": m["transforms"][:, :7]},
        "transform with a zero scale": {"transforms": m["transforms"] * np.array([1, 1, 0, 1, 1, 1, 1, 1])},
        "transforms of one frame too few": {"transforms": m["transforms"][:1]},
        "pose of 8 numbers": {"pred_pose_enc": pose[..., :8]},
        "points with 2 coordinates": {"pred_world_points": m["pred_world_points"][..., :2]},
        "depth of the wrong size": {"pred_depth": m["pred_depth"][:, :, :14]},
        "zero heads": {"num_heads": np.array(0), "probs_global": probs[:, :, :0], "probs_frame": probs[:, :, :0]},
        "zero queries": {
            "queries": m["queries"][:0],
            "query_labels": m["query_labels"][:0],
            "probs_global": probs[:, :0],
            "probs_frame": probs[:, :0],
        },
        "zero blocks": {"blocks": m["blocks"][:0], "probs_global": probs[:0], "probs_frame": probs[:0]},
        "missing rows of one kind": {"probs_frame": None},
        "missing layout": {"layout": None},
        "unknown kind": {"kinds": np.array(["global", "lobal"])},
        "query outside the layout": {"queries": np.array([[0, 6], [1, 10**6]])},
        "negative block": {"blocks": np.array([0, -1])},
        "object array (pickle)": {"layout": np.array([2, 2, 3, 14, 4], dtype=object)},
        "huge declared layout": {"layout": _forged_header((10**9, 5), "<i8")},
        "huge declared rows": {"probs_global": _forged_header((10**4, 2, 4, 2, 11))},
        "grid too large for the rows": {"layout": np.array([2, 2000, 3000, 14, 4])},
        "NaN probabilities": {"probs_global": np.full_like(probs, np.nan)},
        "rows stored as float16 but said float32": {"probs_global": probs.astype(np.float16)},
        "dtypes not JSON": {"dtypes": np.array("{not json")},
        "truncated zip member": {"images_uint8": _npy(m["images_uint8"])[:-10]},
        "images of another size": {"images_uint8": m["images_uint8"][:, :14]},
    }


def _cases(good, tmp_path):
    m = _members(good)
    return {name: _rewrite(good, tmp_path / f"{i}.npz", **ch) for i, (name, ch) in enumerate(_hostile(m).items())}


def _run_importer(path, capfdbinary) -> tuple[int, bytes, bytes]:
    code = importer.main([str(path), "--application-id", "vggt_attn_rerun"])
    out, err = capfdbinary.readouterr()
    return code, out, err


def test_every_malformed_run_file_is_refused_in_one_line_with_nothing_on_stdout(good, tmp_path, capfdbinary):
    cases = _cases(good, tmp_path)
    assert len(cases) >= 20
    for name, path in cases.items():
        assert is_run_file(path), name
        code, out, err = _run_importer(path, capfdbinary)
        lines = err.decode().splitlines()
        assert (code, out) == (1, b""), f"{name}: exit {code}, {len(out)} bytes on stdout, {err!r}"
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{name}: {err!r}"
        assert "Traceback" not in err.decode()


def test_load_run_names_what_is_wrong(good, tmp_path):
    cases = _cases(good, tmp_path)
    expect = {
        "short label list": "query_labels",
        "transforms with 7 columns": "transforms",
        "pose of 8 numbers": "pred_pose_enc",
        "points with 2 coordinates": "pred_world_points",
        "zero heads": "num_heads holds 0",
        "zero queries": "no queries",
        "zero blocks": "at least one block",
        "missing layout": "'layout' is missing",
        "object array (pickle)": "dtype object",
        "huge declared layout": "declares",
        "NaN probabilities": "NaN",
    }
    for name, pattern in expect.items():
        with pytest.raises(UserError, match=pattern):
            load_run(cases[name])


def test_a_run_without_cameras_or_points_is_refused_by_the_importer(good, tmp_path, capfdbinary):
    no_pose = _rewrite(good, tmp_path / "no_pose.npz", pred_pose_enc=None)
    no_points = _rewrite(
        good, tmp_path / "no_points.npz", pred_world_points=None, pred_depth=None, pred_world_points_conf=None
    )
    load_run(no_pose)  # a valid run file: only the viewer needs cameras and points
    for path, what in ((no_pose, "camera poses"), (no_points, "no point map")):
        code, out, err = _run_importer(path, capfdbinary)
        assert (code, out) == (1, b"") and err.decode().startswith("error: ") and what in err.decode()


def test_a_run_without_world_points_is_shown_from_its_depth(good, tmp_path, capfdbinary):
    path = _rewrite(good, tmp_path / "depth_only.npz", pred_world_points=None, pred_world_points_conf=None)
    code, out, err = _run_importer(path, capfdbinary)
    assert code == 0, err.decode()
    assert out.startswith(b"RRF2")  # an .rrd stream


def test_foreign_files_exit_66(good, tmp_path, capfdbinary):
    forged = tmp_path / "forged.npz"
    with zipfile.ZipFile(forged, "w") as z:  # declares a 64 GB format name
        z.writestr("__format__.npy", _forged_header((10**9,), "<U16", b"x" * 64))
        z.writestr("format_version.npy", _npy(np.array("1")))
    vector = tmp_path / "vector.npz"
    np.savez(vector, __format__=np.array([FORMAT_NAME]), format_version=np.array("1"))
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.zeros(3))
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    for path in (forged, vector, plain, text, tmp_path / "missing.npz"):
        tracemalloc.start()
        try:
            code, out, _ = _run_importer(path, capfdbinary)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert (code, out) == (rr.EXTERNAL_IMPORTER_INCOMPATIBLE_EXIT_CODE, b""), path
        assert code == 66
        assert peak < 8 << 20, f"{path.name}: the 'is this mine' check allocated {peak} bytes"


def test_a_zip_bomb_is_refused_before_its_rows_are_allocated(good, tmp_path):
    """A few hundred KB that declare 256 MiB of (consistent, all-zero) rows."""
    m = _members(good)
    rows = 256 << 20
    # layout with a large grid so that the bomb's rows have exactly the declared shape
    grid_w = rows // 4 // (2 * 2 * 4 * 2) // 2
    layout = np.array([2, 2, grid_w, 14, 4])
    p = 5 + 2 * grid_w
    shape = (2, 2, 4, 2, p)
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zout:
        for item in zin.infolist():
            if item.filename not in ("layout.npy", "probs_global.npy", "probs_frame.npy"):
                zout.writestr(item.filename, zin.read(item.filename))
        zout.writestr("layout.npy", _npy(layout))
        for kind in ("global", "frame"):
            with zout.open(f"probs_{kind}.npy", "w", force_zip64=True) as f:
                buf = io.BytesIO()
                np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
                f.write(buf.getvalue())
                zeros, left = bytes(8 << 20), 4 * int(np.prod(shape))
                while left:
                    f.write(zeros[: min(left, len(zeros))])
                    left -= min(left, len(zeros))
    size = bomb.stat().st_size
    assert size < 4 << 20 and read_bound(size) < 2 * rows  # small file, large claim
    assert json.loads(str(m["dtypes"]))["probs_global"] == "float32"
    tracemalloc.start()
    try:
        counted = r"\(\d+\.\d MiB with what using them allocates\)"
        with pytest.raises(
            UserError, match=rf"declares 5\d\d\.\d MiB of arrays {counted}, over the \d+\.\d MiB allowed"
        ):
            load_run(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"refusing the bomb allocated {peak} bytes"


@pytest.mark.slow
def test_the_importer_script_refuses_a_malformed_file_in_one_line(good, tmp_path):
    bad = _rewrite(good, tmp_path / "bad.npz", query_labels=_members(good)["query_labels"][:1])
    proc = subprocess.run([sys.executable, "-m", "vggt_attn_rerun.cli.importer", str(bad)], capture_output=True)
    assert proc.returncode == 1 and proc.stdout == b""
    assert proc.stderr.decode().count("\n") == 1 and proc.stderr.startswith(b"error: run file")


def test_the_read_bound_is_the_one_the_docs_state():
    mib, gib = 1 << 20, 1 << 30
    assert read_bound(0) == read_bound(mib) == 64 * mib  # the larger of 64 MiB ...
    assert read_bound(10 * mib) == 640 * mib  # ... and 64x the file size ...
    assert read_bound(1 * gib) == 4 * gib  # ... at most 4 GiB
    docs = " ".join((Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text().split())
    assert "the larger of 64 MiB and 64x the file's size (at most 4 GiB" in docs


def test_load_extra_refuses_malformed_extras(good, tmp_path):
    from vggt_attn_rerun.io.runfile import load_extra

    for name, changes, match in [
        ("list.npz", {"extra_json": np.array("[1, 2]")}, "extra_json is not a JSON object"),
        ("text.npz", {"extra_json": np.array("{nope")}, "extra_json"),
        ("pickle.npz", {"extra_x": np.array([object()], dtype=object)}, "dtype object"),
        ("forged.npz", {"extra_x": _forged_header((10**10,))}, "declares"),
    ]:
        with pytest.raises(UserError, match=match):
            load_extra(_rewrite(good, tmp_path / name, **changes))


# -- rows that cannot be attention probabilities, and values the viewer leaves out --------------------


def _one_line(err: bytes, prefix: str) -> str:
    lines = err.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    return lines[0]


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        (lambda p: np.where(np.arange(p.shape[-1]) == 3, -p, p), "negative probability"),
        (lambda p: p * 0, "summing to 0"),
        (lambda p: p * 0.5, "summing to 0.5"),
        (lambda p: p * 1e6, "summing to 1e+06"),
    ],
    ids=["negative", "sum 0", "sum 0.5", "sum 1e6"],
)
def test_rows_that_are_not_probabilities_are_refused_in_one_line(good, tmp_path, capfdbinary, edit, said):
    probs = _members(good)["probs_global"]
    path = _rewrite(good, tmp_path / "edited.npz", probs_global=edit(probs).astype(probs.dtype))
    code, out, err = _run_importer(path, capfdbinary)
    assert (code, out) == (1, b"")
    assert said in _one_line(err, "error: run file")


@pytest.mark.parametrize("member", ["pred_world_points", "pred_world_points_conf", "pred_depth", "pred_depth_conf"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_points_depth_or_confidence_are_shown_with_one_warning_line(good, tmp_path, capfdbinary,
                                                                               member, value):  # fmt: skip
    a = _members(good)[member].copy()
    a.reshape(-1)[[0, 5, 7]] = value
    path = _rewrite(good, tmp_path / "edited.npz", **{member: a})
    code, out, err = _run_importer(path, capfdbinary)
    assert code == 0 and out.startswith(b"RRF2")
    line = _one_line(err, "warning: run file")
    assert f"{member} holds 3 NaN or infinite values of {a.size}" in line


def test_a_degenerate_camera_is_one_warning_line(good, tmp_path, capfdbinary):
    pose = _members(good)["pred_pose_enc"].copy()
    pose[0, 1, 7:] = 0  # a zero field of view for view 1
    code, out, err = _run_importer(_rewrite(good, tmp_path / "cam.npz", pred_pose_enc=pose), capfdbinary)
    assert code == 0 and out.startswith(b"RRF2")
    assert "Degenerate camera in view 1" in _one_line(err, "warning: ")


def test_a_run_file_cut_short_is_one_error_line(good, tmp_path, capfdbinary):
    cut = tmp_path / "cut.npz"
    data = good.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert is_run_file(cut)
    code, out, err = _run_importer(cut, capfdbinary)
    assert (code, out) == (1, b"")
    assert "is damaged: its end is missing" in _one_line(err, f"error: run file {cut}")


def test_a_cut_short_file_of_another_program_is_left_to_other_importers(tmp_path, capfdbinary):
    other = tmp_path / "other.npz"
    np.savez_compressed(other, __format__=np.array("another/format"), data=np.arange(10**5))
    data = other.read_bytes()
    other.write_bytes(data[: len(data) // 2])
    assert not is_run_file(other)
    assert _run_importer(other, capfdbinary)[:2] == (rr.EXTERNAL_IMPORTER_INCOMPATIBLE_EXIT_CODE, b"")


# -- every member counts against the bound; so does what logging the rows allocates ------------------


def _compressible_npy(nbytes: int) -> bytes:
    return _npy(np.zeros(nbytes // 4, np.float32))


@pytest.mark.parametrize("name", ["extra_unused.npy", "unused.bin"])
def test_an_unreferenced_member_counts_against_the_bound(good, tmp_path, name):
    path = tmp_path / "padded.npz"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            zout.writestr(item.filename, zin.read(item.filename))
        zout.writestr(name, _compressible_npy(80 << 20))  # 80 MiB of zeros: a few hundred KB
    assert path.stat().st_size < 1 << 20
    with pytest.raises(UserError, match=r"declares 8\d\.\d MiB of arrays.*, over the 64\.0 MiB allowed"):
        load_run(path)


def test_rows_count_with_what_logging_them_allocates(good, tmp_path):
    """One-hot rows compress ~100x: 16 MiB of one query's rows fit in a 64 MiB bound, not with
    the float64 copies that logging that query makes."""
    blocks = (8 << 20) // (4 * S * 11 * 4)  # 8 MiB of rows per kind, one query
    rows = np.zeros((blocks, 1, 4, S, 11), np.float32)
    rows[..., 0, 5] = 1  # every row on one key
    m = _members(good)
    path = _rewrite(good, tmp_path / "long.npz", blocks=np.arange(blocks), queries=m["queries"][:1],
                    query_labels=m["query_labels"][:1], probs_global=rows, probs_frame=rows)  # fmt: skip
    assert path.stat().st_size < 2 << 20
    counted = r"\(8\d\.\d MiB with what using them allocates\)"
    with pytest.raises(UserError, match=rf"declares 16\.\d MiB of arrays {counted}, over the 64\.0 MiB allowed"):
        load_run(path)
    load_run(path, max_bytes=1 << 30)  # a valid run: only its size is refused
