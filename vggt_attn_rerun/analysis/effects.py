"""What an intervention did to the model's 3D output, measured against the unablated forward (numpy).

Each effect compares one ablated prediction with the plain one, over the pixels the plain
forward is confident about (confidence at or above ``conf_percentile`` of its own map):

- ``depth``: median over confident pixels of ``|d' - d| / d`` (0.1 = depths moved by 10 %).
- ``points``: median over confident pixels of ``|p' - p|``, divided by the scene scale (the
  median distance of the confident points from the first camera, as the recording's scale).
- ``rotation_deg``: mean over frames of the angle of ``R' R^T`` (camera-from-world rotations), degrees.
- ``translation_deg``: mean over frames of the angle between the camera centres ``-R^T t`` before and
  after, degrees: the change of direction, blind to scale; frames whose centre is at the origin
  (frame 0, VGGT's world) are left out, NaN when none is left.
- ``query``: per query, the shift of its patch's mean 3D point divided by the scene scale (NaN for
  special tokens and patches with no finite point).

A no-op scores 0 on every effect: the null is the unablated model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from vggt_attn_rerun.analysis.scene import PointMap, query_point
from vggt_attn_rerun.core.geometry import pose_encoding_to_cameras
from vggt_attn_rerun.core.interventions import Intervention
from vggt_attn_rerun.core.tokens import Query, TokenLayout
from vggt_attn_rerun.errors import UserError

EFFECTS = ("depth", "points", "rotation_deg", "translation_deg")
EFFECT_TITLES = {
    "depth": "depth: median relative change",
    "points": "points: median 3D shift / scene scale",
    "rotation_deg": "cameras: rotation change (deg)",
    "translation_deg": "cameras: translation direction change (deg)",
    "query": "query point: 3D shift / scene scale",
}


@dataclass
class Geometry:
    """One scene's prediction in numpy (float64).

    Attributes:
        depth: ``[S, H, W]``; depth_conf: ``[S, H, W]``.
        points: ``[S, H, W, 3]`` world points; points_conf: ``[S, H, W]``.
        extrinsics: ``[S, 3, 4]`` camera-from-world.
    """

    depth: np.ndarray
    depth_conf: np.ndarray
    points: np.ndarray
    points_conf: np.ndarray
    extrinsics: np.ndarray


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def geometry(predictions: dict[str, torch.Tensor], layout: TokenLayout, item: int = 0) -> Geometry:
    """Batch element ``item`` of an adapter's predictions (``ModelAdapter.run``) as a Geometry.

    Depth is ``depth`` (VGGT, StreamVGGT, VGGT-Omega) or the z of pi3's ``local_points``.
    """
    s, (h, w) = layout.num_frames, layout.image_size
    pred = predictions
    for key in ("pose_enc", "world_points", "world_points_conf"):
        if key not in pred:
            raise UserError(f"the model's predictions have no {key!r}: effects need cameras and a point map")
    extr, _ = pose_encoding_to_cameras(pred["pose_enc"][item].detach().double().cpu(), (h, w))
    if "depth" in pred:
        depth = _np(pred["depth"][item]).reshape(s, h, w)
        depth_conf = _np(pred.get("depth_conf", pred["world_points_conf"])[item]).reshape(s, h, w)
    elif "local_points" in pred:
        depth = _np(pred["local_points"][item][..., 2]).reshape(s, h, w)
        depth_conf = _np(pred["world_points_conf"][item]).reshape(s, h, w)
    else:
        raise UserError("the model's predictions have no 'depth' nor 'local_points': the depth effect needs one")
    points = _np(pred["world_points"][item]).reshape(s, h, w, 3)
    points_conf = _np(pred["world_points_conf"][item]).reshape(s, h, w)
    return Geometry(depth, depth_conf, points, points_conf, extr.numpy())


def confident(conf: np.ndarray, percentile: float, *finite: np.ndarray) -> np.ndarray:
    """``[S, H, W]`` bool: confidence at or above its ``percentile`` and every array finite there."""
    ok = np.isfinite(conf)
    for a in finite:
        ok &= np.isfinite(a).reshape(*conf.shape, -1).all(-1)
    if not ok.any():
        return ok
    return ok & (conf >= np.percentile(conf[ok], percentile))


@dataclass
class Baseline:
    """The unablated prediction and what every effect is measured against."""

    geometry: Geometry
    depth_mask: np.ndarray  # [S, H, W] confident depth pixels
    points_mask: np.ndarray  # [S, H, W] confident point pixels
    scale: float  # median distance of the confident points from the origin
    query_points: list[np.ndarray | None]  # per query: its patch's mean 3D point


def baseline(
    base: Geometry, layout: TokenLayout, queries: Sequence[Query] = (), conf_percentile: float = 50.0
) -> Baseline:
    """The masks, the scene scale and the queries' points of the unablated prediction."""
    depth_mask = confident(base.depth_conf, conf_percentile, base.depth)
    points_mask = confident(base.points_conf, conf_percentile, base.points)
    dist = np.linalg.norm(base.points[points_mask], axis=-1)
    scale = float(np.median(dist)) if dist.size else 1.0
    scale = scale if np.isfinite(scale) and scale > 0 else 1.0
    pm = PointMap(base.points, base.points_conf, points_mask, 0.0)
    return Baseline(base, depth_mask, points_mask, scale, [query_point(pm, layout, q) for q in queries])


def rotation_angles(extr_a: np.ndarray, extr_b: np.ndarray) -> np.ndarray:
    """``[S]`` angle in degrees of ``R_b R_a^T`` for ``[S, 3, 4]`` extrinsics."""
    rel = extr_b[:, :3, :3] @ np.swapaxes(extr_a[:, :3, :3], -1, -2)
    cos = (np.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def centres(extr: np.ndarray) -> np.ndarray:
    """``[S, 3]`` camera centres ``-R^T t`` of ``[S, 3, 4]`` extrinsics."""
    return -np.einsum("sji,sj->si", extr[:, :3, :3], extr[:, :3, 3])


def direction_angles(extr_a: np.ndarray, extr_b: np.ndarray, eps: float = 1e-9) -> np.ndarray:
    """``[S]`` angle in degrees between the camera centres of a and b; NaN where a's centre is at the origin."""
    ca, cb = centres(extr_a), centres(extr_b)
    na, nb = np.linalg.norm(ca, axis=-1), np.linalg.norm(cb, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.einsum("si,si->s", ca, cb) / (na * nb)
    angle = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    scale = max(float(na.max(initial=0.0)), 1.0)
    return np.where((na > eps * scale) & (nb > eps * scale), angle, np.nan)


def _nanmean(a: np.ndarray) -> float:
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


@dataclass
class Effect:
    """The effects of one intervention (see the module docstring); ``moved``: ``[S, H, W]`` shift / scale."""

    depth: float
    points: float
    rotation_deg: float
    translation_deg: float
    query: np.ndarray  # [Q]
    moved: np.ndarray = field(repr=False)


def effect(base: Baseline, ablated: Geometry, layout: TokenLayout, queries: Sequence[Query] = ()) -> Effect:
    """The effects of one ablated prediction against the baseline."""
    b = base.geometry
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.abs(ablated.depth - b.depth) / np.abs(b.depth)
    rel = rel[base.depth_mask]
    rel = rel[np.isfinite(rel)]
    moved = np.linalg.norm(ablated.points - b.points, axis=-1) / base.scale
    shift = moved[base.points_mask]
    shift = shift[np.isfinite(shift)]
    pm = PointMap(ablated.points, ablated.points_conf, base.points_mask, 0.0)
    query = np.full(len(queries), np.nan)
    for i, (q, before) in enumerate(zip(queries, base.query_points, strict=True)):
        after = query_point(pm, layout, q)
        if before is not None and after is not None:
            query[i] = float(np.linalg.norm(after - before)) / base.scale
    return Effect(
        depth=float(np.median(rel)) if rel.size else float("nan"),
        points=float(np.median(shift)) if shift.size else float("nan"),
        rotation_deg=_nanmean(rotation_angles(b.extrinsics, ablated.extrinsics)),
        translation_deg=_nanmean(direction_angles(b.extrinsics, ablated.extrinsics)),
        query=query,
        moved=moved.astype(np.float32),
    )


@dataclass
class Effects:
    """The effects of many interventions on one scene, each against the same unablated forward.

    Attributes:
        interventions: the I interventions, in order (core.interventions).
        values: effect name (EFFECTS) -> ``[I]``.
        query: ``[I, Q]`` shift of each query's 3D point / scene scale.
        queries: the Q queries; layout: the run's TokenLayout; baseline: the unablated prediction.
        moved: intervention index -> ``[S, H, W]`` shift of each pixel's 3D point / scene scale,
            for the interventions whose maps were kept.
        seconds: wall time of the forward passes of the interventions (the baseline's not included).
    """

    interventions: tuple[Intervention, ...]
    values: dict[str, np.ndarray]
    query: np.ndarray
    queries: tuple[Query, ...]
    layout: TokenLayout
    baseline: Baseline
    moved: dict[int, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.interventions)

    def get(self, name: str) -> np.ndarray:
        """``[I]`` values of one effect (EFFECTS, or "query" for the mean over the queries)."""
        if name == "query":
            q = self.query
            ok = np.isfinite(q)
            with np.errstate(invalid="ignore"):
                return np.where(ok.any(1), np.where(ok, q, 0).sum(1) / np.maximum(ok.sum(1), 1), np.nan)
        if name not in self.values:
            raise UserError(f"unknown effect {name!r}: valid are {', '.join((*EFFECTS, 'query'))}")
        return self.values[name]

    def matrix(self, name: str, kind: str) -> tuple[tuple[int, ...], int, np.ndarray]:
        """Blocks, columns and ``[L, C]`` values of ``kind``'s interventions: C = heads for head
        ablations (the largest head index + 1), else 1. NaN where no intervention was run."""
        picked = [(i, iv) for i, iv in enumerate(self.interventions) if iv.kind == kind]
        if not picked:
            raise UserError(f"no intervention on {kind} blocks was run")
        blocks = tuple(sorted({iv.block for _, iv in picked}))
        cols = max((getattr(iv, "head", 0) for _, iv in picked), default=0) + 1
        out = np.full((len(blocks), cols), np.nan)
        values = self.get(name)
        for i, iv in picked:
            out[blocks.index(iv.block), getattr(iv, "head", 0)] = values[i]
        return blocks, cols, out

    def rows(self) -> list[dict[str, object]]:
        """One dict per intervention: its label, kind, block, head and every effect (a table)."""
        out = []
        for i, iv in enumerate(self.interventions):
            row: dict[str, object] = {"intervention": iv.label, "kind": iv.kind, "block": iv.block,
                                      "head": getattr(iv, "head", None)}  # fmt: skip
            row.update({name: float(self.values[name][i]) for name in EFFECTS})
            row["query"] = float(self.get("query")[i])
            out.append(row)
        return out
