"""One scene of a study: one forward pass, then its rows of the study table.

Per scene: the photos of its folder (``core.images``; or of its ``images/`` sub-folder), its
true cameras when it brings them (``cameras.npz`` or a COLMAP ``sparse/`` folder: ``io.cameras``;
then the geometry scores use them, ``reference = truth``), a query grid over the reference view
(``api.query_grid``), ONE forward pass for all queries (``core.capture.capture``), then per (kind,
block, head) the summaries averaged over the queries (``analysis.summaries``) and, for global
attention, the correspondence score of ``analysis.consistency`` and the epipolar score of
``analysis.epipolar``, each with its positional control. The table has one row per (kind,
block, head); its columns:

- ``scene``, ``kind``, ``block``, ``head``; ``frames`` (S) and ``queries`` (Q) of the scene;
- ``own_view_mass`` .. ``top_k_mass`` (summaries.METRICS): means over the queries;
- ``reference``: ``"truth"`` when the scene brought cameras (and depth) and the geometry
  scores use them, ``"model"`` when they use VGGT's own predictions (``""`` for frame rows);
- three measures, each with its null (the exact expectation for a head uniform over the view's
  patches, same windows and exclusions) and ``*_gain`` (larger is better, a uniform head scores 0):
  ``correspondence_score`` / ``_null`` / ``_gain`` (``Consistency.score`` / ``null_score`` /
  ``gain``: the share of a head's patch mass on a view within ``radius`` patches of the
  projected query point, gain = score - null); ``peak_dist`` / ``_null`` / ``_gain`` (patches
  from the peak to the projected patch, gain = null - distance); ``epipolar_dist`` / ``_null`` /
  ``_gain`` (Sampson distance in model pixels of the peak to the query's epipolar line, gain =
  null - distance). All are means over the valid (query, view) pairs;
- ``correspondence_beyond_position_gain`` (``Consistency.beyond_position_gain_score``): the
  attention per patch near the projection but not near the query's own (row, col), minus that
  near the query's own (row, col) but not near the projection, scaled to a share (null 0: a
  uniform head scores 0, and so does a head on the query's own position where the two windows
  share it); mean over the valid pairs where both sides are non-empty;
- ``peak_dist_beyond_position_gain`` / ``epipolar_beyond_position_gain``
  (``Consistency.peak_beyond_position_gain_score`` / ``Epipolar.beyond_position_gain_score``): the
  same distances of a peak on the query's own (row, col) minus the peak's (null 0: a head that
  follows position scores 0);
- ``correspondence_control`` / ``epipolar_control``: the positional controls (the scores of the
  query's own (row, col));
- a head is a finding for a gain (``summary.parquet``'s q-values) only where it beats both its
  uniform null and position (``POSITION_GAINS``, ``analysis.significance.finding_p``);
- ``correspondence_pairs`` / ``epipolar_pairs``: the valid (query, view) pairs behind them.

Frame-attention rows have NaN geometry metrics and 0 pairs (frame attention stays in its view).

With ``StudyOptions.ablate`` (``heads``, ``blocks`` or ``knockout``) each scene also gets, after the
capture, an ablation sweep (``core.interventions.sweep`` over the study's kinds and blocks, measured
by ``api.ablate``) and its effect table: one row per intervention, EFFECT_SCHEMA columns ``scene``,
``kind``, ``block``, ``head`` (-1 for whole blocks and knockouts), ``ablation`` (``zero``/``mean``;
``knockout`` for knockouts) and the effects of ``analysis.effects.EFFECTS``.
"""

from __future__ import annotations

import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from vggt_attn_rerun.analysis.consistency import geometric_consistency
from vggt_attn_rerun.analysis.effects import EFFECTS
from vggt_attn_rerun.analysis.epipolar import epipolar_consistency
from vggt_attn_rerun.analysis.reference import Geometry, truth_geometry
from vggt_attn_rerun.analysis.summaries import METRICS, summarize
from vggt_attn_rerun.api import BadInput, query_grid
from vggt_attn_rerun.api.ablation import ablate
from vggt_attn_rerun.batch.inputs import Scene
from vggt_attn_rerun.core.capture import CaptureResult, capture
from vggt_attn_rerun.core.images import LoadedImages, expand_image_paths, load_images
from vggt_attn_rerun.core.interventions import ABLATIONS, WHATS, sweep
from vggt_attn_rerun.core.introspect import check_kinds, model_depth, model_patch_size
from vggt_attn_rerun.core.loading import DEFAULT_MODEL, load_model
from vggt_attn_rerun.core.resources import DTYPES, resolve_device
from vggt_attn_rerun.core.tokens import parse_index_list
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.io.cameras import find_cameras, read_cameras
from vggt_attn_rerun.viz.log_dataset import save_scene_recording
from vggt_attn_rerun.viz.options import RecordingOptions

GEOMETRY_METRICS = (
    "correspondence_score",
    "correspondence_null",
    "correspondence_gain",
    "correspondence_control",
    "correspondence_beyond_position_gain",
    "peak_dist",
    "peak_dist_null",
    "peak_dist_gain",
    "peak_dist_beyond_position_gain",
    "epipolar_dist",
    "epipolar_null",
    "epipolar_gain",
    "epipolar_control",
    "epipolar_beyond_position_gain",
)
#: the gains (score against its null, larger is better): the measures a study ranks and tests
GAIN_METRICS = ("correspondence_gain", "correspondence_beyond_position_gain", "peak_dist_gain", "epipolar_gain")
#: per gain, its gain against position: a finding must beat both (a head on the query's own
#: (row, col) beats a uniform null near the correspondence whenever the camera moves little)
POSITION_GAINS = {
    "correspondence_gain": "correspondence_beyond_position_gain",
    "correspondence_beyond_position_gain": "correspondence_gain",
    "peak_dist_gain": "peak_dist_beyond_position_gain",
    "epipolar_gain": "epipolar_beyond_position_gain",
}
#: every metric column of the study table, in order
METRIC_COLUMNS = (*METRICS, *GEOMETRY_METRICS)
KEY_COLUMNS = ("scene", "kind", "block", "head")
COUNT_COLUMNS = ("frames", "queries", "correspondence_pairs", "epipolar_pairs")
SCHEMA = pa.schema(
    [
        ("scene", pa.string()),
        ("kind", pa.string()),
        ("block", pa.int32()),
        ("head", pa.int32()),
        ("reference", pa.string()),
    ]
    + [(c, pa.int32()) for c in COUNT_COLUMNS]
    + [(m, pa.float64()) for m in METRIC_COLUMNS]
)
#: the ``head`` of an intervention on a whole block (block ablations, cross-view knockouts)
WHOLE_BLOCK = -1
EFFECT_KEY_COLUMNS = ("scene", "kind", "block", "head", "ablation")
EFFECT_SCHEMA = pa.schema(
    [
        ("scene", pa.string()),
        ("kind", pa.string()),
        ("block", pa.int32()),
        ("head", pa.int32()),
        ("ablation", pa.string()),
    ]
    + [(e, pa.float64()) for e in EFFECTS]
)


@dataclass(frozen=True)
class StudyOptions:
    """The same for every scene of a study. ``identity()`` is what resuming must match."""

    model: str = DEFAULT_MODEL
    grid: tuple[int, int] = (8, 8)
    frame: int = 0
    kinds: tuple[str, ...] = ("frame", "global")
    blocks: str = "all"
    mode: str = "crop"
    image_size: int = 518
    frames: int | None = None  # the first N photos of each scene (by name); None: all
    top_k: int = 10
    radius: int = 1
    dtype: str = "auto"
    device: str = "auto"
    rrd: bool = False
    ablate: str | None = None  # None, or an intervention sweep per scene: heads, blocks or knockout
    ablation: str = "zero"  # zero or mean (heads and blocks)

    def __post_init__(self) -> None:
        if self.ablate is not None and self.ablate not in WHATS:
            raise UserError(f"--ablate {self.ablate}: valid are {', '.join(WHATS)}")
        if self.ablation not in ABLATIONS:
            raise UserError(f"--ablation {self.ablation}: valid are {', '.join(ABLATIONS)}")
        object.__setattr__(self, "kinds", check_kinds(tuple(self.kinds)))
        object.__setattr__(self, "grid", tuple(int(v) for v in self.grid))
        if self.dtype not in DTYPES:
            raise UserError(f"unknown dtype {self.dtype!r}: valid are {', '.join(DTYPES)}")
        if self.frames is not None and self.frames < 1:
            raise UserError(f"frames must be >= 1 or None, got {self.frames}")
        RecordingOptions(kinds=self.kinds, top_k=self.top_k, consistency_radius=self.radius)  # checks them

    def identity(self) -> dict[str, Any]:
        """The options that change results (not where the model runs, nor the optional .rrd).
        Without --ablate the ablation settings are left out: studies made before they existed resume."""
        skip = ("device", "rrd") if self.ablate is not None else ("device", "rrd", "ablate", "ablation")
        return {k: v for k, v in self.to_json().items() if k not in skip}

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["grid"], d["kinds"] = list(self.grid), list(self.kinds)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StudyOptions:
        names = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})

    def recording_options(self) -> RecordingOptions:
        return RecordingOptions(kinds=self.kinds, top_k=self.top_k, consistency_radius=self.radius)


#: fewer views than this cannot be scored (every geometry score compares a view with another)
MIN_FRAMES = 2


def scene_photos(scene: Scene, options: StudyOptions) -> list[Path]:
    """The photos of the scene that a study uses (the first ``options.frames`` by name when set);
    UserError when the folder cannot give them (missing, empty, fewer than MIN_FRAMES, fewer than
    --frames or --frame needs). The photos are the images in the scene folder or, when it has none,
    in its ``images/`` sub-folder (the COLMAP layout: ``images/`` beside ``sparse/``). Reads the
    folder, not the photos: cheap enough to check every scene before the model."""
    if not scene.path.is_dir():
        if scene.path.is_symlink():
            raise UserError(f"scene {scene.name}: {scene.path} is a symbolic link that loops or points nowhere")
        what = "is not a folder" if scene.path.exists() else "does not exist"
        raise UserError(f"scene {scene.name}: {scene.path} {what}")
    try:
        folder = (
            scene.path / "images" if (scene.path / "images").is_dir() and not _has_images(scene.path) else scene.path
        )
        paths = expand_image_paths([folder])
    except OSError as e:
        raise UserError(f"scene {scene.name}: cannot read {scene.path} ({e.strerror or e})") from None
    if options.frames is not None:
        if len(paths) < options.frames:
            raise UserError(f"scene {scene.name} has {len(paths)} photos, --frames {options.frames} needs that many")
        paths = paths[: options.frames]
    if options.frame >= len(paths):
        raise UserError(f"scene {scene.name} has {len(paths)} photos: --frame {options.frame} is not one of them")
    if len(paths) < MIN_FRAMES:
        raise UserError(
            f"scene {scene.name} has {len(paths)} photo(s): a scene needs at least {MIN_FRAMES} views (the geometry "
            "scores compare a view with the others)"
        )
    return paths


def _has_images(folder: Path) -> bool:
    try:
        return bool(expand_image_paths([folder]))
    except UserError:
        return False


def scene_images(scene: Scene, options: StudyOptions, patch_size: int) -> LoadedImages:
    """The scene's photos as model input (``scene_photos``)."""
    paths = scene_photos(scene, options)
    return load_images(paths, mode=options.mode, target_size=options.image_size, patch_size=patch_size)


def check_against_model(model: torch.nn.Module, options: StudyOptions) -> None:
    """What the options ask of the model, checked once before any scene (BadInput): the blocks
    exist, and the query grid fits the largest patch grid a photo can have at --image-size."""
    depth = model_depth(model)
    try:
        parse_index_list(options.blocks, depth)
    except UserError as e:
        raise BadInput(f"--blocks {options.blocks}: {e}") from None
    most = options.image_size // model_patch_size(model)
    rows, cols = options.grid
    if rows > most or cols > most:
        raise BadInput(
            f"--query-grid {rows}x{cols}: at --image-size {options.image_size} a frame has at most {most}x{most} "
            f"patches (rows x columns); use at most {most}x{most}"
        )


def capture_scene(model: torch.nn.Module, images: LoadedImages, options: StudyOptions,
                  autocast: torch.dtype | None = None) -> CaptureResult:  # fmt: skip
    """ONE forward pass: the rows of the query grid over ``options.frame`` in every chosen block."""
    rows, cols = options.grid
    blocks = parse_index_list(options.blocks, model_depth(model))
    return capture(model, images, lambda lay: query_grid(lay, options.frame, rows, cols), blocks=blocks,
                   kinds=options.kinds, autocast_dtype=autocast)  # fmt: skip


def scene_table(name: str, result: CaptureResult, images: LoadedImages, options: StudyOptions,
                geometry: Geometry | None = None) -> pa.Table:  # fmt: skip
    """The scene's rows (see the module docstring): one per (kind, block, head), SCHEMA columns.

    ``geometry``: the scene's true cameras in model pixels (``reference.truth_geometry``); None:
    VGGT's own. Truth without depth leaves the point-based columns NaN (they need depth).
    """
    rows = result.rows
    l_, h_ = len(rows.blocks), rows.num_heads
    parts = []
    for kind in options.kinds:
        summary = summarize(rows, kind, top_k=options.top_k).mean_over_queries()
        cols: dict[str, Any] = {m: getattr(summary, m)[:, 0, :] for m in METRICS}  # [L, H] each
        nan = np.full((l_, h_), np.nan)
        geo: dict[str, np.ndarray] = {m: nan for m in GEOMETRY_METRICS}
        pairs = (0, 0)
        reference = ""
        if kind == "global":
            reference = geometry.reference if geometry is not None else "model"
            epi = epipolar_consistency(rows, result.predictions, geometry=geometry)
            geo.update({
                "epipolar_dist": epi.score,
                "epipolar_null": epi.null_score,
                "epipolar_gain": epi.gain_score,
                "epipolar_control": epi.control_score,
                "epipolar_beyond_position_gain": epi.beyond_position_gain_score,
            })  # fmt: skip
            pairs = (0, int(epi.valid.sum()))
            if geometry is None or geometry.depth is not None:
                cons = geometric_consistency(rows, result.predictions, radius=options.radius,
                                             transforms=images.transforms, geometry=geometry)  # fmt: skip
                geo.update({
                    "correspondence_score": cons.score,
                    "correspondence_null": cons.null_score,
                    "correspondence_gain": cons.gain,
                    "correspondence_control": cons.control_score,
                    "correspondence_beyond_position_gain": cons.beyond_position_gain_score,
                    "peak_dist": cons.peak_dist_score,
                    "peak_dist_null": cons.peak_null_score,
                    "peak_dist_gain": cons.peak_gain_score,
                    "peak_dist_beyond_position_gain": cons.peak_beyond_position_gain_score,
                })  # fmt: skip
                pairs = (int(cons.valid.sum()), pairs[1])
        cols.update(geo)
        block, head = np.meshgrid(np.asarray(rows.blocks), np.arange(h_), indexing="ij")
        n = l_ * h_
        data = {
            "scene": [name] * n,
            "kind": [kind] * n,
            "reference": [reference] * n,
            "block": block.ravel(),
            "head": head.ravel(),
            "frames": np.full(n, rows.layout.num_frames),
            "queries": np.full(n, len(rows.queries)),
            "correspondence_pairs": np.full(n, pairs[0]),
            "epipolar_pairs": np.full(n, pairs[1]),
        }
        data.update({m: np.asarray(cols[m], np.float64).ravel() for m in METRIC_COLUMNS})
        parts.append(pa.Table.from_pydict(data, schema=SCHEMA))
    return pa.concat_tables(parts)


def scene_effects(name: str, model: torch.nn.Module, images: LoadedImages, options: StudyOptions,
                  autocast: torch.dtype | None = None) -> pa.Table:  # fmt: skip
    """The scene's effect table (module docstring): ``options.ablate`` swept over the study's kinds
    and blocks, each intervention measured by ``api.ablate`` against the scene's unablated forward."""
    blocks = parse_index_list(options.blocks, model_depth(model))
    interventions = sweep(model, options.ablate, options.kinds, blocks, options.ablation)
    effects = ablate(model, images, interventions, autocast_dtype=autocast, keep_moved=())
    n = len(interventions)
    data: dict[str, Any] = {
        "scene": [name] * n,
        "kind": [iv.kind for iv in interventions],
        "block": [iv.block for iv in interventions],
        "head": [getattr(iv, "head", WHOLE_BLOCK) for iv in interventions],
        "ablation": [getattr(iv, "ablation", "knockout") for iv in interventions],
    }
    data.update({e: effects.values[e] for e in EFFECTS})
    return pa.Table.from_pydict(data, schema=EFFECT_SCHEMA)


def scene_truth(scene: Scene, images: LoadedImages) -> Geometry | None:
    """The scene's true cameras (and depth) in model pixels, when its folder brings them, else None.

    ``cameras.npz``, ``sparse/0/`` or ``sparse/`` in the scene folder (``io.cameras.find_cameras``),
    matched to the photos by file name and mapped through their resize/crop.
    """
    found = find_cameras(scene.path)
    if found is None or images.paths is None:
        return None
    extr, intr, depth = read_cameras(found).for_photos(images.paths)
    return truth_geometry(extr, intr, depth, images.transforms)


@dataclass
class SceneOutcome:
    """What one scene gave: its table (and its recording with ``--rrd``), or why it failed.

    ``rrd``: a complete .rrd in the temporary folder of its SceneRunner (there while the runner
    lives; ``StudyFolder.save`` moves it in), or its bytes (what a Ray worker sends back).
    """

    scene: Scene
    table: pa.Table | None = None
    rrd: Path | bytes | None = None
    effects: pa.Table | None = None  # with --ablate: the scene's effect table (EFFECT_SCHEMA)
    error: str | None = None
    details: str = field(default="", repr=False)
    seconds: float = 0.0


def _reason(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    first = " ".join(lines[0].split()) if lines else ""
    return first if isinstance(e, UserError) else f"{type(e).__name__}: {first}"


class SceneRunner:
    """Loads the model once, then runs scenes one by one; a failing scene becomes an outcome, never a raise."""

    def __init__(self, options: StudyOptions, model: torch.nn.Module | None = None) -> None:
        self.options = options
        self.device, self.autocast = resolve_device(options.device, options.dtype)
        self.model = model if model is not None else load_model(options.model, device=self.device)
        check_against_model(self.model, options)
        # --rrd: each scene's recording streams into a file here first (removed with the runner).
        self._recordings = tempfile.TemporaryDirectory(prefix="vggt-attn-rerun-scenes-") if options.rrd else None

    def __call__(self, scene: Scene) -> SceneOutcome:
        start = time.perf_counter()
        try:
            images = scene_images(scene, self.options, model_patch_size(self.model))
            geometry = scene_truth(scene, images)
            result = capture_scene(self.model, images, self.options, self.autocast)
            table = scene_table(scene.name, result, images, self.options, geometry)
            rrd = None
            if self._recordings is not None:
                rrd = Path(self._recordings.name) / f"{scene.key}.rrd"
                save_scene_recording(result, images, self.options.recording_options(), scene.name, rrd)
            del result  # the captured rows are not needed by the sweep
            effects = None
            if self.options.ablate is not None:
                effects = scene_effects(scene.name, self.model, images, self.options, self.autocast)
            return SceneOutcome(scene, table, rrd, effects, seconds=time.perf_counter() - start)
        except Exception as e:  # one bad scene must not stop the study: it is reported instead
            details = "" if isinstance(e, UserError) else traceback.format_exc()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # after an out-of-memory error the next scene may still fit
            return SceneOutcome(scene, error=_reason(e), details=details, seconds=time.perf_counter() - start)
