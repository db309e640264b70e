"""What to log and how: ``RecordingOptions``, checked on construction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vggt_attn_rerun.analysis.maps import check_scale
from vggt_attn_rerun.core.introspect import check_kinds
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.viz import colormap

POINT_SOURCES = ("world_points", "depth")


@dataclass
class RecordingOptions:
    """What to log and how. Checked on construction (UserError); run-dependent checks in log_run.

    Attributes:
        kinds: attention kinds to log ("frame", "global").
        focus_head: head shown in the main views on the block timeline; None = head mean.
        focus_block: block whose heads the head timeline walks through; None = last captured.
        grid_view: view shown in the head grid; None = the query's own frame.
        points: point map source: "world_points" (point head) or "depth" (depth unprojected
            with the predicted cameras).
        conf_threshold: keep points with confidence >= this; None = use conf_percentile.
        conf_percentile: keep points at or above this percentile of confidence (0-100).
        max_points: at most this many cloud points (deterministic subsample).
        scale: the colour scale of the maps (analysis.maps): "map" (default: one scale per
            (block, head) map, shared by its views), "global" (one for every block, head and
            view) or "view" (one per map and view: colors do not compare across views).
        gamma: ``u8 = round(255 * clip(p / vmax, 0, 1) ** gamma)``; < 1 lifts diffuse maps.
        clip_percentile: vmax = this percentile of the scale's values instead of their maximum
            (100 = the maximum; e.g. 99 lets the top 1% saturate).
        note: a line put first in every query's notes and scale notes (e.g. that the model is
            a constructed demo: testing.CONSTRUCTED_NOTE).
        rays: lines from the query's 3D point to its k most attended patches of the other views
            (0 = none).
        peaks: outline the k hottest patches of each view, and box their 3D points (0 = none;
            analysis.maps.peak_patches says which patches count).
        jpeg_quality: 1-100, for the logged input images.
        colormap: one of colormap.COLORMAPS.
        top_k: k of the ``top_k_mass`` summary (summaries.summarize).
        consistency_radius: Chebyshev radius in patches of the consistency windows
            (consistency.geometric_consistency).
        matrix_cell: pixels per (block, head) cell of the block x head matrix images.
        cameras: true cameras of the photos (``cameras.npz`` or a COLMAP sparse folder,
            ``io.cameras``; matched by file name): the consistency scores use them and say
            ``reference = truth``. None: VGGT's own predictions (``reference = model``).
    """

    kinds: Sequence[str] = ("global",)
    focus_head: int | None = None
    focus_block: int | None = None
    grid_view: int | None = None
    points: str = "world_points"
    conf_threshold: float | None = None
    conf_percentile: float = 50.0
    max_points: int = 200_000
    scale: str = "map"
    gamma: float = 1.0
    clip_percentile: float = 100.0
    rays: int = 8
    peaks: int = 3
    note: str = ""
    jpeg_quality: int = 90
    colormap: str = "inferno"
    top_k: int = 10
    consistency_radius: int = 1
    matrix_cell: int = 8
    cameras: str | None = None

    def __post_init__(self) -> None:
        if self.cameras is not None and not Path(self.cameras).expanduser().exists():
            raise UserError(f"cameras {self.cameras}: no such file or folder (cameras.npz or a COLMAP sparse folder)")
        self.kinds = check_kinds((self.kinds,) if isinstance(self.kinds, str) else tuple(self.kinds))
        if self.points not in POINT_SOURCES:
            raise UserError(f"unknown point source {self.points!r}: valid are {', '.join(POINT_SOURCES)}")
        for name in ("focus_head", "focus_block", "grid_view"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 0):
                raise UserError(f"{name} must be an index >= 0 or None, got {value!r}")
        if self.conf_threshold is not None and not np.isfinite(self.conf_threshold):
            raise UserError(f"conf_threshold must be a finite number or None, got {self.conf_threshold!r}")
        if not 0.0 <= self.conf_percentile <= 100.0:
            raise UserError(f"conf_percentile must be in [0, 100], got {self.conf_percentile!r}")
        if int(self.max_points) < 1:
            raise UserError(f"max_points must be >= 1, got {self.max_points!r}")
        if not 1 <= int(self.jpeg_quality) <= 100:
            raise UserError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality!r}")
        self.colormap = colormap.check_colormap(self.colormap)
        self.scale = check_scale(self.scale)
        if not (isinstance(self.gamma, (int, float)) and 0.05 <= float(self.gamma) <= 20.0):
            raise UserError(f"gamma must be a number in [0.05, 20], got {self.gamma!r}")
        if not (isinstance(self.clip_percentile, (int, float)) and 50.0 <= float(self.clip_percentile) <= 100.0):
            raise UserError(f"clip_percentile must be in [50, 100], got {self.clip_percentile!r}")
        for name in ("rays", "peaks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= 64:
                raise UserError(f"{name} must be an integer in 0..64, got {value!r}")
        for name, low in (("top_k", 1), ("consistency_radius", 0), ("matrix_cell", 1)):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise UserError(f"{name} must be an integer >= {low}, got {value!r}")
