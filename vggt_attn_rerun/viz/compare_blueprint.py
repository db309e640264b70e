"""The layout of a comparison recording: models side by side (entity roots: ``paths.rooted``).

One tab per shown (query, kind); in it one column per model, each with the model's 3D scene
(its title names a random or constructed model), its views with their overlays, and its block x
head matrices beside a tab with their legend, so the same place in every column shows the same
thing for another model. Matrix views are titled by metric alone: the column says the model.
The views are the single-model blueprint's (blueprint.py), built under each model's root. When
the models differ in depth, the active timeline is ``paths.DEPTH_TIMELINE`` (blocks as a
percentage of depth), else ``block``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import rerun.blueprint as rrb

from vggt_attn_rerun.core.introspect import check_kinds
from vggt_attn_rerun.viz.blueprint import _matrix_views, _scene, _view_grid, shown_queries_for, with_stable_ids
from vggt_attn_rerun.viz.paths import DEPTH_TIMELINE, rooted


@dataclass(frozen=True)
class ComparedModel:
    """What the layout needs of one compared model: its name, entity root and frame count;
    ``title``: its label (a random or constructed model), ``no_camera``: frames without a camera."""

    name: str
    root: str
    num_frames: int
    title: str = ""
    no_camera: tuple[int, ...] = ()


def _column(model: ComparedModel, q: int, kind: str) -> rrb.Vertical:
    with rooted(model.root):
        scene = _scene(model.num_frames, q, kind, model.title, model.no_camera)
        views = _view_grid(model.num_frames, q, kind, None)
        matrices, legend = _matrix_views(q, kind)
    scene.name = f"{model.name}: {scene.name}"
    for view in views.contents:
        view.name = f"{model.name}: {view.name}"  # the tab titles say which model each view shows
    views.name = f"{model.name}: views"
    # Short titles (the metric) fit a third of a column; the legend gets a tab of its own.
    grid = rrb.Grid(*matrices, grid_columns=3, name=f"{model.name}: block x head")
    legend.name = f"{model.name}: legend"
    return rrb.Vertical(scene, views, rrb.Tabs(grid, legend), row_shares=[3, 3, 3], name=model.name)


def compare_blueprint(
    models: Sequence[ComparedModel],
    kinds: Sequence[str] = ("global",),
    queries: int = 1,
    *,
    by_depth: bool = False,
    shown_queries: Sequence[int] | None = None,
) -> rrb.Blueprint:
    """Per shown (query, kind), the models' columns side by side (3D, views, block x head matrices).

    ``by_depth``: make DEPTH_TIMELINE the active timeline (models of different depth), else ``block``.
    ``shown_queries``: as in blueprint.default_blueprint (default: all up to MANY_QUERIES, else q0).
    """
    if len(models) < 1 or queries < 1:
        raise ValueError(f"need >= 1 model and query, got {len(models)}, {queries}")
    kinds = check_kinds(kinds)
    tabs = [
        rrb.Horizontal(*(_column(m, q, k) for m in models), name=f"q{q} {k}")
        for q in shown_queries_for(queries, shown_queries)
        for k in kinds
    ]
    root = tabs[0] if len(tabs) == 1 else rrb.Tabs(*tabs)
    with_stable_ids(root, "compare")
    timeline = DEPTH_TIMELINE if by_depth else "block"
    return rrb.Blueprint(root, rrb.TimePanel(state="collapsed", timeline=timeline), collapse_panels=True)
