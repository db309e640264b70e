"""A viewer selection -> a frame and a pixel of its model input image.

Rerun reports a selection as entity items, each with the selected entity's path and a
position in the space of the VIEW the click happened in (not of the clicked entity): pixels
for 2D views rooted at an image or a head grid, patches for 2D views rooted at or below an
overlay (whose Transform3D scales patches to pixels), world coordinates for 3D views. The
entity path says which frame was clicked (``viz.paths`` reads it back); a picked 3D point of the
point cloud becomes the patch whose 3D centroid is nearest, a picked patch point that very patch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

from vggt_attn_rerun.analysis.scene import continuous_intrinsics
from vggt_attn_rerun.core.tokens import TokenLayout
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.viz.paths import (
    clean_path,
    head_grid_query,
    image_frame,
    in_patch_units,
    is_patch_points,
    is_scene_point,
)

Units = Literal["pixel", "patch", "world"]


@dataclass(frozen=True)
class Click:
    """A click mapped to a frame and a point of its model input image (continuous pixels)."""

    frame: int
    x: float
    y: float
    entity_path: str


def origin_units(origin: str) -> Units:
    """Units of the 2D space of a view rooted at ``origin``: ``patch`` below an overlay's
    ``Transform3D(scale=[patch, patch, 1])`` (``world/frames/{s}/image/attention/...``,
    ``heads/q{i}/{kind}/...``), else ``pixel`` (the image, the head grid's root)."""
    return "patch" if in_patch_units(origin) else "pixel"


def _clicked_frame(path: str, units: Units, grid_frames: Mapping[int, int] | None) -> int | None:
    """The frame an image entity shows: its own for ``world/frames/{s}/image/...``, the grid's for heads."""
    frame = image_frame(path)
    if frame is not None:
        return frame
    query = head_grid_query(path)
    if query is None or grid_frames is None or query not in grid_frames or units == "world":
        return None
    return int(grid_frames[query])


def _project(point: Sequence[float], frame: int, world_cameras: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """Continuous pixel (x, y) of a world point in ``frame`` (VGGT's cameras: ``extrinsics [S, 3, 4]``,
    ``intrinsics [S, 3, 3]``); NaN when it is behind the camera or not finite."""
    extr, intr = world_cameras
    cam = extr[frame, :, :3] @ np.asarray(point, np.float64) + extr[frame, :, 3]
    if not np.isfinite(cam).all() or cam[2] <= 0:
        return float("nan"), float("nan")
    u = continuous_intrinsics(intr[frame]) @ cam
    return float(u[0] / u[2]), float(u[1] / u[2])


def nearest_patch(point: Sequence[float], centroids: np.ndarray, valid: np.ndarray) -> tuple[int, int, int] | None:
    """(frame, row, col) of the valid patch whose ``[S, gh, gw, 3]`` centroid is nearest to a world point."""
    if not valid.any() or not np.isfinite(np.asarray(point, np.float64)).all():
        return None
    d = np.where(valid, ((centroids - np.asarray(point, np.float64)) ** 2).sum(-1), np.inf)
    s, r, c = np.unravel_index(int(np.argmin(d)), d.shape)
    return int(s), int(r), int(c)


def picked_patch(instance_id: int, valid: np.ndarray) -> tuple[int, int, int] | None:
    """(frame, row, col) of instance k of a query's patch points: the k-th valid patch of ``[S, gh, gw]``."""
    kept = np.flatnonzero(valid.reshape(-1))
    if not 0 <= instance_id < len(kept):
        return None
    s, r, c = np.unravel_index(int(kept[instance_id]), valid.shape)
    return int(s), int(r), int(c)


def _patch_centre(patch: tuple[int, int, int], layout: TokenLayout, entity_path: str) -> Click:
    s, r, c = patch
    return Click(s, (c + 0.5) * layout.patch_size, (r + 0.5) * layout.patch_size, clean_path(entity_path))


def click_from_selection(
    entity_path: str,
    position: Sequence[float | None] | None,
    layout: TokenLayout,
    *,
    units: Units = "pixel",
    grid_frames: Mapping[int, int] | None = None,
    world_cameras: tuple[np.ndarray, np.ndarray] | None = None,
    patch_points: tuple[np.ndarray, np.ndarray] | None = None,
    instance_id: int | None = None,
) -> Click | None:
    """Map one selected entity and the selection position to a pixel of a frame, or None.

    Args:
        entity_path: the selected entity, with or without the leading ``/``. Understood:
            ``world/frames/{s}/image`` and everything below it (overlays ``.../attention/...``,
            query markers ``.../queries/...``): frame ``s``; ``heads/q{i}/...`` (head grid):
            frame ``grid_frames[i]``; the point cloud ``world/points`` and the patch points
            ``world/attention/...`` in a 3D view: the patch nearest to the picked point (needs
            ``patch_points``). Anything else (cameras, series, tensor, text) gives None.
        position: the event's position. Rerun fills it with the pointer in the space of the
            VIEW's origin (``pointer_in_camera_plane`` for 2D views, the picked 3D point for 3D
            views), not in the clicked entity's own space. A 2D view's z is a depth or null.
        units: the units of that space: ``pixel`` (2D views rooted at the image or the head
            grid, as in every blueprint of this package), ``patch`` (a 2D view rooted at or below
            an overlay, whose Transform3D scales patches to pixels: see ``origin_units``), or
            ``world`` (a 3D view rooted at ``world``: the point is projected into frame ``s``
            with ``world_cameras`` = (extrinsics ``[S, 3, 4]``, intrinsics ``[S, 3, 3]``)).
        grid_frames: query index -> frame shown by its head grid.
        patch_points: (centroids ``[S, gh, gw, 3]``, valid ``[S, gh, gw]``): the 3D point of each
            patch (``analysis.scene.patch_centroids``); a picked scene point becomes the centre of
            the patch whose centroid is nearest.
        instance_id: the picked instance of the entity, if the viewer reports one. For a query's
            patch points (``viz.paths.is_patch_points``) it names the patch exactly: its hot points
            are large, and the picked point on a large sphere's surface can lie nearer another
            patch's centroid than its own.

    Returns:
        Click in model input pixels, or None when the entity is not an image of a frame, there is
        no position, or the point falls outside the model image.
    """
    if units == "world" and patch_points is not None and instance_id is not None and is_patch_points(entity_path):
        picked = picked_patch(int(instance_id), patch_points[1])
        if picked is not None:
            return _patch_centre(picked, layout, entity_path)
    if position is None or len(position) < 2 or position[0] is None or position[1] is None:
        return None
    if units == "world" and patch_points is not None and is_scene_point(entity_path):
        if len(position) < 3 or position[2] is None:
            return None
        found = nearest_patch([float(v) for v in position[:3]], *patch_points)  # type: ignore[arg-type]
        return None if found is None else _patch_centre(found, layout, entity_path)
    frame = _clicked_frame(entity_path, units, grid_frames)
    if frame is None or not 0 <= frame < layout.num_frames:
        return None
    if units == "world":
        if world_cameras is None or len(position) < 3 or position[2] is None:
            return None
        x, y = _project(position[:3], frame, world_cameras)
    elif units == "patch":
        x, y = float(position[0]) * layout.patch_size, float(position[1]) * layout.patch_size
    elif units == "pixel":
        x, y = float(position[0]), float(position[1])
    else:
        raise UserError(f"unknown position units {units!r}: valid are pixel, patch, world")
    h_px, w_px = layout.image_size
    if not (np.isfinite(x) and np.isfinite(y) and 0 <= x < w_px and 0 <= y < h_px):
        return None
    return Click(frame, x, y, clean_path(entity_path))


def event_field(obj: Any, name: str) -> Any:
    """A field of an event or item: an attribute of Rerun's dataclasses, a key of the JSON payload."""
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


class SelectedEntity(NamedTuple):
    """One entity item of a selection: what the viewer reports of it."""

    entity_path: str
    position: tuple | None
    view_name: str | None
    instance_id: int | None = None


def selection_items(event: Any) -> list[SelectedEntity]:
    """The entity items of a selection-change event.

    Accepts ``rerun.notebook.SelectionChangeEvent`` and the viewer's JSON payload as a dict
    (``{"type": "selection_change", "items": [{"type": "entity", ...}]}``); other events give [].
    """
    if event_field(event, "type") != "selection_change":
        return []
    out = []
    for item in event_field(event, "items") or ():
        path = event_field(item, "entity_path")
        if event_field(item, "type") != "entity" or path is None:
            continue
        pos = event_field(item, "position")
        instance = event_field(item, "instance_id")
        out.append(SelectedEntity(str(path), None if pos is None else tuple(pos), event_field(item, "view_name"),
                                  None if instance is None else int(instance)))  # fmt: skip
    return out


def view_units(blueprint: Any) -> dict[str, Units]:
    """View name -> units of its space, for the views of a blueprint (names that disagree are left out)."""
    import rerun.blueprint as rrb

    found: dict[str, set[str]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, rrb.View):
            if node.name is None:
                return
            kind = "world" if node.class_identifier == "3D" else origin_units(str(node.origin))
            found.setdefault(str(node.name), set()).add(kind)
        else:
            for child in getattr(node, "contents", None) or ():
                walk(child)

    walk(blueprint.root_container)
    return {name: next(iter(kinds)) for name, kinds in found.items() if len(kinds) == 1}  # type: ignore[misc]
