"""What a user sees when something is wrong: one `error: ...` line, the right exit code, no traceback,
and never a partial file under the name given to --save."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vggt_attn_rerun.api import record, runner
from vggt_attn_rerun.cli import main as cli
from vggt_attn_rerun.core import loading, resources
from vggt_attn_rerun.core.images import IMAGE_SUFFIXES
from vggt_attn_rerun.testing import synthetic_scene
from vggt_attn_rerun.testing.tiny_model import TinyVGGT

FAST = ["--model", "tiny", "--image-size", "84"]
SUFFIXES = ", ".join(IMAGE_SUFFIXES)
READABLE = ", ".join(s.lstrip(".") for s in IMAGE_SUFFIXES)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out" / "attn.rrd"


@pytest.fixture
def no_model(monkeypatch):
    """These problems must be reported before the (slow, large) model load."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the command line was checked")

    monkeypatch.setattr(loading, "load_model", refuse)


def invoke(*args):
    return CliRunner().invoke(cli.cli, [str(a) for a in args])


def assert_error(result, code: int, message: str | None = None, *, prefix: str | None = None) -> str:
    """Exactly one line on stderr, `error: ...`, the exit code, and no traceback anywhere."""
    assert "Traceback" not in result.output, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert result.exit_code == code, result.output
    if message is not None:
        assert lines[0] == f"error: {message}"
    if prefix is not None:
        assert lines[0].startswith(f"error: {prefix}"), lines[0]
    return lines[0]


def assert_nothing_saved(out: Path) -> None:
    """Neither the final file nor a partial one exists (the folder may hold only what was there)."""
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    assert leftovers == []


def save_args(out: Path) -> list:
    out.parent.mkdir(exist_ok=True)
    return ["--headless", "--save", out]


# -- image paths and files ------------------------------------------------------------------------


def test_missing_file(tmp_path, no_model):
    missing = tmp_path / "nope.png"
    result = invoke(missing, *FAST)
    assert_error(result, 2, f"image path {missing} does not exist: give an image file, a folder or a glob pattern")


def test_missing_folder(tmp_path, no_model):
    missing = tmp_path / "photos"
    result = invoke(f"{missing}/", *FAST)
    assert_error(result, 2, f"image path {missing}/ does not exist: give an image file, a folder or a glob pattern")


def test_empty_folder(tmp_path, no_model):
    (tmp_path / "empty").mkdir()
    result = invoke(tmp_path / "empty", *FAST)
    assert_error(result, 2, f"folder {tmp_path / 'empty'} holds no images: expected files ending in {SUFFIXES}")


def test_folder_with_no_images(tmp_path, no_model):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    result = invoke(folder, *FAST)
    assert_error(result, 2, f"folder {folder} holds no images: expected files ending in {SUFFIXES}")


def test_glob_matching_nothing(tmp_path, no_model):
    pattern = f"{tmp_path}/*.jpg"
    result = invoke(pattern, *FAST)
    assert_error(result, 2, f"pattern {pattern!r} matches no images: expected files ending in {SUFFIXES}")


def test_not_an_image(tmp_path, no_model):
    text = tmp_path / "notes.txt"
    text.write_text("not pixels")
    result = invoke(text, *FAST)
    line = assert_error(result, 2, prefix=f"cannot read image {text} (UnidentifiedImageError:")
    assert line.endswith(f"expected a readable {READABLE} file")


def test_truncated_png(scene, tmp_path, no_model):
    broken = tmp_path / "broken.png"
    data = (scene / "view_0.png").read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    result = invoke(broken, *FAST)
    line = assert_error(result, 2, prefix=f"cannot read image {broken} (OSError:")
    assert "truncated" in line


def test_corrupt_png_header(tmp_path, no_model):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    result = invoke(corrupt, *FAST)
    assert_error(result, 2, prefix=f"cannot read image {corrupt} (")


def test_duplicate_paths(scene, no_model):
    one = scene / "view_0.png"
    result = invoke(one, scene, *FAST)  # the folder holds view_0.png again
    assert_error(result, 2, f"image {one} is given more than once: each view may appear only once")


def test_unusual_png_modes_and_mixed_sizes_are_handled(tmp_path):
    folder = tmp_path / "modes"
    folder.mkdir()
    rgb = synthetic_scene(1, 70, 98)[0]
    Image.fromarray(rgb).convert("L").save(folder / "a_gray.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(folder / "b_rgba.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "c_palette.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(folder / "d_16bit.png")
    Image.fromarray(synthetic_scene(1, 40, 30)[0]).save(folder / "e_portrait.png")  # another size
    assert Image.open(folder / "d_16bit.png").mode.startswith("I")
    out = tmp_path / "modes.rrd"
    result = invoke(folder, *FAST, "--headless", "--save", out)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and out.exists()


def test_image_smaller_than_a_patch_is_upscaled(tmp_path):
    """Decision: handled, like vggt's own preprocessing (resized to the model size), with a warning."""
    tiny = tmp_path / "tiny.png"
    Image.fromarray(synthetic_scene(1, 9, 12)[0]).save(tiny)
    out = tmp_path / "tiny.rrd"
    result = invoke(tiny, *FAST, "--headless", "--save", out)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0] == f"warning: image {tiny} is only 12x9 pixels: upscaled to 84x56"
    assert out.exists()


def test_image_too_thin_to_make_a_patch_row(tmp_path, no_model):
    thin = tmp_path / "thin.png"
    Image.new("RGB", (300, 2), "gray").save(thin)
    result = invoke(thin, *FAST)
    message = f"image {thin} is 300x2: its aspect ratio (150:1) is too extreme; valid images are at most 50:1"
    assert_error(result, 2, message)


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


# -- the save path and the sinks: all checked before the model loads --------------------------------


def test_save_into_missing_folder(scene, tmp_path, no_model):
    target = tmp_path / "no" / "such" / "out.rrd"
    result = invoke(scene, *FAST, "--headless", "--save", target)
    assert_error(result, 2, f"--save {target}: folder {target.parent} does not exist")


def test_save_into_unwritable_folder(scene, tmp_path, no_model):
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root ignores permission bits; sysfs refuses new files even to root
        folder = Path("/sys")
        if not folder.is_dir():
            pytest.skip("running as root and no read-only file system at hand")
    target = folder / "out.rrd"
    result = invoke(scene, *FAST, "--headless", "--save", target)
    assert_error(result, 2, prefix=f"--save {target}: cannot write to folder {folder} (")
    assert not target.exists()


def test_save_into_a_file_as_folder(scene, tmp_path, no_model):
    target = scene / "view_0.png" / "out.rrd"
    result = invoke(scene, *FAST, "--headless", "--save", target)
    assert_error(result, 2, f"--save {target}: {target.parent} is not a folder")


def test_save_onto_existing_file(scene, tmp_path, no_model):
    target = tmp_path / "old.rrd"
    target.write_bytes(b"precious")
    result = invoke(scene, *FAST, "--headless", "--save", target)
    assert_error(result, 2, f"--save {target}: file exists; pass --overwrite to replace it")
    assert target.read_bytes() == b"precious"


def test_save_needs_rrd_suffix(scene, tmp_path, no_model):
    target = tmp_path / "out.png"
    result = invoke(scene, *FAST, "--headless", "--save", target)
    assert_error(result, 2, f"--save {target}: the file name must end in .rrd (the viewer opens recordings by suffix)")


def test_headless_without_a_sink(scene, no_model):
    result = invoke(scene, *FAST, "--headless")
    message = "--headless alone would discard the recording: add --save out.rrd (or --stdout/--connect/--serve)"
    assert_error(result, 2, message)


def test_connect_to_nothing(scene, no_model):
    url = "rerun+http://127.0.0.1:9/proxy"  # the discard port: nothing listens there
    result = invoke(scene, *FAST, "--connect", url)
    assert_error(result, 2, prefix=f"--connect {url}: no Rerun viewer is listening there (")


def test_connect_to_a_non_rerun_url(scene, no_model):
    result = invoke(scene, *FAST, "--connect=http://example.com")
    assert_error(result, 2, prefix="--connect http://example.com: not a Rerun viewer URL")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the DISPLAY check is for Linux")
def test_spawn_without_a_display(scene, monkeypatch, no_model):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    result = invoke(scene, *FAST)
    assert_error(result, 2, prefix="no display to open the Rerun viewer on")


def test_cuda_not_available(scene, monkeypatch, no_model):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = invoke(scene, *FAST, "--device", "cuda", "--headless", "--save", scene.parent / "x.rrd")
    assert_error(result, 2, "--device cuda: CUDA is not available to this torch; use --device cpu")


def test_model_is_a_text_file(scene, tmp_path, no_model):
    notes = tmp_path / "weights.pt"
    notes.write_text("these are not weights\n")
    result = invoke(scene, "--model", notes, "--headless", "--save", tmp_path / "x.rrd")
    assert_error(
        result, 2,
        f"--model {notes} is not a checkpoint (neither a torch .pt/.pth file nor .safetensors); "
        f"valid are {loading.SPEC_SYNTAX}",
    )  # fmt: skip


# -- failures during the run: no file under the final name, no temp file ----------------------------


def _log_then(exc: BaseException, out: Path):
    """record_attention that logs something, then fails: the recording has started, no file has."""

    def fake_record(model, images, queries, *, recording, **kwargs):
        import rerun as rr

        recording.log("world/partial", rr.Points3D([[0.0, 0.0, 0.0]]))
        recording.flush()
        assert not out.exists()  # the file is written whole at the end, never piece by piece
        raise exc

    return fake_record


def test_error_mid_run_leaves_no_file(scene, out, monkeypatch):
    monkeypatch.setattr(runner, "record_attention", _log_then(RuntimeError("boom\nsecond line"), out))
    result = invoke(scene, *FAST, *save_args(out))
    assert_error(result, 1, "unexpected RuntimeError: boom (run with --debug for the traceback)")
    assert_nothing_saved(out)


def test_error_in_the_model_forward_leaves_no_file(scene, out, monkeypatch):
    def broken_forward(self, images, query_points=None):
        raise ValueError("the forward pass failed")

    monkeypatch.setattr(TinyVGGT, "forward", broken_forward)
    result = invoke(scene, *FAST, *save_args(out))
    assert_error(result, 1, "unexpected ValueError: the forward pass failed (run with --debug for the traceback)")
    assert_nothing_saved(out)


def test_debug_shows_the_traceback(scene, out, monkeypatch):
    monkeypatch.setattr(runner, "record_attention", _log_then(RuntimeError("boom"), out))
    result = invoke(scene, *FAST, *save_args(out), "--debug")
    assert result.exit_code == 1 and "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: unexpected RuntimeError: boom")
    assert_nothing_saved(out)


def test_keyboard_interrupt_mid_run_leaves_no_file(scene, out, monkeypatch):
    monkeypatch.setattr(runner, "record_attention", _log_then(KeyboardInterrupt(), out))
    result = invoke(scene, *FAST, *save_args(out))
    assert result.exit_code == 130
    assert result.stderr == "interrupted\n" and "Traceback" not in result.output
    assert_nothing_saved(out)


def test_out_of_memory_in_the_forward(scene, out, monkeypatch):
    monkeypatch.setattr(runner, "record_attention", _log_then(torch.OutOfMemoryError("CUDA out of memory."), out))
    result = invoke(scene, *FAST, *save_args(out))
    assert_error(result, 1, f"out of memory on cpu during the forward pass: {resources.OOM_ADVICE}")
    assert_nothing_saved(out)


def test_memory_estimate_refuses(scene, out, monkeypatch):
    monkeypatch.setattr(resources, "available_memory_bytes", lambda device: 1000)
    monkeypatch.setattr(runner, "record_attention", _log_then(AssertionError("must not run"), out))
    result = invoke(scene, *FAST, *save_args(out))
    line = assert_error(result, 1, prefix="the forward pass needs about ")
    assert line.endswith(f"but only 1000 B is available on cpu: {resources.OOM_ADVICE}; or pass --force to try anyway")
    assert_nothing_saved(out)


def test_memory_estimate_force(scene, out, monkeypatch):
    monkeypatch.setattr(resources, "available_memory_bytes", lambda device: 1000)
    result = invoke(scene, *FAST, *save_args(out), "--force")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("warning: the forward pass needs about ")
    assert out.exists()


def test_memory_check_thresholds():
    assert resources.check_memory(100, None, "cpu") is None  # unknown: no opinion
    assert resources.check_memory(70, 100, "cpu") is None
    assert "85%" in resources.check_memory(85, 100, "cpu")
    with pytest.raises(resources.UserError, match="or pass --force"):
        resources.check_memory(101, 100, "cpu")


def test_memory_estimate_is_plausible_for_vggt_1b():
    """The notes measured a peak RSS of 5.7-6.5 GB for VGGT-1B fp32 on CPU, 1-4 views of 518x518."""
    args = dict(height=518, width=518, dtype=torch.float32, num_params=1_260_000_000, queries=1,
                blocks=24, kinds=("global",), heads=16, embed_dim=1024)  # fmt: skip
    one = resources.estimate_memory(num_frames=1, **args).total
    four = resources.estimate_memory(num_frames=4, **args).total
    assert 5.0e9 < one < four < 7.0e9
    unfused = resources.estimate_memory(num_frames=8, **args, fused_attention=False)
    assert unfused.attention_matrix == 2 * 16 * (8 * 1374) ** 2 * 4  # logits + softmax, fp32
    bf16 = resources.estimate_memory(num_frames=4, **{**args, "dtype": torch.bfloat16})
    assert bf16.weight_casts == 1_260_000_000 * 2
    with_qk = resources.estimate_memory(num_frames=1, **{**args, "kinds": ("frame", "global")}, keep_qk=True)
    assert with_qk.qk_cache == 2 * 1374 * 1024 * 4 * 24 * 2  # q and k, fp32, 48 modules: 540 MB a frame


def test_memory_estimate_takes_keywords_only():
    with pytest.raises(TypeError):
        resources.estimate_memory(1, 518, 518, None, 10, 1, 1, ("global",), 16, 1024)


def test_serve_on_a_taken_port(scene, monkeypatch, no_model):
    import socket

    from vggt_attn_rerun.viz import sinks

    with socket.socket() as taken, socket.socket() as free:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        free.bind(("127.0.0.1", 0))
        web, grpc = taken.getsockname()[1], free.getsockname()[1]
        free.close()
        monkeypatch.setattr(sinks, "WEB_PORT", web)
        monkeypatch.setattr(sinks, "VIEWER_PORT", grpc)
        result = invoke(scene, *FAST, "--serve")
    assert_error(result, 2, prefix=f"--serve: port {web} for the web viewer is taken (")


def test_grid_view_out_of_range(scene, no_model):
    assert_error(invoke(scene, *FAST, "--grid-view", "3"), 2, "--grid-view 3: valid frames are 0..2")


@pytest.mark.parametrize("size", ["0", "100", "-14", "99988", "2086"])
def test_bad_image_size(scene, no_model, size):
    message = f"--image-size {size}: must be a multiple of 14 from 14 to 2072 (VGGT was trained at 518)"
    assert_error(invoke(scene, "--image-size", size), 2, message)


def test_warnings_while_logging_are_one_line(scene, tmp_path, monkeypatch, capsys):
    import warnings as _warnings

    real = record.log_run  # record_attention calls it from there

    def warn_then_log(*args, **kwargs):
        _warnings.warn(
            "view 1: the predicted camera is degenerate (non-finite or zero focal length): not shown", stacklevel=1
        )
        return real(*args, **kwargs)

    monkeypatch.setattr(record, "log_run", warn_then_log)
    code = cli.run([str(scene), *FAST, "--headless", "--save", str(tmp_path / "w.rrd")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "warning: view 1: the predicted camera is degenerate (non-finite or zero focal length): not shown" in (
        err.splitlines()
    )
    assert "warn_then_log" not in err and ".py:" not in err


# -- numbers: finite floats, integers of any length, devices -----------------------------------------


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--conf-threshold", "nan"), ("--conf-threshold", "inf"), ("--conf-percentile", "nan"),
     ("--conf-percentile", "-inf")],
)  # fmt: skip
def test_non_finite_numbers_are_refused_before_the_model(scene, no_model, flag, value):
    line = assert_error(invoke(scene, *FAST, flag, value), 2, prefix=f"Invalid value for '{flag}': ")
    assert f"{value!r} is not a finite number" in line


HUGE = "9" * 5000  # int() refuses more than 4300 digits with a ValueError


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


# -- resource bombs: refused before any pixel is resized ---------------------------------------------


@pytest.mark.parametrize("size", [(1, 1000), (30000, 1)])
def test_extreme_aspect_ratio_is_refused_before_resizing(tmp_path, no_model, monkeypatch, size):
    from PIL import Image as PILImage

    monkeypatch.setattr(PILImage.Image, "resize", lambda *a, **k: pytest.fail("must not resize"))
    path = tmp_path / "thin.png"
    Image.new("RGB", size, "gray").save(path)
    w, h = size
    ratio = max(w, h) // min(w, h)
    message = f"image {path} is {w}x{h}: its aspect ratio ({ratio}:1) is too extreme; valid images are at most 50:1"
    assert_error(invoke(path, *FAST), 2, message)


def test_float_image_in_0_1_is_scaled_not_black(tmp_path):
    from vggt_attn_rerun.core.images import load_images

    ramp = np.tile(np.linspace(0, 1, 28, dtype=np.float32), (14, 1))  # [14, 28] in [0, 1]
    path = tmp_path / "float.tiff"
    Image.fromarray(ramp, mode="F").save(path)
    assert Image.open(path).mode == "F"
    loaded = load_images([path], target_size=28, patch_size=14)
    expected = torch.from_numpy(np.rint(ramp * 255) / 255).float()
    assert torch.allclose(loaded.tensor[0, 0], expected, atol=1e-6)  # no resize at 28 px: exact
    assert loaded.tensor.max() == 1.0


@pytest.mark.parametrize(("values", "shown"), [((0.0, 255.0), "[0, 255]"), ((-1.0, 0.5), "[-1, 0.5]")])
def test_float_image_outside_0_1_is_refused(tmp_path, no_model, values, shown):
    pixels = np.full((14, 28), values[0], np.float32)
    pixels[0, 0] = values[1]
    path = tmp_path / "float.tiff"
    Image.fromarray(pixels, mode="F").save(path)
    message = (
        f"image {path} holds floating-point pixels in {shown}: valid float images hold values in [0, 1]; "
        "convert it to 8 or 16 bits"
    )
    assert_error(invoke(path, *FAST), 2, message)


# -- all or nothing on disk: --save and --export appear together, or neither does --------------------


@pytest.fixture
def pair(tmp_path):
    """Paths of a run's two files, in a folder of their own."""
    folder = tmp_path / "outputs"
    folder.mkdir()
    return folder / "attn.rrd", folder / "run.npz"


def _both(pair) -> list:
    return ["--headless", "--save", pair[0], "--export", pair[1]]


def _folder_holds(pair, names: set) -> None:
    assert {p.name for p in pair[0].parent.iterdir()} == names  # nothing else: no temporary files


def test_save_and_export_together(scene, pair):
    result = invoke(scene, *FAST, *_both(pair))
    assert result.exit_code == 0, result.output
    _folder_holds(pair, {"attn.rrd", "run.npz"})


def test_disk_full_while_saving_is_one_line_and_leaves_nothing(scene, pair, monkeypatch):
    from vggt_attn_rerun.io import streamfile

    def disk_full(f, data):
        f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(streamfile, "write_chunk", disk_full)
    result = invoke(scene, *FAST, *_both(pair))
    assert_error(result, 1, f"cannot save the recording to {pair[0]}: No space left on device (the disk is full)")
    _folder_holds(pair, set())


def test_export_failing_leaves_neither_file_and_keeps_the_old_pair(scene, pair, monkeypatch):
    from vggt_attn_rerun.io import runfile

    for path in pair:
        path.write_bytes(b"old " + path.name.encode())

    def disk_full(file, **arrays):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runfile.np, "savez_compressed", disk_full)
    result = invoke(scene, *FAST, *_both(pair), "--overwrite")
    assert_error(result, 1, f"cannot save run to {pair[1]}: No space left on device (the disk is full)")
    assert [p.read_bytes() for p in pair] == [b"old attn.rrd", b"old run.npz"]
    _folder_holds(pair, {"attn.rrd", "run.npz"})


@pytest.mark.parametrize("overwrite", [False, True])
def test_ctrl_c_right_after_the_first_rename_leaves_neither_new_file(scene, pair, monkeypatch, overwrite):
    from vggt_attn_rerun.io import atomic

    if overwrite:
        for path in pair:
            path.write_bytes(b"old " + path.name.encode())
    real, moved = atomic._move_into_place, []

    def interrupted_after_one(pending):
        if pending.target in pair:  # not save_run's own write of its temporary file
            if moved:
                raise KeyboardInterrupt
            moved.append(pending.target)
        return real(pending)

    monkeypatch.setattr(atomic, "_move_into_place", interrupted_after_one)
    result = invoke(scene, *FAST, *_both(pair), *(["--overwrite"] if overwrite else []))
    assert (result.exit_code, result.stderr) == (130, "interrupted\n")
    assert moved == [pair[0]]  # the .rrd was in place when Ctrl-C came
    if overwrite:
        assert [p.read_bytes() for p in pair] == [b"old attn.rrd", b"old run.npz"]
        _folder_holds(pair, {"attn.rrd", "run.npz"})
    else:
        _folder_holds(pair, set())


def test_a_signal_during_the_moves_is_held_then_undoes_them(tmp_path):
    """SIGINT between two renames: both files are moved back out, then KeyboardInterrupt."""
    import signal

    from vggt_attn_rerun.io import atomic

    targets = [tmp_path / "a.rrd", tmp_path / "b.npz"]
    pending = [atomic.write_pending(t, lambda f: f.write(b"new")) for t in targets]
    real = atomic._move_into_place

    def signal_during(p):
        placed = real(p)
        os.kill(os.getpid(), signal.SIGINT)  # held by commit, so this move is not torn
        return placed

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(atomic, "_move_into_place", signal_during)
        with pytest.raises(KeyboardInterrupt):
            atomic.commit(pending)
    assert list(tmp_path.iterdir()) == []


def test_a_second_run_does_not_silently_replace_the_first(scene, out, monkeypatch):
    """Both runs checked the name before it existed; the second to finish must not replace the first."""
    real = runner.record_attention

    def other_run_finishes_first(*args, **kwargs):
        out.write_bytes(b"the first run's recording")
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "record_attention", other_run_finishes_first)
    result = invoke(scene, *FAST, *save_args(out))
    assert_error(result, 1, f"{out} appeared while this run was working: not replaced (pass --overwrite to replace it)")
    assert out.read_bytes() == b"the first run's recording"
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_save_onto_a_symlink_needs_overwrite_and_replaces_the_link(scene, tmp_path):
    """Documented: the link itself is replaced by the new file; the file it points to is untouched."""
    elsewhere = tmp_path / "elsewhere.rrd"
    elsewhere.write_bytes(b"keep me")
    link = tmp_path / "link.rrd"
    link.symlink_to(elsewhere)
    result = invoke(scene, *FAST, "--save", link)
    assert_error(result, 2, f"--save {link}: is a symbolic link; pass --overwrite to replace it")
    result = invoke(scene, *FAST, "--save", link, "--overwrite")
    assert result.exit_code == 0, result.output
    assert not link.is_symlink() and link.stat().st_size > 1000
    assert elsewhere.read_bytes() == b"keep me"


# -- --ask: a bad typed line is skipped, the recording is kept -------------------------------------------


def test_ask_skips_any_bad_line_and_counts_the_queries_recorded(scene, out, monkeypatch):
    from vggt_attn_rerun.interactive.session import QuerySession

    real = QuerySession.add_query

    def breaks_on_frame_2(self, query):
        if query.frame == 2:
            raise RuntimeError("something inside went wrong")
        return real(self, query)

    monkeypatch.setattr(QuerySession, "add_query", breaks_on_frame_2)
    typed = ["1:p2,3", "not a query", f"0:p{HUGE},1", "\x00\x1b[2J", "2:p0,0", "0:p3,5", "q"]
    result = CliRunner().invoke(cli.cli, [str(scene), *FAST, "-q", "0:p0,0", "--ask", *map(str, save_args(out))],
                                input="\n".join(typed) + "\n")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "not added: unexpected RuntimeError: something inside went wrong" in result.stderr
    assert result.stderr.count("not added:") == 4
    assert result.stderr.splitlines()[-1].startswith("3 views, 3 queries, 4 blocks")
    import rerun as rr

    logged = {str(ch.entity_path) for ch in rr.chunk.RrdReader(out).stream()}
    assert {"/queries/q0/info", "/queries/q1/info", "/queries/q2/info"} <= logged
    assert "/queries/q3/info" not in logged
    assert [0, 1, 2] in _queries_in_each_layout(out)  # one saved layout reaches every query


def _queries_in_each_layout(path: Path) -> list[list[int]]:
    """Per blueprint in a recording: the query indices its views and containers name."""
    import re

    import rerun as rr

    reader = rr.chunk.RrdReader(path)
    found = []
    for store in reader.blueprints():
        named: set[int] = set()
        for ch in reader.stream(store=store):
            batch = ch.to_record_batch()
            for name in batch.schema.names:
                if "Blueprint" in name or "Name" in name or "Origin" in name or "Contents" in name:
                    named |= {int(q) for q in re.findall(r"\bq(\d+)\b", str(batch.column(name).to_pylist()))}
        found.append(sorted(named))
    return found


def test_without_hard_links_a_name_is_still_never_replaced(tmp_path, monkeypatch):
    """File systems without hard links (FAT, some shares): check, then rename; overwrite moves the old file aside."""
    import errno

    from vggt_attn_rerun.errors import UserError
    from vggt_attn_rerun.io import atomic

    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(atomic.os, "link", no_links)
    target = tmp_path / "a.rrd"
    atomic.write_file(target, lambda f: f.write(b"first"), overwrite=False)
    with pytest.raises(UserError, match="appeared while this run was working: not replaced"):
        atomic.write_file(target, lambda f: f.write(b"second"), overwrite=False)
    assert target.read_bytes() == b"first"
    pending = [atomic.write_pending(target, lambda f: f.write(b"third"), overwrite=True),
               atomic.write_pending(tmp_path / "b.npz", lambda f: f.write(b"b"), overwrite=True)]  # fmt: skip
    real = atomic._move_into_place

    def fail_second(p):
        if p.target.name == "b.npz":
            raise OSError(errno.EIO, "Input/output error")
        return real(p)

    monkeypatch.setattr(atomic, "_move_into_place", fail_second)
    with pytest.raises(UserError, match=r"cannot write .*b\.npz: Input/output error"):
        atomic.commit(pending)
    assert target.read_bytes() == b"first" and sorted(p.name for p in tmp_path.iterdir()) == ["a.rrd"]
