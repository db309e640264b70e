"""Viewer layouts (Rerun blueprints) for recordings made by log_run.py (entity paths: paths.py).

One dashboard per (query, kind): the 3D scene beside a grid of the views with their overlays,
and tabs with the head grid, the attention mass per view, the summaries (one line per head and
the head mean, on the ``block`` timeline), the block x head matrices of the summaries (rows =
blocks, columns = heads, with a legend), the geometric consistency (global attention: score and
positional-control matrices, peak distance per view, the query's notes with the excluded views),
every map in a TensorView, and the query's notes. Several (query, kind) pairs become tabs; with
more than one query, an "all queries" tab per kind shows the summaries averaged over queries.
The ``block`` timeline is made active.

Many queries (more than MANY_QUERIES, e.g. ``--query-grid 8x8``): the layout shows the
dashboards of q0 only, the "all queries" tabs, and a "queries" tab with every query's marker
on its view and the query index (``queries/index``: query -> token, frame, patch). Every query
is still in the recording under its own entities (``q{i}``). To look at query 7:

- in the viewer: select a view (click its title), and in the selection panel edit its entity
  path filter: replace ``q0`` by ``q7`` (the views of the dashboard, the 3D view's rules);
- or make a layout for it and open it with the recording:
  ``default_blueprint_for(result, options, shown_queries=[7]).save(APPLICATION_ID, "q7.rbl")``,
  then ``rerun rec.rrd q7.rbl``.

Blueprints name entities explicitly (content globs in the middle of a path do not match in
Rerun 0.41), so they depend on the number of frames, heads and queries and on the kinds.
View and container ids are derived from their place in the layout, so the same arguments
always give the same blueprint.

``tools/make_blueprints.py`` writes the .rbl files of ``blueprints/`` from these functions.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence

import rerun as rr
import rerun.blueprint as rrb

from vggt_attn_rerun.analysis.scene import camera_is_valid, cameras
from vggt_attn_rerun.analysis.summaries import METRICS
from vggt_attn_rerun.core.capture import CaptureResult
from vggt_attn_rerun.core.introspect import check_kinds
from vggt_attn_rerun.viz.options import RecordingOptions
from vggt_attn_rerun.viz.paths import CONSISTENCY_MATRICES, MAP_DIMS, MEAN, Paths

_ID_NAMESPACE = uuid.UUID("5b0f3c1e-7a2d-4c59-9a53-7f1d2e0b8c44")

#: more queries than this: the default layout shows the dashboards of q0 only (see the module docstring)
MANY_QUERIES = 4


def _columns(n: int) -> int:
    return max(1, math.ceil(math.sqrt(n)))


#: opacity of the photos under the 2D overlays: dimmed so that warm patches stand out
PHOTO_OPACITY = 0.6


def _view_grid(num_frames: int, q: int, kind: str, columns: int | None) -> rrb.Grid:
    views = [
        rrb.Spatial2DView(
            origin=Paths.image(s),
            name=f"view {s}",
            contents=[
                f"+ {Paths.image(s)}",
                f"+ {Paths.overlay(s, q, kind)}",
                f"+ {Paths.peaks(s, q, kind)}",
                f"+ {Paths.marker(s, q)}/**",
            ],  # fmt: skip
            overrides={Paths.image(s): rr.EncodedImage.from_fields(opacity=PHOTO_OPACITY)},
        )
        for s in range(num_frames)
    ]
    return rrb.Grid(*views, grid_columns=columns or _columns(num_frames), name="views")


def _scene(num_frames: int, q: int, kind: str, title: str = "", no_camera: Sequence[int] = ()) -> rrb.Spatial3DView:
    """``title``: the model's label (view title ``3D: title``); ``no_camera``: frames without a
    camera, whose 2D content a 3D view cannot place (the viewer flags it as an error)."""
    # Most specific rule wins: drop other queries' and kinds' data, keep this pair's.
    world = Paths.world
    rules = [f"+ {world}/**", f"- {world}/attention/**", f"+ {Paths.patch_points(q, kind)}/**"]
    rules += [f"- {world}/queries/**", f"+ {Paths.query_point(q)}"]
    for s in range(num_frames):
        if s in no_camera:
            rules += [f"- {Paths.frame(s)}/**"]
            continue
        rules += [f"- {Paths.overlay_root(s)}/**", f"+ {Paths.overlay(s, q, kind)}"]
        rules += [f"- {Paths.image(s)}/queries/**", f"+ {Paths.marker(s, q)}/**"]
    # The photo-colored cloud would bury the heat: hidden here by default (its eye icon in the
    # blueprint panel shows it again); the patch points carry VGGT's geometry meanwhile.
    hidden = {Paths.cloud: rrb.EntityBehavior(visible=False)}
    return rrb.Spatial3DView(origin=world, name=f"3D: {title}" if title else "3D", contents=rules, overrides=hidden)


def _colorbar() -> rrb.Spatial2DView:
    return rrb.Spatial2DView(origin=Paths.colorbar, name="colour: 0 (cold) .. vmax (hot), vmax in the legend")


def _scene_with_scale(num_frames: int, q: int, kind: str, title: str = "", no_camera: Sequence[int] = ()
                      ) -> rrb.Vertical:  # fmt: skip
    """The 3D view above the colour bar and the note with the scale on screen and the markers' legend."""
    note = rrb.TextDocumentView(origin=Paths.scale_note(q, kind), name="legend")
    notes = rrb.TextDocumentView(origin=Paths.notes, name="notes")
    return rrb.Vertical(_scene(num_frames, q, kind, title, no_camera), _colorbar(), rrb.Tabs(note, notes),
                        row_shares=[10, 1, 4])  # fmt: skip


def _head_grid(num_heads: int, q: int, kind: str) -> rrb.Grid:
    root = Paths.heads_root(q)
    views = [
        rrb.Spatial2DView(
            origin=root,
            name=f"head {h}",
            contents=[f"+ {Paths.heads_backdrop(q)}", f"+ {Paths.heads_marker(q)}", f"+ {Paths.head(q, kind, h)}"],
        )
        for h in range(num_heads)
    ]
    return rrb.Grid(*views, grid_columns=_columns(num_heads), name="heads")


def _details(num_heads: int, q: int, kind: str) -> rrb.Tabs:
    mass = rrb.TimeSeriesView(
        origin=Paths.mass_root(q, kind),
        name="attention mass per view",
        axis_y=rrb.ScalarAxis(range=(0.0, 1.0)),
    )
    tensor = rrb.TensorView(
        origin=Paths.maps(q, kind),
        name="all maps [" + ", ".join(MAP_DIMS) + "]",
        slice_selection=rrb.TensorSliceSelection(
            width=MAP_DIMS.index("x"),
            height=MAP_DIMS.index("y"),
            indices=[rr.TensorDimensionIndexSelection(dimension=d, index=0) for d in range(3)],
            slider=[0, 1, 2],
        ),
        scalar_mapping=rrb.TensorScalarMapping(colormap="inferno", mag_filter="nearest"),
    )
    info = rrb.TextDocumentView(origin=Paths.info(q), name="query")
    tabs = [_head_grid(num_heads, q, kind), mass, _summary_series(q, kind), _matrices(q, kind)]
    if kind == "global":
        tabs.append(_consistency(q))
    return rrb.Tabs(*tabs, tensor, info, name="details")


def _summary_series(q: int | str, kind: str) -> rrb.Grid:
    # No fixed y range: small masses (camera, registers) stay readable; the matrices share 0..1.
    views = [rrb.TimeSeriesView(origin=Paths.summary(q, kind, m), name=m) for m in METRICS]
    return rrb.Grid(*views, grid_columns=3, name="summaries")


def _matrix_view(path: str, name: str) -> rrb.Spatial2DView:
    return rrb.Spatial2DView(origin=path, name=name)


def _matrix_views(q: int | str, kind: str, consistency: bool = False) -> tuple[list, rrb.TextDocumentView]:
    """The block x head matrices (titled by metric: rows = blocks, columns = heads, the axes are
    labelled in the views) and their legend."""
    views = [_matrix_view(Paths.matrix(q, kind, m), m) for m in METRICS]
    if consistency:
        views += [_matrix_view(Paths.consistency(q, m), m) for m in CONSISTENCY_MATRICES]
    return views, rrb.TextDocumentView(origin=Paths.matrix_legend(q, kind), name="legend")


def _matrices(q: int | str, kind: str, consistency: bool = False) -> rrb.Horizontal:
    """The matrices' grid beside their legend (a column of its own, so that it is read whole)."""
    views, legend = _matrix_views(q, kind, consistency)
    grid = rrb.Grid(*views, grid_columns=4 if consistency else 3, name="matrices")
    return rrb.Horizontal(grid, legend, column_shares=[3, 1], name="block x head")


def _consistency(q: int) -> rrb.Grid:
    views = [_matrix_view(Paths.consistency(q, m), m) for m in CONSISTENCY_MATRICES]
    peak = rrb.TimeSeriesView(origin=Paths.consistency(q, "peak_dist"), name="peak distance (px, head mean)")
    notes = rrb.TextDocumentView(origin=Paths.info(q), name="query (excluded views)")
    return rrb.Grid(*views, peak, notes, grid_columns=2, name="consistency")


def _dashboard(num_frames: int, num_heads: int, q: int, kind: str, compact: bool, columns: int | None,
               title: str = "", no_camera: Sequence[int] = ()):  # fmt: skip
    views = _view_grid(num_frames, q, kind, columns)
    right = views if compact else rrb.Vertical(views, _details(num_heads, q, kind), row_shares=[3, 2])
    left = _scene_with_scale(num_frames, q, kind, title, no_camera)
    return rrb.Horizontal(left, right, column_shares=[2, 3], name=f"q{q} {kind}")


def _query_means(kind: str) -> rrb.Horizontal:
    """The summaries (and consistency scores) averaged over the run's queries."""
    matrices = _matrices(MEAN, kind, consistency=kind == "global")
    return rrb.Horizontal(matrices, _summary_series(MEAN, kind), column_shares=[3, 2], name=f"all queries {kind}")


def _query_picker(num_frames: int, queries: int, columns: int | None) -> rrb.Horizontal:
    """Every query's marker on its view (explicit paths: no patch boxes, no projections) and the index."""
    views = [
        rrb.Spatial2DView(
            origin=Paths.image(s),
            name=f"view {s}",
            contents=[f"+ {Paths.image(s)}"] + [f"+ {Paths.marker(s, q)}" for q in range(queries)],
        )
        for s in range(num_frames)
    ]
    grid = rrb.Grid(*views, grid_columns=columns or _columns(num_frames), name="query markers")
    index = rrb.TextDocumentView(origin=Paths.query_index, name="query index")
    return rrb.Horizontal(grid, index, column_shares=[3, 2], name="queries")


def with_stable_ids(node: rrb.Container | rrb.View, path: str, namespace: uuid.UUID = _ID_NAMESPACE) -> None:
    """Replace the random uuid4 ids with ids derived from the node's place in the layout
    (``path``, e.g. "default/0/2") in ``namespace``: the same layout always gets the same ids."""
    node.id = uuid.uuid5(namespace, path)
    if isinstance(node, rrb.View):
        # Archetype overrides become visualizers with random ids unless given one.
        for entity, override in node.visualizer_overrides.items():
            if isinstance(override, rr.EncodedImage):
                override = override.visualizer()
                override.id = uuid.uuid5(namespace, f"{path}/overrides/{entity}")
                node.visualizer_overrides[entity] = override
    for j, child in enumerate(getattr(node, "contents", None) if isinstance(node, rrb.Container) else ()):
        with_stable_ids(child, f"{path}/{j}", namespace)


def shown_queries_for(queries: int, shown: Sequence[int] | None = None) -> tuple[int, ...]:
    """The queries that get dashboards: ``shown``, else all up to MANY_QUERIES queries, else q0."""
    if shown is None:
        return tuple(range(queries)) if queries <= MANY_QUERIES else (0,)
    out = tuple(dict.fromkeys(int(q) for q in shown))
    bad = [q for q in out if not 0 <= q < queries]
    if bad or not out:
        raise ValueError(f"shown query {bad[0] if bad else '(none)'} does not exist: valid are 0..{queries - 1}")
    return out


def _blueprint(
    num_frames: int,
    kinds: Sequence[str],
    num_heads: int,
    queries: int,
    compact: bool,
    columns: int | None,
    shown: Sequence[int] | None = None,
    title: str = "",
    no_camera: Sequence[int] = (),
) -> rrb.Blueprint:
    if num_frames < 1 or num_heads < 1 or queries < 1:
        raise ValueError(f"need >= 1 frame, head and query, got {num_frames}, {num_heads}, {queries}")
    kinds = check_kinds(kinds)
    shown = shown_queries_for(queries, shown)
    pairs = [_dashboard(num_frames, num_heads, q, k, compact, columns, title, no_camera) for q in shown for k in kinds]
    if queries > 1 and not compact:
        pairs += [_query_means(k) for k in kinds]
    if queries > MANY_QUERIES:
        pairs.append(_query_picker(num_frames, queries, columns))
    root = pairs[0] if len(pairs) == 1 else rrb.Tabs(*pairs)
    with_stable_ids(root, "compact" if compact else "default")
    return rrb.Blueprint(root, rrb.TimePanel(state="collapsed", timeline="block"), collapse_panels=True)


def default_blueprint(
    num_frames: int,
    kinds: Sequence[str] = ("global",),
    num_heads: int = 16,
    queries: int = 1,
    *,
    grid_columns: int | None = None,
    shown_queries: Sequence[int] | None = None,
    title: str = "",
    no_camera: Sequence[int] = (),
) -> rrb.Blueprint:
    """Full layout: per (query, kind), the 3D scene above the colour bar and the legend (the
    scale on screen, the markers; a tab with the run's notes) beside the views with their
    overlays, and tabs with the head grid, attention mass per view, summaries, block x head
    matrices, consistency (global), the TensorView and the query's notes; "all queries" tabs
    with the means over queries (more than one query); a "queries" tab (more than MANY_QUERIES).

    ``grid_columns``: columns of the view grid (default ceil(sqrt(num_frames))).
    ``shown_queries``: the queries that get dashboards (default: all when there are at most
    MANY_QUERIES, else q0). ``title``: the model's label, in the 3D view's title (a random or
    constructed model). ``no_camera``: frames whose predicted camera is degenerate, left out of
    the 3D view. The ``block`` timeline is made the active one.
    """
    return _blueprint(num_frames, kinds, num_heads, queries, False, grid_columns, shown_queries, title, no_camera)


def compact_blueprint(
    num_frames: int,
    kinds: Sequence[str] = ("global",),
    queries: int = 1,
    *,
    grid_columns: int | None = None,
    shown_queries: Sequence[int] | None = None,
    title: str = "",
    no_camera: Sequence[int] = (),
) -> rrb.Blueprint:
    """The 3D scene and the views with their overlays only (per shown query and kind)."""
    return _blueprint(num_frames, kinds, 1, queries, True, grid_columns, shown_queries, title, no_camera)


def _run_sizes(result: CaptureResult, options: RecordingOptions | None) -> tuple[int, tuple[str, ...], int, int]:
    kinds = tuple(options.kinds) if options is not None else result.rows.kinds
    return result.layout.num_frames, kinds, result.rows.num_heads, len(result.rows.queries)


def default_blueprint_for(
    result: CaptureResult,
    options: RecordingOptions | None = None,
    shown_queries: Sequence[int] | None = None,
    num_queries: int | None = None,
) -> rrb.Blueprint:
    """default_blueprint sized for one run (kinds from ``options``, else all captured kinds).

    ``num_queries``: the queries of the recording, when it holds more than ``result`` (queries
    added after the run: ``interactive.QuerySession``).

    To embed it in a saved recording: ``rec.save(path, default_blueprint=default_blueprint_for(...))``
    (record_attention already sends it into its stream unless ``send_blueprint=False``).
    Standalone: ``default_blueprint_for(...).save(APPLICATION_ID, "layout.rbl")``.
    """
    s, kinds, heads, queries = _run_sizes(result, options)
    queries = queries if num_queries is None else num_queries
    title = result.model_label.title if result.model_label is not None else ""
    return default_blueprint(s, kinds, heads, queries, shown_queries=shown_queries, title=title,
                             no_camera=frames_without_camera(result))  # fmt: skip


def frames_without_camera(result: CaptureResult) -> tuple[int, ...]:
    """The frames whose predicted camera is degenerate (analysis.scene.camera_is_valid)."""
    extr, intr = cameras(result)
    return tuple(s for s in range(len(extr)) if not camera_is_valid(extr[s], intr[s]))
