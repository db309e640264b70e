"""The names in a recording: the application id, the entity paths (``Paths``), the maps' dimensions.

Entity paths (``s`` a frame, ``i`` a query, ``kind`` "frame" or "global", ``h`` a head)::

    world                                       ViewCoordinates RDF: VGGT's first camera, OpenCV axes
    world/frames/{s}                            Transform3D, camera-from-world (ChildFromParent)
    world/frames/{s}/image                      Pinhole + the model-resolution input image (JPEG)
    world/frames/{s}/image/attention            Transform3D scale [patch, patch, 1]: patch grid -> pixels
    world/frames/{s}/image/attention/q{i}/{kind}  SegmentationImage [gh, gw] u8 + AnnotationContext
    world/frames/{s}/image/attention/q{i}/{kind}/peaks  Boxes2D per time (patch units): the view's hottest patches
    world/frames/{s}/image/queries/q{i}         Points2D marker at the query patch centre (+ /patch box)
    world/points                                Points3D point map, confidence-filtered, image colors
    world/queries/q{i}                          Points3D: the query's predicted 3D point
    world/attention/q{i}/{kind}                 Points3D, one per patch (positions static, colors and radii per time)
    world/attention/q{i}/{kind}/rays            LineStrips3D per time: query point -> top-k patches of other views
    world/attention/q{i}/{kind}/peaks           Boxes3D per time: around the 3D points of the peaks (2D ``peaks``)
    heads/q{i}/image                            the grid view's image (head grid backdrop)
    heads/q{i}/query                            Points2D marker of the query on that image (its own view only)
    heads/q{i}/{kind}                           Transform3D scale [patch, patch, 1] + AnnotationContext
    heads/q{i}/{kind}/{h}                       SegmentationImage of head h on the grid view (block rows;
                                                one ``head`` row: head h at the focus block)
    queries/q{i}/info                           TextDocument: the query, scales, quantization
    queries/q{i}/{kind}                         AnyValues: vmax of every map (flat [block, head, view]), blocks
    queries/q{i}/{kind}/scale                   TextDocument per time: the colour scale of the map on screen
    queries/q{i}/{kind}/maps                    Tensor u8 [block, head, view, y, x] (all maps, static)
    queries/q{i}/{kind}/mass/{view_s,camera,registers}  Scalars: attention mass per target (no camera:
                                                a layout without camera token, e.g. pi3)
    queries/q{i}/{kind}/summary/{metric}        Scalars, block timeline: one series per head + "head mean"
    queries/q{i}/{kind}/matrix/{metric}         Image [L*cell, H*cell, 3]: block x head matrix (static)
    queries/q{i}/{kind}/matrix/legend           TextDocument: rows = blocks, columns = heads, color ranges
    queries/q{i}/global/consistency/{gain,score,control_score}  Image: block x head consistency matrices
    queries/q{i}/global/consistency/peak_dist   Scalars, block timeline: peak distance (pixels, head
                                                mean), one series per valid view
    world/frames/{s}/image/queries/q{i}/projected  Points2D (magenta): the query's 3D point projected
                                                into view s (+ /cross, /window); valid views only
    queries/mean/{kind}/summary|matrix/...      the same averaged over the run's queries (Q > 1), and
    queries/mean/global/consistency/{gain,score,control_score}  (means over all valid query-view pairs)
    queries/index                               TextDocument: every query (name, token, frame, patch)
    notes                                       TextDocument: the model's label, what the 3D view cannot show
    legend/colorbar                             Image [12, 256, 3]: the colormap, 0 (cold, left) to the scale (hot)

Several models in one recording (api/comparison.py): inside ``rooted("models/{name}", depth)`` every
name above is built under that root (``models/{name}/world/points``), and rows on the ``block``
timeline also go on DEPTH_TIMELINE; outside it every name is exactly as above.

log_run.py, log_maps.py and log_summaries.py log under these names; blueprint.py lays views out on
them; ``image_frame``, ``head_grid_query`` and ``in_patch_units`` read a selected entity's path back
(interactive/clicks.py). The parsers are built from the builders, so the two cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

APPLICATION_ID = "vggt_attn_rerun"
#: the dimension names of the ``queries/q{i}/{kind}/maps`` tensor
MAP_DIMS = ("block", "head", "view", "y", "x")


#: the root of the current model's entities (``compare``: ``models/{name}``); "" = the paths above
_ROOT: ContextVar[str] = ContextVar("vggt_attn_rerun_entity_root", default="")
#: the current model's depth (blocks) when rows also go on the DEPTH_TIMELINE; None = block only
_DEPTH: ContextVar[int | None] = ContextVar("vggt_attn_rerun_depth", default=None)

#: the timeline on which models of different depth line up (``compare``): block b of a model
#: with L blocks is at ``round(DEPTH_STEPS * b / (L - 1))``, so 0 is every model's first block
#: and DEPTH_STEPS its last (block 12 of 24 -> 52, block 1 of 2 -> 100)
DEPTH_TIMELINE = "depth_percent"
DEPTH_STEPS = 100


@contextmanager
def rooted(root: str, depth: int | None = None) -> Iterator[None]:
    """Every path built inside the block lies under ``root`` (e.g. ``models/vggt/world/points``).

    The loggers and blueprints build every name through ``Paths``, so one model's whole recording
    (log_run, log_maps, log_summaries, blueprint) moves under its root without a parameter
    threaded through each of them; outside the block, and with ``root=""``, paths are unchanged.
    ``depth``: the model's number of blocks; rows on the ``block`` timeline are then also put on
    DEPTH_TIMELINE (``block_timelines``). The parsers below read unrooted paths only.
    """
    if depth is not None and depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    tokens = _ROOT.set(clean_path(root)), _DEPTH.set(depth)
    try:
        yield
    finally:
        _ROOT.reset(tokens[0])
        _DEPTH.reset(tokens[1])


def depth_steps(blocks: Sequence[int], depth: int) -> list[int]:
    """Blocks of a model with ``depth`` blocks on DEPTH_TIMELINE: ``round(DEPTH_STEPS * b / (depth - 1))``."""
    return [round(DEPTH_STEPS * int(b) / max(depth - 1, 1)) for b in blocks]


def block_timelines(timeline: str, times: Sequence[int]) -> dict[str, list[int]]:
    """Timeline name -> times of rows indexed by ``times`` on ``timeline``: the timeline itself,
    plus DEPTH_TIMELINE for ``block`` rows inside ``rooted(..., depth=L)``."""
    out = {timeline: [int(t) for t in times]}
    depth = _DEPTH.get()
    if timeline == "block" and depth is not None:
        out[DEPTH_TIMELINE] = depth_steps(times, depth)
    return out


def _rooted(path: str) -> str:
    root = _ROOT.get()
    return f"{root}/{path}" if root else path


class _RootedNames(type):
    # Class attributes that follow the root (``Paths.cloud`` stays an attribute, not a call).
    @property
    def world(cls) -> str:
        return _rooted("world")

    @property
    def cloud(cls) -> str:
        return _rooted("world/points")

    @property
    def query_index(cls) -> str:
        return _rooted("queries/index")

    @property
    def notes(cls) -> str:
        return _rooted("notes")

    @property
    def colorbar(cls) -> str:
        return _rooted("legend/colorbar")


class Paths(metaclass=_RootedNames):
    """The entity path scheme (see the module docstring); blueprints build on the same names."""

    @staticmethod
    def frame(s: int) -> str:
        return _rooted(f"world/frames/{s}")

    @staticmethod
    def image(s: int) -> str:
        return _rooted(f"world/frames/{s}/image")

    @staticmethod
    def overlay_root(s: int) -> str:
        return _rooted(f"world/frames/{s}/image/attention")

    @staticmethod
    def overlay(s: int, q: int, kind: str) -> str:
        return _rooted(f"world/frames/{s}/image/attention/q{q}/{kind}")

    @staticmethod
    def peaks(s: int, q: int, kind: str) -> str:
        return _rooted(f"world/frames/{s}/image/attention/q{q}/{kind}/peaks")

    @staticmethod
    def marker(s: int, q: int) -> str:
        return _rooted(f"world/frames/{s}/image/queries/q{q}")

    @staticmethod
    def marker_patch(s: int, q: int) -> str:
        return _rooted(f"world/frames/{s}/image/queries/q{q}/patch")

    @staticmethod
    def query_point(q: int) -> str:
        return _rooted(f"world/queries/q{q}")

    @staticmethod
    def patch_points(q: int, kind: str) -> str:
        return _rooted(f"world/attention/q{q}/{kind}")

    @staticmethod
    def peaks_3d(q: int, kind: str) -> str:
        return _rooted(f"world/attention/q{q}/{kind}/peaks")

    @staticmethod
    def rays(q: int, kind: str) -> str:
        return _rooted(f"world/attention/q{q}/{kind}/rays")

    @staticmethod
    def heads_root(q: int) -> str:
        return _rooted(f"heads/q{q}")

    @staticmethod
    def heads_backdrop(q: int) -> str:
        return _rooted(f"heads/q{q}/image")

    @staticmethod
    def heads_marker(q: int) -> str:
        return _rooted(f"heads/q{q}/query")

    @staticmethod
    def heads_kind(q: int, kind: str) -> str:
        return _rooted(f"heads/q{q}/{kind}")

    @staticmethod
    def head(q: int, kind: str, h: int) -> str:
        return _rooted(f"heads/q{q}/{kind}/{h}")

    @staticmethod
    def info(q: int) -> str:
        return _rooted(f"queries/q{q}/info")

    @staticmethod
    def scales(q: int, kind: str) -> str:
        return _rooted(f"queries/q{q}/{kind}")

    @staticmethod
    def scale_note(q: int, kind: str) -> str:
        return _rooted(f"queries/q{q}/{kind}/scale")

    @staticmethod
    def maps(q: int, kind: str) -> str:
        return _rooted(f"queries/q{q}/{kind}/maps")

    @staticmethod
    def mass_root(q: int, kind: str) -> str:
        return _rooted(f"queries/q{q}/{kind}/mass")

    @staticmethod
    def mass(q: int, kind: str, series: str) -> str:
        return _rooted(f"queries/q{q}/{kind}/mass/{series}")

    # Summaries and consistency: ``q`` is a query index, or MEAN for the mean over the run's queries.
    @staticmethod
    def summary(q: int | str, kind: str, metric: str) -> str:
        return _rooted(f"queries/{_query_name(q)}/{kind}/summary/{metric}")

    @staticmethod
    def matrix(q: int | str, kind: str, metric: str) -> str:
        return _rooted(f"queries/{_query_name(q)}/{kind}/matrix/{metric}")

    @staticmethod
    def matrix_legend(q: int | str, kind: str) -> str:
        return _rooted(f"queries/{_query_name(q)}/{kind}/matrix/legend")

    @staticmethod
    def consistency(q: int | str, name: str) -> str:
        """``gain`` / ``score`` / ``control_score`` (block x head matrices) or ``peak_dist`` (series)."""
        return _rooted(f"queries/{_query_name(q)}/global/consistency/{name}")

    @staticmethod
    def projected(s: int, q: int) -> str:
        return _rooted(f"world/frames/{s}/image/queries/q{q}/projected")

    @staticmethod
    def projected_cross(s: int, q: int) -> str:
        return _rooted(f"world/frames/{s}/image/queries/q{q}/projected/cross")

    @staticmethod
    def projected_window(s: int, q: int) -> str:
        return _rooted(f"world/frames/{s}/image/queries/q{q}/projected/window")


#: the query name of the means over the run's queries (``queries/mean/...``)
MEAN = "mean"
#: the block x head matrices of the consistency subtree
CONSISTENCY_MATRICES = ("gain", "score", "control_score")


def _query_name(q: int | str) -> str:
    return q if isinstance(q, str) else f"q{q}"


def mass_series(num_frames: int, num_cameras: int = 1) -> tuple[str, ...]:
    """Names of the mass series: ``view_0..view_{S-1}`` (patch keys of a view), ``camera`` (only
    when the layout has a camera token), ``registers``."""
    return tuple(f"view_{s}" for s in range(num_frames)) + ("camera",) * bool(num_cameras) + ("registers",)


# --------------------------------------------------------------------------------------------
# Reading paths back: the regexes are the builders above applied to capture groups
# --------------------------------------------------------------------------------------------

_INDEX = r"(\d+)"
_BELOW = r"(?:/.*)?"  # the entity itself or any entity below it
_IMAGE_OR_BELOW = re.compile(Paths.image(_INDEX) + _BELOW)
_HEADS_OR_BELOW = re.compile(Paths.heads_root(_INDEX) + _BELOW)
_PATCH_POINTS = re.compile(Paths.patch_points(_INDEX, "[^/]+"))
# Entities below a Transform3D(scale=[patch, patch, 1]): their 2D space is the patch grid.
_PATCH_UNITS = re.compile("|".join([Paths.overlay_root(_INDEX) + _BELOW, Paths.heads_kind(_INDEX, "[^/]+") + _BELOW]))
# The children of heads/q{i} that are drawn in the pixels of the grid view's image.
_HEADS_PIXEL_CHILDREN = re.compile(
    "|".join([Paths.heads_backdrop(_INDEX) + _BELOW, Paths.heads_marker(_INDEX) + _BELOW])
)


def clean_path(path: str) -> str:
    """``/world/frames/2/image`` (as the viewer writes it) -> ``world/frames/2/image``."""
    return str(path).strip().strip("/")


def image_frame(path: str) -> int | None:
    """Frame ``s`` of ``world/frames/{s}/image`` or of any entity below it (overlays, markers); else None."""
    m = _IMAGE_OR_BELOW.fullmatch(clean_path(path))
    return int(m.group(1)) if m else None


def head_grid_query(path: str) -> int | None:
    """Query ``i`` of ``heads/q{i}`` or of any entity below it (the head grid of query i); else None."""
    m = _HEADS_OR_BELOW.fullmatch(clean_path(path))
    return int(m.group(1)) if m else None


def is_scene_point(path: str) -> bool:
    """True for the 3D points that stand for pixels of the views: the point cloud and every
    query's patch points (``world/points``, ``world/attention/...``), at the root of a recording."""
    p = clean_path(path)
    return p == clean_path(Paths.cloud) or p.startswith(clean_path(Paths.world) + "/attention/")


def is_patch_points(path: str) -> bool:
    """True for a query's patch points (``world/attention/q{i}/{kind}``, not its rays or peaks):
    instance k is the k-th kept patch in (frame, row, col) order (``analysis.scene.patch_centroids``)."""
    return _PATCH_POINTS.fullmatch(clean_path(path)) is not None


def in_patch_units(path: str) -> bool:
    """True for an entity whose 2D space is the patch grid (one unit = one patch), else pixels.

    That is the subtree of an overlay root (``world/frames/{s}/image/attention``) and of a head
    grid's kind (``heads/q{i}/{kind}``), which log a ``Transform3D(scale=[patch, patch, 1])``.
    """
    path = clean_path(path)
    return _PATCH_UNITS.fullmatch(path) is not None and _HEADS_PIXEL_CHILDREN.fullmatch(path) is None
