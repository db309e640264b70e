"""Click a pixel after a run, get a new query: rows from the cached q/k, no second forward pass.

``capture(..., keep_qk=True)`` keeps the q and k every hooked attention module used
(``core.qk_cache.QKCache``), so the attention rows of any other token are one
``softmax(scale * q_row @ k^T)`` per (kind, block) away. ``QuerySession`` turns a pixel (or a
Query) into those rows, wraps them in a CaptureResult of the same run and logs them as query
``q{n}`` with ``viz.log_run.log_added_queries``; it then sends the default blueprint with the new
query's dashboards (blueprints name their entities, so a new query needs a new layout).

Where new queries come from (Rerun 0.41, see docs/interactive.md for the evidence): clicks in the
notebook viewer (``interactive.notebook``), typed queries in a terminal (``interactive.prompt``),
or code (``add_pixel``, ``add_query``). The cache's memory: ``core.qk_cache.qk_cache_bytes_per_frame``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import rerun as rr
import rerun.blueprint as rrb
import torch
from torch import nn

from vggt_attn_rerun.analysis.scene import cameras, patch_centroids, point_map
from vggt_attn_rerun.api import record_attention
from vggt_attn_rerun.core.capture import CaptureResult, QueriesLike
from vggt_attn_rerun.core.images import ImagesLike, LoadedImages, as_loaded_images
from vggt_attn_rerun.core.rows import AttentionRows
from vggt_attn_rerun.core.tokens import Query, TokenLayout
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.interactive.clicks import Click, Units, click_from_selection, view_units
from vggt_attn_rerun.viz.blueprint import default_blueprint_for
from vggt_attn_rerun.viz.log_run import log_added_queries
from vggt_attn_rerun.viz.options import RecordingOptions

PixelSpace = Literal["model", "original"]
PIXEL_SPACES: tuple[PixelSpace, ...] = ("model", "original")


def check_pixel_space(space: str) -> PixelSpace:
    if space not in PIXEL_SPACES:
        raise UserError(f"unknown pixel space {space!r}: valid are {', '.join(PIXEL_SPACES)}")
    return space  # type: ignore[return-value]


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


class QuerySession:
    """New queries after a run, answered from the run's q/k cache and logged into its recording.

    Args:
        rec: the recording the run was logged into (``log_run``); new queries go there too.
        result: ``capture(..., keep_qk=True)`` of the run.
        images: the run's LoadedImages (for pixels of the original photos and the logging).
        options: the run's RecordingOptions.
        next_index: index of the first new query (default: after the run's queries).
        update_blueprint: after each new query, send ``blueprint.default_blueprint_for`` sized for all
            queries with the dashboards of that query only (``shown_queries=[n]``), active and
            default: the viewer's layout follows the last click (and replaces edits made to it).
        dedupe: a query already in the session (same frame and token) is not added again; its
            layout is shown again instead.
    """

    def __init__(
        self,
        rec: rr.RecordingStream,
        result: CaptureResult,
        images: LoadedImages,
        options: RecordingOptions,
        *,
        next_index: int | None = None,
        update_blueprint: bool = True,
        dedupe: bool = True,
    ) -> None:
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
        self._patch_points: tuple[np.ndarray, np.ndarray] | None = None
        self.shown: int | None = None  # the query whose dashboards the last layout sent shows
        # View name -> units of its space, from the layout this package sends (see click_from_item).
        self.view_units: dict[str, Units] = view_units(self._blueprint())

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

    def patch_points(self) -> tuple[np.ndarray, np.ndarray]:
        """(centroids ``[S, gh, gw, 3]``, valid ``[S, gh, gw]``): the 3D point of each patch, as logged."""
        if self._patch_points is None:
            self._patch_points = patch_centroids(point_map(self.result, self.options), self.layout)
        return self._patch_points

    # -- adding queries ------------------------------------------------------------------------
    def query_at(self, frame: int, x: float, y: float, space: PixelSpace = "model") -> Query:
        """The patch query under pixel (x, y) of a frame: ``model`` input pixels or ``original`` photo pixels."""
        if check_pixel_space(space) == "model":
            return Query.from_model_pixel(self.layout, frame, x, y)
        self.layout.check_frame(frame)
        return Query.from_original_pixel(self.layout, frame, x, y, self.images.transforms[frame])

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
        return CaptureResult(self.result.predictions, rows, self.layout, cache, self.result.model_label)

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
        t0 = time.perf_counter()
        result = self.rows_for(query)
        t1 = time.perf_counter()
        index = self.next_index
        log_added_queries(self.rec, result, self.images, self.options, first_index=index)
        self.queries[index] = query
        self.next_index = index + 1
        if self.update_blueprint:
            self.show(index)
        t2 = time.perf_counter()
        self.added.append(AddedQuery(index, query, result, t1 - t0, t2 - t1))
        return index

    def merged_result(self) -> CaptureResult:
        """The run with every added query after its own: rows ``[L, Q + added, H, S, P]`` per kind, in
        query-index order when the session numbered them after the run's (the default), no q/k cache.

        What ``--export`` writes after a session: the run file then holds every added query too.
        """
        rows = self.result.rows
        parts = [rows] + [a.result.rows for a in self.added]
        merged = AttentionRows(
            rows.layout,
            tuple(q for part in parts for q in part.queries),
            rows.blocks,
            rows.num_heads,
            {kind: torch.cat([part.probs[kind] for part in parts], dim=1) for kind in rows.probs},
        )
        return CaptureResult(self.result.predictions, merged, self.layout, None)

    def show(self, index: int) -> None:
        """Send the default layout with the dashboards of query ``index`` (active and default)."""
        self.rec.send_blueprint(self._blueprint(shown=index), make_active=True, make_default=True)
        self.shown = index

    def show_all(self) -> None:
        """Send the default layout with a dashboard for every query (active and default): what a
        saved recording should open on after a session, not only the last query's."""
        count = max(self.queries) + 1
        bp = default_blueprint_for(self.result, self.options, shown_queries=list(range(count)), num_queries=count)
        self.rec.send_blueprint(bp, make_active=True, make_default=True)
        self.shown = None

    def _blueprint(self, shown: int | None = None) -> rrb.Blueprint:
        count = max(self.queries) + 1 if self.queries else 1
        bp = default_blueprint_for(self.result, self.options, None if shown is None else [shown], num_queries=count)
        if shown is not None and isinstance(bp.root_container, rrb.Tabs):
            bp.root_container.active_tab = 0  # the shown query's first kind
        return bp

    # -- clicks --------------------------------------------------------------------------------
    def click_from_item(
        self,
        entity_path: str,
        position: Sequence[float | None] | None,
        view_name: str | None = None,
        units: Units | None = None,
        instance_id: int | None = None,
    ) -> Click | None:
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
            entity_path,
            position,
            self.layout,
            units=units,
            grid_frames=self.grid_frames(),
            world_cameras=self.world_cameras() if units == "world" else None,
            patch_points=self.patch_points() if units == "world" else None,
            instance_id=instance_id,
        )


def start_session(model: nn.Module, images: ImagesLike, queries: QueriesLike, **record_kwargs: Any) -> QuerySession:
    """``api.record_attention`` that also keeps the q/k cache, returning a QuerySession.

    One forward pass (``record_attention(model, images, queries, keep_qk=True, **record_kwargs)``:
    ``blocks``, ``options``, ``recording``, ``autocast_dtype``... as there). The cache costs
    ``core.qk_cache.qk_cache_bytes_per_frame`` per frame: pass fewer ``blocks`` to shrink it.
    """
    if record_kwargs.get("options") is None:
        record_kwargs["options"] = RecordingOptions()
    loaded = as_loaded_images(images)
    result, rec = record_attention(model, loaded, queries, keep_qk=True, **record_kwargs)
    return QuerySession(rec, result, loaded, record_kwargs["options"])
