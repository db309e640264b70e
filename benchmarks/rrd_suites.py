"""The benchmarks that write .rrd files, for both profiles.

3. ``recording`` (settings: suites.Settings) and ``step_recording`` (the CUDA check's step 4): time to
   log and .rrd size per frame, split into images, point clouds, attention.
4. ``end_to_end`` and ``step_cli`` (step 5): the CLI in a fresh process (``cli_child.py``), wall time
   split into model load, forward and logging; the check also compares the CLI's memory estimate
   with the peak it reached.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vggt_attn_rerun.core.capture import capture
from vggt_attn_rerun.core.introspect import KINDS, model_depth, model_heads, model_layout

from .check import Ctx, StepTimeout, free
from .common import REPO_ROOT, child_env, make_images, spread_queries, sync
from .suites import DEFAULT_CLI_ARGS, Settings

# --------------------------------------------------------------------------------------------
# 3. Recording: time to log and .rrd size, split by part
# --------------------------------------------------------------------------------------------

PARTS = ("images", "point_clouds", "attention", "other")
_ATTENTION_TIMELINES = {"block", "head", "layer"}
_ATTENTION_WORDS = ("attn", "attention")
_ATTENTION_ARCHETYPES = ("Tensor", "SegmentationImage")
_IMAGE_ARCHETYPES = ("Image", "EncodedImage", "DepthImage", "EncodedDepthImage")


def chunk_part(entity_path: str, timelines: Sequence[str], archetypes: set[str]) -> str:
    """Which part of a recording a chunk belongs to.

    attention: logged on a block/head timeline, under an entity path naming attention, or a
    Tensor/SegmentationImage (maps); images: Image/EncodedImage/DepthImage; point_clouds: Points3D;
    other: cameras, markers, text, ...
    """
    names = {a.removeprefix("rerun.archetypes.") for a in archetypes}
    if (
        _ATTENTION_TIMELINES & set(timelines)
        or any(w in entity_path.lower() for w in _ATTENTION_WORDS)
        or names & set(_ATTENTION_ARCHETYPES)
    ):
        return "attention"
    if names & set(_IMAGE_ARCHETYPES):
        return "images"
    if "Points3D" in names:
        return "point_clouds"
    return "other"


def rrd_parts(path: Path) -> dict[str, dict[str, int]]:
    """Bytes of each part of an .rrd: ``file_bytes`` (its chunks written alone, compressed as Rerun
    writes them) and ``arrow_bytes`` (uncompressed)."""
    import rerun.chunk as rc

    buckets: dict[str, list[Any]] = {p: [] for p in PARTS}
    arrow = dict.fromkeys(PARTS, 0)
    for chunk in rc.RrdReader(path).stream():
        batch = chunk.to_record_batch()
        archetypes = {(f.metadata or {}).get(b"rerun:archetype", b"").decode() for f in batch.schema if f.metadata} - {
            ""
        }
        part = chunk_part(str(chunk.entity_path), list(chunk.timeline_names), archetypes)
        buckets[part].append(chunk)
        arrow[part] += batch.nbytes
    out: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for part, chunks in buckets.items():
            size = 0
            if chunks:
                p = Path(tmp) / f"{part}.rrd"
                rc.LazyChunkStream.from_iter(chunks).write_rrd(p, application_id="bench", recording_id=part)
                size = p.stat().st_size
            out[part] = {"file_bytes": size, "arrow_bytes": arrow[part], "chunks": len(chunks)}
    return out


def _work_dir(settings: Settings) -> tuple[Path, Any]:
    """The folder for .rrd files and photos: settings.work_dir, or a temporary one removed afterwards."""
    if settings.work_dir:
        Path(settings.work_dir).mkdir(parents=True, exist_ok=True)
        return Path(settings.work_dir), None
    tmp = tempfile.TemporaryDirectory(prefix="vggt-attn-bench-")
    return Path(tmp.name), tmp


def recording(settings: Settings, model: nn.Module) -> dict[str, Any]:
    """Log all blocks and heads, frame and global, for S frames; time it and split the .rrd by part."""
    work, tmp = _work_dir(settings)
    try:
        return _recording(settings, model, work) | {"work_dir": settings.work_dir}
    finally:
        if tmp is not None:
            tmp.cleanup()


def _recording(settings: Settings, model: nn.Module, work: Path) -> dict[str, Any]:
    import rerun as rr

    from vggt_attn_rerun.core.images import images_from_tensor
    from vggt_attn_rerun.viz.log_run import log_run
    from vggt_attn_rerun.viz.options import RecordingOptions

    log, device = settings.log, torch.device(settings.device)
    h, w = settings.recording_size
    rows = []
    for s in settings.recording_frames:
        images = make_images(s, h, w, device)
        loaded = images_from_tensor(images.cpu())
        layout = model_layout(model, s, h, w)
        queries = spread_queries(layout, settings.recording_queries)
        options = RecordingOptions(kinds=KINDS)
        path = work / f"recording_S{s}.rrd"
        rec = rr.RecordingStream("vggt_attn_rerun_bench", recording_id=f"bench-S{s}")
        rec.save(path)
        log(f"[recording] S={s}: {len(queries)} queries, all blocks and heads, frame + global -> {path}")
        result = capture(model, images, queries, kinds=KINDS, autocast_dtype=settings.autocast)
        t0 = time.perf_counter()
        log_run(rec, result, loaded, options)
        rec.flush()
        seconds = time.perf_counter() - t0
        rec.disconnect()
        size = path.stat().st_size
        parts = rrd_parts(path)
        named = sum(parts[p]["file_bytes"] for p in PARTS if p != "other")
        parts["other"]["file_bytes"] = max(0, size - named)  # also blueprint, headers
        rows.append(
            {
                "frames": s,
                "tokens": layout.num_tokens,
                "queries": len(queries),
                "log_s": seconds,
                "log_s_per_frame": seconds / s,
                "rrd_bytes": size,
                "rrd_bytes_per_frame": size / s,
                "parts": parts,
            }
        )
    return {
        "model": settings.model,
        "size": [h, w],
        "blocks": model_depth(model),
        "heads": model_heads(model),
        "kinds": list(KINDS),
        "rows": rows,
    }


# --------------------------------------------------------------------------------------------
# 4. End to end: the CLI, split into load / forward / logging
# --------------------------------------------------------------------------------------------


def write_photos(folder: Path, frames: int, size: int) -> list[Path]:
    from PIL import Image

    from vggt_attn_rerun.testing import synthetic_scene

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, pixels in enumerate(synthetic_scene(frames, size, size, seed=1)):
        p = folder / f"view_{i:03d}.png"
        Image.fromarray(pixels).save(p)
        paths.append(p)
    return paths


def cli_argv(template: str, photos: Sequence[Path], **fields: Any) -> list[str]:
    """The CLI's argv from ``template``: ``{images}`` becomes the photo paths, other fields are filled in."""
    out: list[str] = []
    for token in shlex.split(template):
        if token == "{images}":
            out.extend(str(p) for p in photos)
        else:
            out.append(token.format(**fields))
    return out


def _plain_text(text: str) -> str:
    """Without ANSI colour codes (rerun's log lines carry them)."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def run_cli(
    argv: Sequence[str], report: Path, timeout: float | None = None
) -> tuple[subprocess.CompletedProcess, float, dict[str, Any] | None]:
    """The CLI with ``argv`` in a fresh process (``cli_child.py``): the process, its wall time and
    the child's report (None when it wrote none)."""
    report.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.cli_child", str(report), "--", *argv]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    wall = time.perf_counter() - t0
    return proc, wall, json.loads(report.read_text()) if report.exists() else None


def end_to_end(settings: Settings) -> dict[str, Any]:
    """Run the CLI in a child process per row; the child splits its wall time (see cli_child.py)."""
    work, tmp = _work_dir(settings)
    try:
        return _end_to_end(settings, work)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _end_to_end(settings: Settings, work: Path) -> dict[str, Any]:
    log = settings.log
    rows = []
    for spec, frames, size in settings.e2e:
        photos = write_photos(work / f"photos_{frames}x{size}", frames, size)
        rrd = work / f"e2e_{spec}_S{frames}.rrd"
        argv = cli_argv(settings.cli_args, photos, model=spec, device=settings.device, dtype=settings.dtype,
                        image_size=size, rrd=rrd)  # fmt: skip
        log(f"[e2e] {spec}: {frames} photos of {size}x{size}: vggt-attn-rerun {settings.cli_args}")
        proc, wall, child = run_cli(argv, work / f"e2e_{spec}_S{frames}.json")
        row: dict[str, Any] = {
            "model": spec,
            "frames": frames,
            "image_size": size,
            "argv": argv[len(photos) :],
        }
        if proc.returncode != 0 or child is None:
            tail = " | ".join(_plain_text(proc.stderr or proc.stdout).strip().splitlines()[-3:])
            row["skipped"] = f"the CLI exited with {proc.returncode}: {tail}"
        else:
            t = child["timings"]
            known = t["import_s"] + t["load_s"] + t["forward_s"] + t["logging_s"]
            row.update(
                wall_s=wall, import_s=t["import_s"], load_s=t["load_s"], forward_s=t["forward_s"],
                logging_s=t["logging_s"], log_run_s=t["log_run_s"], other_s=max(0.0, wall - known),
                forward_calls=t["forward_calls"], rrd_bytes=rrd.stat().st_size if rrd.exists() else None,
            )  # fmt: skip
        rows.append(row)
    return {"cli_args": settings.cli_args, "work_dir": settings.work_dir, "rows": rows}


PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


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


def pick_photos(folder: Path | None, count: int, dest: Path, size: int) -> tuple[list[Path], str]:
    """``count`` photos from ``folder`` (cycled when it has fewer), or synthetic ones when it has none
    or is None.

    Copies, not links: the CLI refuses a view given twice, and it resolves links to find out.
    """
    if folder is None:
        return write_photos(dest, count, size), f"{count} synthetic photos (no --photos folder given)"
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
    photos, source = pick_photos(Path(s.photos) if s.photos else None, s.cli_photos, work / "cli_photos", s.cli_size)
    rrd = work / "cli.rrd"
    argv = cli_argv(
        DEFAULT_CLI_ARGS, photos, model=s.model, device=s.device, dtype=s.dtype, image_size=s.cli_size, rrd=rrd
    )
    entry.update(photos=source, argv=["vggt-attn-rerun", "PHOTOS...", *argv[len(photos) :]])
    ctx.log(f"[cli] {entry['photos']}: {' '.join(entry['argv'])}")
    try:
        proc, wall, child = run_cli(argv, work / "cli_child.json", timeout=max(ctx.remaining(), 1.0))
    except subprocess.TimeoutExpired as e:
        entry["stderr_tail"] = _tail(e.stderr)
        raise StepTimeout(f"the CLI ran past the {ctx.remaining():.0f} s left") from None
    entry.update(wall_s=wall, exit_code=proc.returncode, stderr_tail=_tail(proc.stderr))
    entry["printed"] = [ln for ln in proc.stderr.splitlines() if "needs about" in ln]
    if proc.returncode != 0 or child is None:
        raise RuntimeError(f"the CLI exited with {proc.returncode}: {' | '.join(entry['stderr_tail'][-3:])}")
    entry.update(child)
    est, peak = child.get("estimate"), child.get("peak_bytes")
    if est and peak:
        entry["estimate_over_peak"] = est["total"] / peak
    entry["rrd_bytes"] = rrd.stat().st_size if rrd.exists() else None


def _tail(text: str | bytes | None, lines: int = 8) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "").strip().splitlines()[-lines:]
