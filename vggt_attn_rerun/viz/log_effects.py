"""Log what interventions did (analysis.effects.Effects): block x head matrices and a moved-points cloud.

Entities (all under ``ablations/``, apart from the attention entities, so the attention layout
is untouched):

    ablations/matrix/{kind}/{effect}          Image: rows = blocks, columns = heads (one column for
                                              block ablations and knockouts), colormapped over 0..vmax
    ablations/matrix/{kind}/{effect}/axes     Points2D: the block labels left of the rows, the head
                                              labels above the columns
    ablations/legend                          TextDocument: how to read the matrices, each range,
                                              what each effect means, the largest effects
    ablations/scene/points                    Points3D: the unablated confident points (static), coloured
                                              on the ``ablation`` timeline (sequence = intervention index)
                                              by how far each moved under that intervention
    ablations/scene/legend                    TextDocument on the ``ablation`` timeline: which intervention,
                                              its effects and the colour range
"""

from __future__ import annotations

import numpy as np
import rerun as rr
import rerun.blueprint as rrb

from vggt_attn_rerun.analysis.effects import EFFECT_TITLES, EFFECTS, Effects
from vggt_attn_rerun.analysis.scene import images_u8, subsample
from vggt_attn_rerun.analysis.summaries import block_head_matrix
from vggt_attn_rerun.core.images import LoadedImages
from vggt_attn_rerun.viz import colormap
from vggt_attn_rerun.viz.log_summaries import matrix_axes
from vggt_attn_rerun.viz.options import RecordingOptions

ROOT = "ablations"
TIMELINE = "ablation"
LEGEND_PATH = f"{ROOT}/legend"
POINTS_PATH = f"{ROOT}/scene/points"
SCENE_LEGEND_PATH = f"{ROOT}/scene/legend"
MATRIX_EFFECTS = (*EFFECTS, "query")


def matrix_path(kind: str, name: str) -> str:
    return f"{ROOT}/matrix/{kind}/{name}"


def _kinds(effects: Effects) -> list[str]:
    return [k for k in ("frame", "global") if any(iv.kind == k for iv in effects.interventions)]


def _top(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    top = float(finite.max()) if finite.size else 0.0
    return top if top > 0 else 1.0


SHORT_NAMES = {"depth": "depth", "points": "points", "rotation_deg": "rotation deg", "translation_deg": "direction deg",
               "query": "query point"}  # fmt: skip


def _ranges(effects: Effects) -> dict[tuple[str, str], float]:
    """(kind, effect) -> the top of the matrix's colour range (its largest value; 1 when none is positive)."""
    names = MATRIX_EFFECTS if effects.queries else EFFECTS
    return {(kind, name): _top(effects.matrix(name, kind)[2]) for kind in _kinds(effects) for name in names}


def _fmt(v: float) -> str:
    return "n/a" if not np.isfinite(v) else f"{v:.4g}"


def _legend(effects: Effects, ranges: dict[tuple[str, str], float], options: RecordingOptions) -> str:
    lines = [
        "# What each intervention did",
        "",
        "Each picture is a matrix: **rows = blocks** (top = first, labelled on the left), **columns = heads**",
        "(labelled on top; a single column for whole-block ablations and cross-view knockouts).",
        f"Colormap {options.colormap}: dark = 0 (no change), bright = the top of the range below; gray = not run.",
        f"Every effect is measured against the unablated forward over its confident pixels "
        f"(confidence at or above the {options.conf_percentile:g}th percentile); scene scale "
        f"{effects.baseline.scale:.4g} (median distance of those points from the first camera).",
        "",
        "| matrix | range | meaning |",
        "|---|---|---|",
    ]
    meanings = {
        "depth": "median relative depth change |d' - d| / d",
        "points": "median 3D displacement of the points / scene scale",
        "rotation_deg": "mean over frames of the camera rotation change, degrees",
        "translation_deg": "mean over frames of the change of direction of the camera centre, degrees",
        "query": "3D displacement of the queries' own points / scene scale (mean over queries)",
    }
    for (kind, name), top in ranges.items():
        lines.append(f"| `{kind}/{name}` | 0 .. {top:.4g} | {meanings[name]} |")
    order = np.argsort(-np.nan_to_num(effects.get("points"), nan=-1.0))[:10]
    lines += ["", "## Largest point effects", "", "| intervention | depth | points | rotation | translation |",
              "|---|---|---|---|---|"]  # fmt: skip
    for i in order:
        v = [effects.get(n)[i] for n in EFFECTS]
        lines.append(f"| {effects.interventions[i].label} | " + " | ".join(_fmt(x) for x in v) + " |")
    return "\n".join(lines)


def log_effects(rec: rr.RecordingStream, effects: Effects, images: LoadedImages, options: RecordingOptions) -> None:
    """Log the matrices, their legend and the moved-points cloud of the kept interventions."""
    lut, cell = colormap.lut(options.colormap), int(options.matrix_cell)
    ranges = _ranges(effects)
    for (kind, name), top in ranges.items():
        blocks, cols, values = effects.matrix(name, kind)
        rgb = block_head_matrix(values, lut, cell, 0.0, top)
        path = matrix_path(kind, name)
        rec.log(path, rr.Image(rgb), rr.AnyValues(vmin=0.0, vmax=top), static=True)
        heads = any(hasattr(iv, "head") for iv in effects.interventions if iv.kind == kind)
        rec.log(f"{path}/axes", matrix_axes(blocks, cols, cell, heads), static=True)
    rec.log(LEGEND_PATH, rr.TextDocument(_legend(effects, ranges, options), media_type=rr.MediaType.MARKDOWN),
            static=True)  # fmt: skip
    _log_moved(rec, effects, images, options)


def _log_moved(rec: rr.RecordingStream, effects: Effects, images: LoadedImages, options: RecordingOptions) -> None:
    if not effects.moved:
        return
    base = effects.baseline
    flat = np.flatnonzero(base.points_mask.reshape(-1))
    pick = flat[subsample(flat.size, int(options.max_points))]
    positions = base.geometry.points.reshape(-1, 3)[pick].astype(np.float32)
    moved = {i: m.reshape(-1)[pick] for i, m in sorted(effects.moved.items())}
    allv = np.concatenate(list(moved.values()))
    allv = allv[np.isfinite(allv)]
    top = float(np.percentile(allv, 99)) if allv.size else 1.0
    top = top if top > 0 else 1.0
    rgb = images_u8(images).reshape(-1, 3)[pick]
    rec.log(POINTS_PATH, rr.Points3D(positions, radii=0.0015 * base.scale), static=True)
    rec.log(f"{ROOT}/scene/photo_colours", rr.Points3D(positions, colors=rgb, radii=0.0015 * base.scale),
            static=True)  # fmt: skip
    for i, m in moved.items():
        rec.set_time(TIMELINE, sequence=i)
        u8 = np.rint(255 * np.clip(np.nan_to_num(m, nan=0.0) / top, 0, 1)).astype(np.uint8)
        rec.log(POINTS_PATH, rr.Points3D.from_fields(colors=colormap.visible_colors(u8, options.colormap)))
        iv = effects.interventions[i]
        text = [f"# {iv.label}", "", f"Points coloured by how far each moved when this is applied: colormap "
                f"{options.colormap}, dark = 0, bright = {top:.4g} x scene scale (99th percentile of the shown "
                "shifts) or more.", "", "| effect | value |", "|---|---|"]  # fmt: skip
        text += [f"| {EFFECT_TITLES[n]} | {_fmt(effects.get(n)[i])} |" for n in EFFECTS]
        rec.log(SCENE_LEGEND_PATH, rr.TextDocument("\n".join(text), media_type=rr.MediaType.MARKDOWN))
    rec.reset_time()


def effects_blueprint(effects: Effects) -> rrb.Blueprint:
    """A tab with the moved-points cloud and its legend, a tab with the matrices and their legend."""
    names = MATRIX_EFFECTS if effects.queries else EFFECTS
    # The colour range in each view's name: the legend of the matrix where it is seen.
    mats = [
        rrb.Spatial2DView(origin=matrix_path(kind, name), name=f"{kind} {SHORT_NAMES[name]} 0..{top:.2g}")
        for (kind, name), top in _ranges(effects).items()
    ]
    legend = rrb.TextDocumentView(origin=LEGEND_PATH, name="legend")
    grid = rrb.Grid(*mats, grid_columns=len(names))
    tabs = [rrb.Horizontal(grid, legend, column_shares=[4, 1], name="effects")]
    if effects.moved:
        # Seen from just behind the first camera (VGGT's world frame, y down), as the photos were taken.
        scale = effects.baseline.scale
        eye = rrb.EyeControls3D(position=[0.0, -0.1 * scale, -0.3 * scale], look_target=[0.0, 0.0, scale],
                                eye_up=[0.0, -1.0, 0.0])  # fmt: skip
        scene = rrb.Horizontal(
            rrb.Spatial3DView(
                origin=f"{ROOT}/scene", contents=[f"+ {POINTS_PATH}"], name="points moved", eye_controls=eye
            ),  # fmt: skip
            rrb.Vertical(
                rrb.Spatial3DView(
                    origin=f"{ROOT}/scene", contents=[f"+ {ROOT}/scene/photo_colours"], name="photos", eye_controls=eye
                ),  # fmt: skip
                rrb.TextDocumentView(origin=SCENE_LEGEND_PATH, name="ablation"),
            ),
            column_shares=[2, 1],
            name="points moved",
        )
        tabs.insert(0, scene)
    return rrb.Blueprint(rrb.Tabs(*tabs), rrb.TimePanel(state="collapsed", timeline=TIMELINE), collapse_panels=True)
