"""Steps 4 and 5 of the GPU check: recording (log_run time, .rrd size) and the CLI end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vggt_attn_rerun.core.capture import capture
from vggt_attn_rerun.core.introspect import KINDS, model_layout

from .common import REPO_ROOT, child_env, make_images, spread_queries, sync
from .gpu_steps import Ctx, StepTimeout, free
from .rrd_suites import cli_argv, rrd_parts, write_photos
from .suites import DEFAULT_CLI_ARGS

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


# --------------------------------------------------------------------------------------------
# 4. Recording
# --------------------------------------------------------------------------------------------


def step_recording(ctx: Ctx, entry: dict[str, Any]) -> None:
    import rerun as rr

    from vggt_attn_rerun.core.images import images_from_tensor
    from vggt_attn_rerun.viz.log_run import log_run
    from vggt_attn_rerun.viz.options import RecordingOptions

    s, model = ctx.settings, ctx.model
    h, w = s.size
    entry.update(size=[h, w], queries=s.recording_queries, dtype=s.dtype, rows=[])
    for frames in s.recording_frames:
        row: dict[str, Any] = {"frames": frames}
        entry["rows"].append(row)
        predicted = ctx.predict_forward_s(frames)
        if predicted is not None and 2 * predicted > ctx.remaining():  # the forward, then logging
            row["status"] = f"skipped: predicted {2 * predicted:.0f} s > {ctx.remaining():.0f} s left"
            break
        images = make_images(frames, h, w, ctx.device)
        layout = model_layout(model, frames, h, w)
        ctx.log(f"[recording] S={frames}: capture, then log_run to an .rrd")
        sync(ctx.device)
        t0 = time.perf_counter()
        result = capture(
            model, images, spread_queries(layout, s.recording_queries), kinds=KINDS, autocast_dtype=s.autocast
        )
        sync(ctx.device)
        row["forward_s"] = time.perf_counter() - t0
        path = Path(s.work_dir) / f"recording_S{frames}.rrd"
        rec = rr.RecordingStream("vggt_attn_rerun_gpu_check", recording_id=f"gpu-check-S{frames}")
        rec.save(path)
        t0 = time.perf_counter()
        log_run(rec, result, images_from_tensor(images.cpu()), RecordingOptions(kinds=KINDS))
        rec.flush()
        row["log_s"] = time.perf_counter() - t0
        rec.disconnect()
        row.update(status="ok", rrd_bytes=path.stat().st_size, log_over_forward=row["log_s"] / row["forward_s"])
        del result, images
        free(ctx.device)
        ctx.save()
        if ctx.remaining() > 2 * row["log_s"]:  # the split reads the file back and writes each part again
            parts = {p: v["file_bytes"] for p, v in rrd_parts(path).items()}
            # as benchmarks.suites counts it: "other" is the rest of the file (blueprint, headers too)
            parts["other"] = max(0, row["rrd_bytes"] - sum(v for p, v in parts.items() if p != "other"))
            row["parts_bytes"] = parts
        path.unlink(missing_ok=True)
        ctx.save()


# --------------------------------------------------------------------------------------------
# 5. The CLI end to end
# --------------------------------------------------------------------------------------------


def pick_photos(folder: Path, count: int, dest: Path, size: int) -> tuple[list[Path], str]:
    """``count`` photos from ``folder`` (cycled when it has fewer), or synthetic ones when it has none.

    Copies, not links: the CLI refuses a view given twice, and it resolves links to find out.
    """
    found = sorted(p for p in folder.glob("*") if p.suffix.lower() in PHOTO_SUFFIXES) if folder.is_dir() else []
    if not found:
        return write_photos(dest, count, size), f"{count} synthetic photos ({folder} has no photos)"
    dest.mkdir(parents=True, exist_ok=True)
    chosen = []
    for i in range(count):
        src = found[i % len(found)]
        copy = dest / f"{i:02d}_{src.name}"
        shutil.copyfile(src, copy)
        chosen.append(copy)
    reused = f", each used up to {-(-count // len(found))} times" if count > len(found) else ""
    return chosen, f"{count} photos from {folder} ({len(found)} there{reused})"


def step_cli(ctx: Ctx, entry: dict[str, Any]) -> None:
    s = ctx.settings
    ctx.release_model()  # the CLI builds its own; the peak it reaches must be its own
    work = Path(s.work_dir)
    photos, source = pick_photos(Path(s.photos), s.cli_photos, work / "cli_photos", s.cli_size)
    rrd, report = work / "cli.rrd", work / "cli_child.json"
    report.unlink(missing_ok=True)
    argv = cli_argv(
        DEFAULT_CLI_ARGS, photos, model=s.model, device=s.device, dtype=s.dtype, image_size=s.cli_size, rrd=rrd
    )
    entry.update(photos=source, argv=["vggt-attn-rerun", "PHOTOS...", *argv[len(photos) :]])
    cmd = [sys.executable, "-m", "benchmarks.gpu_cli_child", str(report), "--", *argv]
    ctx.log(f"[cli] {entry['photos']}: {' '.join(entry['argv'])}")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            cwd=REPO_ROOT,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=max(ctx.remaining(), 1.0),
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        entry["stderr_tail"] = _tail(e.stderr)
        raise StepTimeout(f"the CLI ran past the {ctx.remaining():.0f} s left") from None
    entry.update(wall_s=time.perf_counter() - t0, exit_code=proc.returncode, stderr_tail=_tail(proc.stderr))
    entry["printed"] = [ln for ln in proc.stderr.splitlines() if "needs about" in ln]
    if proc.returncode != 0 or not report.exists():
        raise RuntimeError(f"the CLI exited with {proc.returncode}: {' | '.join(entry['stderr_tail'][-3:])}")
    child = json.loads(report.read_text())
    entry.update(child)
    est, peak = child.get("estimate"), child.get("peak_bytes")
    if est and peak:
        entry["estimate_over_peak"] = est["total"] / peak
    entry["rrd_bytes"] = rrd.stat().st_size if rrd.exists() else None


def _tail(text: str | bytes | None, lines: int = 8) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "").strip().splitlines()[-lines:]
