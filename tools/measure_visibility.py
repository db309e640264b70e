"""How much of the picture the attention changes: the same recording rendered with and without it.

    python tools/measure_visibility.py --images /path/to/photos --out /tmp/vis   # needs a Vulkan driver

Records the photos with the CONSTRUCTED demo model (``testing.matching_vggt``, whose global
block 2 matches appearance across views: a peaked block), then renders two layouts of that one
recording that differ only in their content rules: "with" is the default layout's 3D view with
a fixed eye and its 2D view of another frame than the query's (their overrides included: hidden
photo cloud, dimmed photo); "without" drops every attention entity from both (``- world/attention/**`` and
``- world/frames/{s}/image/attention/**``, and the ``+`` rules naming attention paths, which would
otherwise win as more specific). Reports, per view, the share of pixels whose color changes by
more than 40 of 255 in any channel. Screenshots: ``rrd_screenshot.py`` (``--screenshot-tool``),
about 10 s a shot. The PNGs and the .rrd stay in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rerun.blueprint as rrb
from PIL import Image

from vggt_attn_rerun.analysis.scene import build_scene
from vggt_attn_rerun.api import record_attention
from vggt_attn_rerun.core.images import as_loaded_images, expand_image_paths
from vggt_attn_rerun.testing import matching_vggt
from vggt_attn_rerun.viz import blueprint
from vggt_attn_rerun.viz.options import RecordingOptions
from vggt_attn_rerun.viz.paths import APPLICATION_ID, Paths

THRESHOLD = 40  # of 255, in any channel


def _without_attention(rules: list[str], num_frames: int) -> list[str]:
    keep = [r for r in rules if not (r.startswith("+") and "/attention" in r)]
    drop = ["- world/attention/**"] + [f"- {Paths.overlay_root(s)}/**" for s in range(num_frames)]
    return keep + drop


def _layout(num_frames: int, kind: str, view: int, eye: rrb.EyeControls3D, attention: bool) -> rrb.Blueprint:
    """The default layout's 3D view (fixed eye) and 2D view of ``view``, with or without attention."""
    scene = blueprint._scene(num_frames, 0, kind)
    grid = blueprint._view_grid(num_frames, 0, kind, None)
    flat = grid.contents[view]
    rules3d, rules2d = list(scene.contents), list(flat.contents)
    if not attention:
        rules3d, rules2d = _without_attention(rules3d, num_frames), _without_attention(rules2d, num_frames)
    v3 = rrb.Spatial3DView(origin=scene.origin, name="3D", contents=rules3d, eye_controls=eye,
                           overrides=scene.visualizer_overrides or None)  # fmt: skip
    v2 = rrb.Spatial2DView(origin=flat.origin, name=f"view {view}", contents=rules2d,
                           overrides=flat.visualizer_overrides or None)  # fmt: skip
    # The viewer's notifications (software renderer warnings) pop up at the window's top right for
    # a few seconds: an empty column there keeps them off the measured views.
    spacer = rrb.TextDocumentView(origin="spacer", name="spacer")
    panel = rrb.TimePanel(state="collapsed", timeline="block")
    return rrb.Blueprint(rrb.Horizontal(v3, v2, spacer, column_shares=[1, 1, 1]), panel, collapse_panels=True)


def _changed(a: Path, b: Path) -> float:
    x = np.asarray(Image.open(a).convert("RGB"), np.int16)
    y = np.asarray(Image.open(b).convert("RGB"), np.int16)
    return float((np.abs(x - y).max(-1) > THRESHOLD).mean())


def _screenshot(tool: str, png: Path, rrd: Path, rbl: Path, block: int, view: str, size: str) -> None:
    """One view's PNG. A fresh viewer state (XDG dirs) and port each time: a viewer restores the
    last layout of the application id from disk, and other viewers may run on this machine."""
    for attempt in range(3):  # a busy machine sometimes misses the viewer's start-up window
        port = str(random.randint(20000, 40000))
        with tempfile.TemporaryDirectory() as home:
            env = {**os.environ, "XDG_DATA_HOME": home, "XDG_CONFIG_HOME": home, "XDG_CACHE_HOME": home}
            cmd = [sys.executable, tool, str(png), str(rrd), str(rbl), "--time", f"block={block}", "--view", view,
                   "--port", port, "--size", size, "--wait", "10"]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        if out.returncode == 0:
            return
        print(f"screenshot of {view} failed (attempt {attempt + 1}): {out.stderr.strip()[-300:]}", file=sys.stderr)
    raise SystemExit(f"could not render {view}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", required=True, help="a folder of photos (the first --frames are used)")
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--query", default="0:p12,18", help="query (default 0:p12,18)")
    ap.add_argument("--block", type=int, default=2, help="block shown (default 2: the constructed block)")
    ap.add_argument("--view", type=int, default=1, help="the 2D view measured (default 1)")
    ap.add_argument("--kind", default="global")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", default="1500x750", help="viewer window, WxH (default 1500x750)")
    ap.add_argument("--screenshot-tool", default="/work/shared/tools/rrd_screenshot.py")
    args = ap.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    images = as_loaded_images(expand_image_paths([args.images])[: args.frames])
    options = RecordingOptions(kinds=(args.kind,))
    # No embedded layout: the merged .rbl is then the only one (no race between two layouts).
    result, rec = record_attention(matching_vggt(), images, [args.query], options=options, send_blueprint=False)
    rrd = args.out / "recording.rrd"
    rec.save(rrd)
    rec.flush()
    rec.disconnect()

    scene = build_scene(result, images, options)
    target = np.median(scene.pm.points[scene.pm.keep], axis=0)
    eye = rrb.EyeControls3D(position=target + scene.scale * np.array([0.0, -0.8, -1.2]), look_target=target,
                            eye_up=[0.0, -1.0, 0.0])  # fmt: skip
    s = images.tensor.shape[0]
    shots: dict[str, dict[str, Path]] = {}
    for attention in (True, False):
        name = "with" if attention else "without"
        rbl = args.out / f"{name}.rbl"
        _layout(s, args.kind, args.view, eye, attention).save(APPLICATION_ID, rbl)
        for view in ("3D", f"view {args.view}"):
            png = args.out / f"{name}_{view.replace(' ', '')}.png"
            _screenshot(args.screenshot_tool, png, rrd, rbl, args.block, view, args.size)
            shots.setdefault(view, {})[name] = png
    report = {
        "rrd_bytes": rrd.stat().st_size,
        "block": args.block,
        "changed_share": {view: round(_changed(p["with"], p["without"]), 4) for view, p in shots.items()},
    }
    print(json.dumps(report, indent=1))
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
