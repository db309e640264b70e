"""Click a pixel after a run, get a new query: rows from the cached q/k, no second forward pass.

``capture(..., keep_qk=True)`` keeps the q and k every hooked attention module used
(``QKCache``), so the attention rows of any other token are one ``softmax(scale * q_row @ k^T)``
per (kind, block) away. ``QuerySession`` turns a pixel (or a Query) into those rows, wraps them
in a CaptureResult of the same run and logs them as query ``q{n}`` with
``recording.log_queries``; it then sends the default blueprint with the new query's dashboards
(blueprints name their entities, so a new query needs a new layout).

Where clicks come from (Rerun 0.41, see docs/interactive.md for the evidence):

- the notebook viewer (``rerun.notebook.Viewer``, package ``rerun-notebook``) reports
  ``SelectionChangeEvent``s through ``Viewer.on_event``: ``attach_to_notebook_viewer`` wires them;
- the native viewer does not report its selection to Python (``rerun.experimental.ViewerClient``
  has no selection call or event stream), so there is no click loop for the CLI. ``prompt_queries``
  reads typed queries instead (``1:120,80``): the same session, no forward pass.

Memory: the cache holds q and k, ``2 * S * P * C`` values per (kind, block) (fp32 by default), so
``2 * P * C * 4 * blocks * kinds`` bytes per frame: see ``qk_cache_bytes_per_frame``. It is only
kept when asked (``keep_qk=True``); capture fewer blocks or one kind to shrink it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import rerun as rr
import torch
from torch import nn

from vggt_attn_rerun.analysis.scene import cameras
from vggt_attn_rerun.api import as_loaded_images
from vggt_attn_rerun.core.capture import CaptureResult
from vggt_attn_rerun.core.images import LoadedImages
from vggt_attn_rerun.core.introspect import find_aggregator
from vggt_attn_rerun.core.tokens import Query, TokenLayout, parse_query
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.viz.options import RecordingOptions
from vggt_attn_rerun.viz.paths import APPLICATION_ID

PixelSpace = Literal["model", "original"]
Units = Literal["pixel", "patch", "world"]

# The entity path scheme of entities.py (Paths): world/frames/{s}/image[/attention/...|/queries/...]
# and heads/q{i}/... (the head grid, whose backdrop is the image of the query's grid view).
_FRAME_PATH = re.compile(r"world/frames/(\d+)/image(?:/(.*))?")
_HEADS_PATH = re.compile(r"heads/q(\d+)(?:/(.*))?")
# Spaces in patch units: below a Transform3D(scale=[patch, patch, 1]).
_PATCH_SPACE = (re.compile(r"world/frames/\d+/image/attention(?:/.*)?"), re.compile(r"heads/q\d+/[^/]+(?:/.*)?"))
_NON_PATCH_HEAD_CHILDREN = ("image", "query")


def _clean_path(path: str) -> str:
    """``/world/frames/2/image`` (as the viewer writes it) -> ``world/frames/2/image``."""
    return str(path).strip().strip("/")


# --------------------------------------------------------------------------------------------
# Memory of the q/k cache
# --------------------------------------------------------------------------------------------


def qk_cache_bytes_per_frame(layout: TokenLayout, embed_dim: int, num_blocks: int, num_kinds: int = 2,
                             bytes_per_value: int = 4) -> int:  # fmt: skip
    """Bytes the q/k cache costs per frame: ``2 * P * C * bytes * blocks * kinds``.

    q and k of every token are kept (any token may be clicked), ``P`` tokens per frame of ``C``
    channels (all heads together). VGGT-1B (C = 1024, 24 blocks, 2 kinds, fp32): 518x518 input
    (P = 1374) -> 540 MB per frame; 518x392 (P = 1041) -> 409 MB per frame.
    """
    return 2 * layout.tokens_per_frame * int(embed_dim) * int(bytes_per_value) * int(num_blocks) * int(num_kinds)


def model_qk_cache_bytes(model: nn.Module, layout: TokenLayout, num_blocks: int, num_kinds: int) -> int:
    """Bytes ``capture(model, ..., keep_qk=True)`` keeps for all frames of ``layout`` (fp32 cache)."""
    attn = find_aggregator(model).frame_blocks[0].attn
    embed_dim = int(attn.qkv.out_features) // 3 if hasattr(attn, "qkv") else int(attn.num_heads * attn.head_dim)
    return layout.num_frames * qk_cache_bytes_per_frame(layout, embed_dim, num_blocks, num_kinds)


# --------------------------------------------------------------------------------------------
# Selection payload -> (frame, x, y) in model pixels
# --------------------------------------------------------------------------------------------


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
    path = _clean_path(origin)
    m = _HEADS_PATH.fullmatch(path)
    if m and (m.group(2) or "").split("/")[0] in _NON_PATCH_HEAD_CHILDREN:
        return "pixel"
    return "patch" if any(p.fullmatch(path) for p in _PATCH_SPACE) else "pixel"


def click_from_selection(
    entity_path: str,
    position: Sequence[float | None] | None,
    layout: TokenLayout,
    *,
    units: Units = "pixel",
    grid_frames: Mapping[int, int] | None = None,
    world_cameras: tuple[np.ndarray, np.ndarray] | None = None,
) -> Click | None:
    """Map one selected entity and the selection position to a pixel of a frame, or None.

    Args:
        entity_path: the selected entity, with or without the leading ``/``. Understood:
            ``world/frames/{s}/image`` and everything below it (overlays ``.../attention/...``,
            query markers ``.../queries/...``): frame ``s``; ``heads/q{i}/...`` (head grid):
            frame ``grid_frames[i]``. Anything else (point cloud, 3D points, series, tensor,
            text) gives None.
        position: the event's position. Rerun fills it with the pointer in the space of the
            VIEW's origin (``pointer_in_camera_plane`` for 2D views, the picked 3D point for 3D
            views), not in the clicked entity's own space. A 2D view's z is a depth or null.
        units: the units of that space: ``pixel`` (2D views rooted at the image or the head
            grid, as in every blueprint of this package), ``patch`` (a 2D view rooted at or below
            an overlay, whose Transform3D scales patches to pixels: see ``origin_units``), or
            ``world`` (a 3D view rooted at ``world``: the point is projected into frame ``s``
            with ``world_cameras`` = (extrinsics ``[S, 3, 4]``, intrinsics ``[S, 3, 3]``)).
        grid_frames: query index -> frame shown by its head grid.

    Returns:
        Click in model input pixels, or None when the entity is not an image of a frame, there is
        no position, or the point falls outside the model image.
    """
    if position is None or len(position) < 2 or position[0] is None or position[1] is None:
        return None
    path = _clean_path(entity_path)
    m = _FRAME_PATH.fullmatch(path)
    if m:
        frame = int(m.group(1))
    else:
        h = _HEADS_PATH.fullmatch(path)
        if h is None or grid_frames is None or int(h.group(1)) not in grid_frames or units == "world":
            return None
        frame = int(grid_frames[int(h.group(1))])
    if not 0 <= frame < layout.num_frames:
        return None
    if units == "world":
        if world_cameras is None or len(position) < 3 or position[2] is None:
            return None
        extr, intr = world_cameras
        cam = extr[frame, :, :3] @ np.asarray(position[:3], np.float64) + extr[frame, :, 3]
        if not np.isfinite(cam).all() or cam[2] <= 0:
            return None
        u = intr[frame] @ cam
        x, y = float(u[0] / u[2]), float(u[1] / u[2])
    elif units == "patch":
        x, y = float(position[0]) * layout.patch_size, float(position[1]) * layout.patch_size
    elif units == "pixel":
        x, y = float(position[0]), float(position[1])
    else:
        raise UserError(f"unknown position units {units!r}: valid are pixel, patch, world")
    h_px, w_px = layout.image_size
    if not (np.isfinite(x) and np.isfinite(y) and 0 <= x < w_px and 0 <= y < h_px):
        return None
    return Click(frame, x, y, path)


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def selection_items(event: Any) -> list[tuple[str, tuple | None, str | None]]:
    """(entity_path, position, view_name) of the entity items of a selection-change event.

    Accepts ``rerun.notebook.SelectionChangeEvent`` and the viewer's JSON payload as a dict
    (``{"type": "selection_change", "items": [{"type": "entity", ...}]}``); other events give [].
    """
    if _field(event, "type") != "selection_change":
        return []
    out = []
    for item in _field(event, "items") or ():
        if _field(item, "type") != "entity" or _field(item, "entity_path") is None:
            continue
        pos = _field(item, "position")
        out.append((str(_field(item, "entity_path")), None if pos is None else tuple(pos), _field(item, "view_name")))
    return out


# --------------------------------------------------------------------------------------------
# The session
# --------------------------------------------------------------------------------------------


@dataclass
class AddedQuery:
    """One query added to the session: its index ``q{index}``, its rows, and the seconds spent."""

    index: int
    query: Query
    result: CaptureResult = field(repr=False)
    rows_seconds: float
    log_seconds: float

    @property
    def seconds(self) -> float:
        return self.rows_seconds + self.log_seconds


def _view_units(bp: Any) -> dict[str, Units]:
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

    walk(bp.root_container)
    return {name: next(iter(kinds)) for name, kinds in found.items() if len(kinds) == 1}  # type: ignore[misc]


class QuerySession:
    """New queries after a run, answered from the run's q/k cache and logged into its recording.

    Args:
        rec: the recording the run was logged into (``log_run``); new queries go there too.
        result: ``capture(..., keep_qk=True)`` of the run.
        images: the run's LoadedImages (for pixels of the original photos and the logging).
        options: the run's RecordingOptions.
        next_index: index of the first new query (default: after the run's queries).
        update_blueprint: after each new query, send ``blueprint.default_blueprint`` sized for all
            queries with the dashboards of that query only (``shown_queries=[n]``), active and
            default: the viewer's layout follows the last click (and replaces edits made to it).
        dedupe: a query already in the session (same frame and token) is not added again; its
            layout is shown again instead.
    """

    def __init__(self, rec: rr.RecordingStream, result: CaptureResult, images: LoadedImages,
                 options: RecordingOptions, *, next_index: int | None = None, update_blueprint: bool = True,
                 dedupe: bool = True) -> None:  # fmt: skip
        if result.qk_cache is None or not result.qk_cache.qk:
            raise UserError(
                "this run kept no q/k cache: capture with keep_qk=True (or use interactive.start_session) to "
                "add queries without a second forward pass"
            )
        self.rec = rec
        self.result = result
        self.images = images
        self.options = options
        self.update_blueprint = update_blueprint
        self.dedupe = dedupe
        self.queries: dict[int, Query] = dict(enumerate(result.rows.queries))
        self.next_index = len(result.rows.queries) if next_index is None else int(next_index)
        self.added: list[AddedQuery] = []
        self._cameras: tuple[np.ndarray, np.ndarray] | None = None
        self.shown: int | None = None  # the query whose dashboards the last layout sent shows
        # View name -> units of its space, from the layout this package sends (see click_from_item).
        self.view_units: dict[str, Units] = _view_units(self._blueprint())

    # -- facts ---------------------------------------------------------------------------------
    @property
    def layout(self) -> TokenLayout:
        return self.result.layout

    @property
    def cache_bytes(self) -> int:
        """Bytes held by the q/k cache of this run (all frames)."""
        return self.result.qk_cache.nbytes()  # type: ignore[union-attr]

    def grid_frames(self) -> dict[int, int]:
        """Query index -> the frame its head grid shows."""
        g = self.options.grid_view
        return {i: q.frame if g is None else int(g) for i, q in self.queries.items()}

    def world_cameras(self) -> tuple[np.ndarray, np.ndarray]:
        if self._cameras is None:
            self._cameras = cameras(self.result)
        return self._cameras

    # -- adding queries ------------------------------------------------------------------------
    def query_at(self, frame: int, x: float, y: float, space: PixelSpace = "model") -> Query:
        """The patch query under pixel (x, y) of a frame: ``model`` input pixels or ``original`` photo pixels."""
        if space == "model":
            return Query.from_model_pixel(self.layout, frame, x, y)
        if space == "original":
            self.layout.check_frame(frame)
            return Query.from_original_pixel(self.layout, frame, x, y, self.images.transforms[frame])
        raise UserError(f"unknown pixel space {space!r}: valid are model, original")

    def add_pixel(self, frame: int, x: float, y: float, space: PixelSpace = "model") -> Query:
        """Add the query under a pixel (see ``query_at``), compute its rows and log it. Returns the query."""
        query = self.query_at(frame, x, y, space)
        self.add_query(query)
        return query

    def index_of(self, query: Query) -> int | None:
        for i, q in self.queries.items():
            if (q.frame, q.local) == (query.frame, query.local):
                return i
        return None

    def rows_for(self, query: Query) -> CaptureResult:
        """The run's CaptureResult for ``query`` alone: rows from the q/k cache, same predictions and layout."""
        cache = self.result.qk_cache
        rows = cache.rows(self.layout, [query], self.result.rows.num_heads)  # type: ignore[union-attr]
        return CaptureResult(self.result.predictions, rows, self.layout, cache)

    def add_query(self, query: Query) -> int:
        """Compute the rows of ``query`` from the cache, log them as ``q{index}``; returns the index.

        With ``dedupe``, a query already in the session returns its index and logs nothing.
        """
        query.token(self.layout)  # validates the frame and token against this run
        if self.dedupe:
            known = self.index_of(query)
            if known is not None:
                if self.update_blueprint and known != self.shown:
                    self.show(known)
                return known
        from vggt_attn_rerun.viz import log_run as recording

        log_queries = getattr(recording, "log_queries", None)
        if log_queries is None:
            raise NotImplementedError(
                "vggt_attn_rerun.viz.log_run.log_queries(rec, result, images, options, first_index) is missing: "
                "this version cannot log queries added after a run"
            )
        t0 = time.perf_counter()
        result = self.rows_for(query)
        t1 = time.perf_counter()
        index = self.next_index
        log_queries(self.rec, result, self.images, self.options, first_index=index)
        self.queries[index] = query
        self.next_index = index + 1
        if self.update_blueprint:
            self.show(index)
        t2 = time.perf_counter()
        self.added.append(AddedQuery(index, query, result, t1 - t0, t2 - t1))
        return index

    def show(self, index: int) -> None:
        """Send the default layout with the dashboards of query ``index`` (active and default)."""
        self.rec.send_blueprint(self._blueprint(shown=index), make_active=True, make_default=True)
        self.shown = index

    def _blueprint(self, shown: int | None = None) -> Any:
        import rerun.blueprint as rrb

        from vggt_attn_rerun.viz.blueprint import default_blueprint

        count = max(self.queries) + 1 if self.queries else 1
        bp = default_blueprint(self.layout.num_frames, tuple(self.options.kinds), self.result.rows.num_heads, count,
                               shown_queries=None if shown is None else [shown])  # fmt: skip
        if shown is not None and isinstance(bp.root_container, rrb.Tabs):
            bp.root_container.active_tab = 0  # the shown query's first kind
        return bp

    # -- clicks --------------------------------------------------------------------------------
    def click_from_item(self, entity_path: str, position: Sequence[float | None] | None,
                        view_name: str | None = None, units: Units | None = None) -> Click | None:  # fmt: skip
        """``click_from_selection`` with this run's layout, head grids and cameras.

        The units come from the view, by name, in the layout this package sends (``view_units``),
        unless given. A view it does not know (renamed or added in the viewer): ``world`` when the
        position has a finite z (3D views give the picked 3D point), else ``pixel`` (2D views give
        a null z for images); a 2D view rooted at an overlay cannot be told apart: pass ``units``.
        """
        if units is None:
            units = self.view_units.get(view_name) if view_name is not None else None
        if units is None:
            z = position[2] if position is not None and len(position) > 2 else None
            units = "world" if z is not None and np.isfinite(z) else "pixel"
        return click_from_selection(
            entity_path, position, self.layout, units=units, grid_frames=self.grid_frames(),
            world_cameras=self.world_cameras() if units == "world" else None,
        )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Starting a session
# --------------------------------------------------------------------------------------------


def start_session(
    model: nn.Module,
    images: Any,
    queries: Sequence[Query | str],
    *,
    blocks: Sequence[int] | None = None,
    options: RecordingOptions | None = None,
    recording: rr.RecordingStream | None = None,
    autocast_dtype: torch.dtype | None = None,
    application_id: str = APPLICATION_ID,
) -> QuerySession:
    """``record_attention`` that also keeps the q/k cache, returning a QuerySession.

    One forward pass (``capture(..., keep_qk=True)``), the default blueprint, ``log_run``. The
    cache costs ``qk_cache_bytes_per_frame`` per frame: pass fewer ``blocks`` to shrink it.
    Queries: Query objects or strings (tokens.QUERY_SYNTAX; pixels of the original photos).
    """
    from vggt_attn_rerun.api import record_attention

    options = options if options is not None else RecordingOptions()
    loaded = as_loaded_images(images)
    result, rec = record_attention(model, loaded, queries, blocks=blocks, options=options, recording=recording,
                                   autocast_dtype=autocast_dtype, application_id=application_id,
                                   keep_qk=True)  # fmt: skip
    return QuerySession(rec, result, loaded, options)


# --------------------------------------------------------------------------------------------
# Event sources
# --------------------------------------------------------------------------------------------


def _report(text: str) -> None:
    print(text, flush=True)


def describe(added: AddedQuery, layout: TokenLayout) -> str:
    q = added.query
    rc = q.patch(layout)
    where = f"patch (row {rc[0]}, col {rc[1]})" if rc is not None else layout.special_names[q.local]
    return (
        f"q{added.index}: frame {q.frame} {where}: rows {added.rows_seconds * 1e3:.0f} ms "
        f"(no forward pass), logged in {added.log_seconds * 1e3:.0f} ms"
    )


@dataclass
class SelectionHandler:
    """Callable for ``rerun.notebook.Viewer.on_event``: each newly selected image pixel becomes a query.

    Items already in the previous selection are skipped (a multi-selection lists them again), so is
    a selection in another recording than the session's. ``on_added(AddedQuery)`` and
    ``on_error(str)`` report (default: one printed line each).
    """

    session: QuerySession
    on_added: Callable[[AddedQuery], None] | None = None
    on_error: Callable[[str], None] | None = None
    seen: set = field(default_factory=set)

    def __call__(self, event: Any) -> list[int]:
        if _field(event, "type") != "selection_change":
            return []
        items = selection_items(event)
        rid = _field(event, "recording_id")
        if rid is not None and rid != self.session.rec.get_recording_id():
            return []
        current = {(p, pos, v) for p, pos, v in items}
        fresh = [it for it in items if it not in self.seen]
        self.seen = current
        added = []
        for path, pos, view in fresh:
            click = self.session.click_from_item(path, pos, view)
            if click is None:
                continue
            before = len(self.session.added)
            try:
                index = self.session.add_query(self.session.query_at(click.frame, click.x, click.y))
            except (UserError, NotImplementedError) as err:
                (self.on_error or _report)(f"click on {click.entity_path} ignored: {err}")
                continue
            added.append(index)
            if len(self.session.added) > before:
                (self.on_added or (lambda a: _report(describe(a, self.session.layout))))(self.session.added[-1])
        if added:
            self.session.rec.flush()
        return added


def attach_to_notebook_viewer(viewer: Any, session: QuerySession, *,
                              on_added: Callable[[AddedQuery], None] | None = None,
                              on_error: Callable[[str], None] | None = None) -> SelectionHandler:  # fmt: skip
    """Turn clicks on images in a ``rerun.notebook.Viewer`` into new queries of ``session``.

    The viewer must show ``session.rec`` (``rr.notebook.Viewer(recording=session.rec)``). Click a
    pixel of a view (the image, its overlay or a marker), or of a head-grid image: the patch under it
    becomes ``q{n}``, logged without a forward pass, and its tab is made active. Clicks on 3D image
    planes in the 3D view are projected into that frame with the predicted cameras.
    Returns the handler (call it with an event to replay one).
    """
    if not callable(getattr(viewer, "on_event", None)):
        raise UserError(
            f"{type(viewer).__name__} has no on_event(callback): pass a rerun.notebook.Viewer "
            "(pip install 'rerun-sdk[notebook]')"
        )
    handler = SelectionHandler(session, on_added, on_error)
    viewer.on_event(handler)
    return handler


QUIT_WORDS = ("q", "quit", "exit")


def prompt_queries(session: QuerySession, lines: Iterable[str] | None = None,
                   write: Callable[[str], None] = _report, space: PixelSpace = "model") -> list[int]:  # fmt: skip
    """Read typed queries (tokens.QUERY_SYNTAX, e.g. ``1:120,80``) and add each to the session.

    The native viewer does not report clicks to Python in Rerun 0.41; hover a view to read a
    pixel position, then type it. ``space``: ``model`` (default), pixels of the logged images as
    the viewer's hover shows them; ``original``: pixels of the original photos, as ``--query``.
    ``lines``: an iterable of lines (default: ``input()`` until EOF); an empty line is skipped,
    ``q``/``quit``/``exit``, EOF or Ctrl-C stop. Returns the indices added.
    """
    if space not in ("model", "original"):
        raise UserError(f"unknown pixel space {space!r}: valid are model, original")
    pixel_maps = session.images.transforms if space == "original" else None
    source = iter(lines) if lines is not None else _input_lines()
    added: list[int] = []
    while True:
        try:
            text = next(source).strip()
        except (StopIteration, KeyboardInterrupt):
            break
        if not text:
            continue
        if text.lower() in QUIT_WORDS:
            break
        try:
            query = parse_query(text, session.layout, pixel_maps)
            before = len(session.added)
            index = session.add_query(query)
        except UserError as err:
            write(f"not added: {err}")
            continue
        session.rec.flush()
        added.append(index)
        if len(session.added) > before:
            write(describe(session.added[-1], session.layout))
        else:
            write(f"q{index} already shows this token")
    return added


def _input_lines() -> Iterable[str]:
    while True:
        try:
            yield input("new query (FRAME:X,Y | FRAME:pROW,COL | FRAME:camera | q to quit)> ")
        except EOFError:
            return
