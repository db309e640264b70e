"""A run's files appear whole or not at all: --save and --export together or neither, never a
partial file, never a silent replacement of an earlier run's file."""

import errno
import os

import pytest

from vggt_attn_rerun.api import runner

from .helpers import FAST, assert_error, invoke, save_args

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


def test_without_hard_links_a_name_is_still_never_replaced(tmp_path, monkeypatch):
    """File systems without hard links (FAT, some shares): check, then rename; overwrite moves the old file aside."""

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
