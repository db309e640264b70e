"""Save a captured run to one file and open it again without the model.

Format: one ``.npz`` archive (``numpy.savez_compressed``) of plain arrays, read back with
``numpy.load(..., allow_pickle=False)``: no pickles anywhere (strings are fixed-width unicode
arrays, metadata is JSON text). Why npz and not safetensors: numpy is a core dependency while
safetensors is an optional extra; npz holds strings and integer metadata as ordinary arrays,
is compressed (images, depth and point maps shrink), and every member can be read alone, which
keeps ``is_run_file`` cheap.

Members (format ``FORMAT_NAME``, version ``FORMAT_VERSION``):

- ``__format__``, ``format_version``: unicode scalars identifying the file;
- ``layout``: int64 ``[5]`` (num_frames, grid_h, grid_w, patch_size, num_registers);
- ``kinds``: unicode ``[K]``; ``blocks``: int64 ``[L]``; ``num_heads``: int64 scalar;
- ``queries``: int64 ``[Q, 2]`` (frame, index within frame); ``query_labels``: unicode ``[Q]``;
- ``probs_<kind>``: ``[L, Q, H, S, P]`` raw probabilities, stored in the dtype they were
  captured in (fp32 by default: bit-exact on reload; fp16 if captured so), unless ``save_run``
  is given ``probs_dtype`` (fp16 halves the file at ~5e-4 relative rounding);
- ``pred_<name>`` for ``pose_enc, depth, depth_conf, world_points, world_points_conf`` (those
  present), full resolution, exact; ``dtypes`` (JSON) records each tensor's torch dtype (a bf16
  tensor is stored as its exact fp32 upcast and cast back on load);
- ``images_uint8``: ``[S, H, W, 3]`` uint8 input images; ``images_float32`` ``[S, 3, H, W]`` is
  added only when the input tensor is not exactly ``uint8 / 255`` (tensors passed by the user),
  so that the reloaded tensor is always equal to the original;
- ``transforms``: float64 ``[S, F]``, one row per frame holding ``images.FrameTransform``'s F
  fields in their declared order; ``image_paths``: unicode ``[S]`` (only when the images came from files);
- ``model_label``: unicode ``[2]``, the ``core.loading.ModelLabel`` (title, note) of a random or
  constructed model (only when the model carried one);
- ``extra_json``: JSON text of the JSON-serializable entries of ``extra``; ``extra_<name>`` for
  its numpy-array entries (numeric, bool or str arrays).

Not saved: ``pose_enc_list`` and ``images`` of the predictions (the input images are saved
once, as above), track outputs, and the q/k cache (``CaptureResult.qk_cache`` is None on load).
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from vggt_attn_rerun.core.capture import CaptureResult
from vggt_attn_rerun.core.images import FrameTransform, LoadedImages
from vggt_attn_rerun.core.introspect import KINDS
from vggt_attn_rerun.core.loading import ModelLabel
from vggt_attn_rerun.core.rows import AttentionRows
from vggt_attn_rerun.core.tokens import Query, TokenLayout
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.io.atomic import write_file
from vggt_attn_rerun.io.checked_npz import CheckedNpz, NpzDamaged, first_member, read_bound, read_identity

FORMAT_NAME = "vggt-attn-rerun/run"
FORMAT_VERSION = "1"
RUN_SUFFIX = ".npz"
#: the predictions a run file keeps (the ones the viewer displays)
SAVED_PREDICTIONS = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf")

#: FrameTransform's fields, in the order of a ``transforms`` row (the one place that order is written)
_TRANSFORM_FIELDS = tuple(f.name for f in dataclasses.fields(FrameTransform))
_TRANSFORM_INTS = frozenset(f.name for f in dataclasses.fields(FrameTransform) if f.type in (int, "int"))


def _json_default(obj: object) -> object:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def extra_members(extra: Mapping[str, object] | None) -> dict[str, np.ndarray]:
    """The ``extra`` metadata of a run file as members: JSON values in ``extra_json``, arrays as ``extra_<name>``."""
    if not extra:
        return {"extra_json": np.array("{}")}
    plain: dict[str, object] = {}
    arrays: dict[str, np.ndarray] = {}
    for key, value in extra.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise UserError(f"extra key {key!r} must be a Python identifier (letters, digits, _)")
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        if isinstance(value, np.ndarray):
            if key == "json":
                raise UserError("extra key 'json' is reserved: pick another name for this array")
            if value.dtype.kind not in "biufcU":
                raise UserError(f"extra array {key!r} has dtype {value.dtype}: valid are numeric, bool or str arrays")
            arrays[f"extra_{key}"] = value
        else:
            plain[key] = value
    try:
        text = json.dumps(plain, default=_json_default)
    except (TypeError, ValueError) as e:
        raise UserError(f"extra must hold JSON-serializable values or numpy arrays: {e}") from None
    return {"extra_json": np.array(text), **arrays}


_MAX_LAYOUT = 1 << 20  # largest layout value, block index or head count a file may declare
#: how far a saved row's sum may be from 1 (fp16 or bf16 rows round each probability by < 0.4%)
ROW_SUM_TOLERANCE = 0.01
#: what showing a run allocates beyond the rows, per byte of ONE query's rows of one kind: the
#: logging works a query at a time, in float64 (a 2x copy and up to three temporaries of its size)
LOGGING_BYTES_PER_QUERY_ROW_BYTE = 8
_INT, _STR = "iu", "U"

_TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
#: how each torch dtype is stored (numpy has no bf16: its exact fp32 upcast is)
_STORED_AS = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "bfloat16": np.dtype("<f4"),
              "float64": np.dtype("<f8")}  # fmt: skip


def _dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _TORCH_DTYPES:
        raise UserError(f"cannot save tensors of dtype {dtype}: valid are {', '.join(_TORCH_DTYPES)}")
    return name


def _to_numpy(t: torch.Tensor) -> tuple[np.ndarray, str]:
    """A tensor as a numpy array numpy can store exactly, and its torch dtype name."""
    name = _dtype_name(t.dtype)
    t = t.detach().to("cpu")
    if t.dtype == torch.bfloat16:  # numpy has no bf16: fp32 holds every bf16 value exactly
        t = t.to(torch.float32)
    return np.ascontiguousarray(t.numpy()), name


def _from_numpy(a: np.ndarray, dtype_name: str) -> torch.Tensor:
    return torch.from_numpy(a).to(_TORCH_DTYPES[dtype_name])  # read_array's arrays are fresh: no copy


def _images_uint8(tensor: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """``[S, 3, H, W]`` float in [0, 1] -> ``[S, H, W, 3]`` uint8, and the float32 tensor when
    uint8 cannot reproduce it exactly (else None)."""
    t = tensor.detach().to("cpu", torch.float32)
    u8 = (t * 255).round().clamp(0, 255).to(torch.uint8)
    back = u8.to(torch.float32).div(255)
    exact = bool(torch.equal(back, t))
    return u8.permute(0, 2, 3, 1).contiguous().numpy(), (None if exact else t.contiguous().numpy())


def _members(result: CaptureResult, images: LoadedImages, extra: Mapping[str, object] | None,
             probs_dtype: torch.dtype | None) -> dict[str, np.ndarray]:  # fmt: skip
    rows, lay = result.rows, result.layout
    if rows.layout != lay:
        raise UserError("the capture's rows and result have different token layouts")
    if images.layout_hw != lay.image_size or images.tensor.shape[0] != lay.num_frames:
        (h, w), (lh, lw) = images.layout_hw, lay.image_size
        raise UserError(
            f"images [{images.tensor.shape[0]}, 3, {h}, {w}] do not match the capture's layout "
            f"({lay.num_frames} frames of {lh}x{lw} pixels)"
        )
    if len(images.transforms) != lay.num_frames:
        raise UserError(f"got {len(images.transforms)} frame transforms for {lay.num_frames} frames")
    if lay.num_cameras != 1:  # the saved layout assumes VGGT's camera token before the registers
        raise UserError("--export does not support models without a camera token (pi3) yet; use --save")
    dtypes: dict[str, str] = {}
    m: dict[str, np.ndarray] = {
        "__format__": np.array(FORMAT_NAME),
        "format_version": np.array(FORMAT_VERSION),
        "layout": np.array([lay.num_frames, lay.grid_h, lay.grid_w, lay.patch_size, lay.num_registers], np.int64),
        "kinds": np.array(list(rows.probs), dtype=np.str_),
        "blocks": np.array(rows.blocks, np.int64),
        "num_heads": np.array(rows.num_heads, np.int64),
        "queries": np.array([(q.frame, q.local) for q in rows.queries], np.int64).reshape(-1, 2),
        "query_labels": np.array([q.label for q in rows.queries], dtype=np.str_),
    }
    for kind, probs in rows.probs.items():
        if probs_dtype is not None:
            probs = probs.to(probs_dtype)
        m[f"probs_{kind}"], dtypes[f"probs_{kind}"] = _to_numpy(probs)
    for name in SAVED_PREDICTIONS:
        value = result.predictions.get(name)
        if isinstance(value, torch.Tensor):
            m[f"pred_{name}"], dtypes[f"pred_{name}"] = _to_numpy(value)
    m["dtypes"] = np.array(json.dumps(dtypes))
    u8, f32 = _images_uint8(images.tensor)
    m["images_uint8"] = u8
    if f32 is not None:
        m["images_float32"] = f32
    m["transforms"] = np.array(
        [[getattr(t, f) for f in _TRANSFORM_FIELDS] for t in images.transforms], np.float64
    ).reshape(-1, len(_TRANSFORM_FIELDS))
    if images.paths is not None:
        m["image_paths"] = np.array([str(p) for p in images.paths], dtype=np.str_)
    if result.model_label is not None:  # a random or constructed model: the replay says so too
        m["model_label"] = np.array([result.model_label.title, result.model_label.note], dtype=np.str_)
    m.update(extra_members(extra))
    return m


def save_run(
    path: str | os.PathLike[str],
    result: CaptureResult,
    images: LoadedImages,
    extra: Mapping[str, object] | None = None,
    probs_dtype: torch.dtype | None = None,
) -> Path:
    """Write a capture and its input images to ONE ``.npz`` file (see the module docstring).

    The file is written to a temporary name in the same folder and renamed over ``path`` only
    once complete, so an error never leaves a partial file under ``path`` (an existing file there
    stays untouched until the rename). Errors of the file system (no space, no permission) raise
    UserError naming ``path``; the temporary file is removed on any error.

    Args:
        path: the file to write (``.npz`` suggested; the name is used as given).
        result: what ``capture`` returned; images: what was fed to the model.
        extra: optional metadata: JSON-serializable values and/or numpy arrays (``load_extra``).
        probs_dtype: store the rows in this dtype (default: as captured; fp32 rows reload bit-exact).

    Returns:
        The path written.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"cannot save run to {path}: folder {folder} does not exist")
    if probs_dtype is not None:
        _dtype_name(probs_dtype)
    members = _members(result, images, extra, probs_dtype)
    if path.is_dir():
        raise UserError(f"cannot save run to {path}: it is a folder, give a file name such as run.npz")
    write_file(path, lambda f: np.savez_compressed(f, **members), overwrite=True, action=f"save run to {path}")
    return path


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _format_of(path: Path) -> tuple[str, str] | None:
    """(format name, version) of an npz of ours, or None. Safe on any file (checked_npz.read_identity)."""
    fmt = read_identity(path, ("__format__", "format_version"))
    return None if fmt is None else (fmt[0], fmt[1])


def _cut_short(path: Path) -> bool:
    """A run file whose end is lost (a copy cut short): its zip directory cannot be read, but its
    first member, read from its local header, is the format name (checked_npz.first_member)."""
    try:
        with zipfile.ZipFile(path):
            return False
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, NotImplementedError):
        pass
    first = first_member(path)
    return first is not None and first[0] == "__format__.npy" and FORMAT_NAME.encode("utf-32-le") in first[1]


def is_run_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a run file written by ``save_run`` (any format version).

    Cheap: reads the zip directory and two tiny members, never the arrays; a member that declares
    a huge shape is not read. A file of another version, or a run file cut short, returns True so
    that ``load_run`` can say what is wrong with it.
    """
    p = Path(path)
    if not p.is_file():
        return False
    fmt = _format_of(p)
    return (fmt is not None and fmt[0] == FORMAT_NAME) or (fmt is None and _cut_short(p))


def _open(path: str | os.PathLike[str]) -> tuple[Path, CheckedNpz]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"run file {p} does not exist")
    fmt = _format_of(p)
    if fmt is None and _cut_short(p):
        raise UserError(
            f"run file {p} is damaged: its end is missing (not a readable zip archive); save or copy it again"
        )
    if fmt is None or fmt[0] != FORMAT_NAME:
        raise UserError(f"{p} is not a vggt-attn-rerun run file (expected an .npz written by save_run)")
    if fmt[1] != FORMAT_VERSION:
        raise UserError(
            f"run file {p} has format version {fmt[1]}; this version of vggt-attn-rerun reads version "
            f"{FORMAT_VERSION}: capture the run again"
        )
    try:
        return p, CheckedNpz(p, f"run file {p}")
    except NpzDamaged as e:
        raise UserError(f"cannot read run file {p}: {e}") from None


def _read_layout(run: CheckedNpz) -> TokenLayout:
    vals = run.ints(run.read("layout", _INT, (5,)), "layout", 0, _MAX_LAYOUT)
    try:
        return TokenLayout(*vals)
    except UserError as e:
        raise run.damaged(e) from None


def _read_kinds(run: CheckedNpz) -> list[str]:
    kinds = [str(k) for k in run.read("kinds", _STR, (None,))]
    if not kinds or len(set(kinds)) != len(kinds) or any(k not in KINDS for k in kinds):
        raise run.damaged(f"kinds are {kinds}: expected one or both of {', '.join(KINDS)}, once each")
    return kinds


def _read_queries(run: CheckedNpz, layout: TokenLayout) -> tuple[Query, ...]:
    pairs = run.read("queries", _INT, (None, 2))
    if pairs.shape[0] < 1:
        raise run.damaged("it holds no queries")
    labels = run.read("query_labels", _STR, (pairs.shape[0],))
    frames = run.ints(pairs[:, 0], "queries (frames)", 0, layout.num_frames - 1)
    locals_ = run.ints(pairs[:, 1], "queries (tokens within a frame)", 0, layout.tokens_per_frame - 1)
    return tuple(Query(f, loc, str(lab)) for f, loc, lab in zip(frames, locals_, labels, strict=True))


def _read_dtypes(run: CheckedNpz) -> dict[str, str]:
    try:
        dtypes = json.loads(str(run.read("dtypes", _STR, ())))
    except json.JSONDecodeError as e:
        raise run.damaged(f"dtypes is not JSON ({e})") from None
    if not isinstance(dtypes, dict) or any(v not in _TORCH_DTYPES for v in dtypes.values()):
        raise run.damaged(f"dtypes must map members to one of {', '.join(_TORCH_DTYPES)}")
    return dtypes


def _tensor(run: CheckedNpz, name: str, shape: tuple[int, ...], dtypes: Mapping[str, str]) -> torch.Tensor:
    """A float member of exactly ``shape``, as the torch dtype ``dtypes`` names for it."""
    want = dtypes.get(name)
    if want is None:
        raise run.damaged(f"dtypes has no entry for {name!r}")
    head = run.checked_header(name, "f", shape)
    if head.dtype != _STORED_AS[want]:
        raise run.damaged(f"{name!r} is stored as {head.dtype}, which cannot hold {want} exactly")
    a = run.read(name, "f", shape)
    if name.startswith("probs_"):
        _check_probabilities(run, name, a)
    return _from_numpy(a, want)


def _check_probabilities(run: CheckedNpz, name: str, probs: np.ndarray) -> None:
    """Refuse rows ``[L, Q, H, S, P]`` that are not softmax rows: each ``[l, q, h]`` is finite,
    non-negative and sums to 1 (within ``ROW_SUM_TOLERANCE``). Checked one block at a time:
    the temporaries are a block's size, not the rows'."""
    for b, block in enumerate(probs):
        if not np.isfinite(block).all():
            raise run.damaged(f"{name!r} holds NaN or infinite probabilities")
        low = float(block.min(initial=0.0))
        if low < 0:
            raise run.damaged(f"{name!r} holds a negative probability ({low:.3g}): attention rows are >= 0")
        sums = block.sum(axis=(-1, -2), dtype=np.float64)
        worst = sums.reshape(-1)[int(np.abs(sums - 1).argmax())] if sums.size else 1.0
        if abs(worst - 1) > ROW_SUM_TOLERANCE:
            raise run.damaged(
                f"{name!r} holds a row (block index {b}) summing to {worst:.6g}: attention rows sum to 1 "
                f"(within {ROW_SUM_TOLERANCE:g})"
            )


def _read_transforms(run: CheckedNpz, layout: TokenLayout) -> list[FrameTransform]:
    rows = run.read("transforms", "f", (layout.num_frames, len(_TRANSFORM_FIELDS)))
    h, w = layout.image_size
    out = []
    for row in rows:
        values = dict(zip(_TRANSFORM_FIELDS, (float(v) for v in row), strict=True))
        ints = {k: v for k, v in values.items() if k in _TRANSFORM_INTS}
        ok = all(np.isfinite(v) for v in values.values()) and all(v == int(v) and v >= 1 for v in ints.values())
        ok = ok and values["scale_x"] > 0 and values["scale_y"] > 0
        if not ok or (values["model_h"], values["model_w"]) != (h, w):
            raise run.damaged(
                f"transform {[round(v, 6) for v in row]} is not a FrameTransform of a {w}x{h} model image "
                f"(fields {', '.join(_TRANSFORM_FIELDS)}: finite, sizes whole numbers >= 1, scales > 0)"
            )
        out.append(FrameTransform(**{k: int(v) if k in _TRANSFORM_INTS else v for k, v in values.items()}))
    return out


def _read_images(run: CheckedNpz, layout: TokenLayout) -> torch.Tensor:
    s, (h, w) = layout.num_frames, layout.image_size
    run.checked_header("images_uint8", "u", (s, h, w, 3))  # always saved, even when float32 is used
    if run.has("images_float32"):
        a = run.read("images_float32", "f", (s, 3, h, w))
        if a.dtype != np.float32 or not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1):
            raise run.damaged("images_float32 must be float32 values in [0, 1]")
        return torch.from_numpy(a)
    u8 = run.read("images_uint8", "u", (s, h, w, 3))
    if u8.dtype != np.uint8:
        raise run.damaged(f"images_uint8 is {u8.dtype}, expected uint8")
    # One float32 copy, divided in place: loading holds at most the uint8 array and that tensor
    # (the 5x the read bound counts for images), not the 9x of chained out-of-place steps.
    f32 = torch.from_numpy(u8).permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
    return f32.div_(255)


def _prediction_shape(name: str, layout: TokenLayout) -> tuple[int, ...]:
    s, (h, w) = layout.num_frames, layout.image_size
    return {"pose_enc": (1, s, 9), "depth": (1, s, h, w, 1), "depth_conf": (1, s, h, w),
            "world_points": (1, s, h, w, 3), "world_points_conf": (1, s, h, w)}[name]  # fmt: skip


def _logging_bytes(run: CheckedNpz) -> int:
    """What logging the rows allocates beyond them: ``LOGGING_BYTES_PER_QUERY_ROW_BYTE`` x one
    query's rows of the largest kind (``[L, Q, H, S, P]`` headers; 0 when they are not rows)."""
    per_query = 0
    for k in KINDS:
        if run.has(f"probs_{k}"):
            try:
                head = run.header(f"probs_{k}")
            except NpzDamaged as e:
                raise run.damaged(e) from None
            if len(head.shape) == 5 and head.shape[1] > 0:
                per_query = max(per_query, head.nbytes // head.shape[1])
    return LOGGING_BYTES_PER_QUERY_ROW_BYTE * per_query


def load_run(path: str | os.PathLike[str], max_bytes: int | None = None) -> tuple[CaptureResult, LoadedImages]:
    """Re-open a run written by ``save_run``: equal objects, no model needed.

    Rows come back in the dtype they were saved in (bit-exact), predictions hold the saved
    display keys (``SAVED_PREDICTIONS``), ``qk_cache`` is None. UserError (naming the path) for a
    file that is not a run file, of another format version, or damaged.

    Hostile files: every member's ``.npy`` header is checked against the format (dtype, and
    shape from the layout) before its data is read, and the declared sizes of all members
    together (every entry of the archive, read or not) must stay within
    ``checked_npz.read_bound(file size)``: ``min(4 GiB, max(64 MiB, 64 x the file size))``
    (``max_bytes`` replaces that bound), so no file makes loading and showing it allocate more
    than that (images counted as the float32 tensor they become, and what logging the rows
    allocates: ``LOGGING_BYTES_PER_QUERY_ROW_BYTE`` times one query's rows). A file that breaks any rule raises
    UserError before its big arrays are read. Rows must be attention probabilities: finite,
    non-negative, each summing to 1 (``ROW_SUM_TOLERANCE``). A run file cut short (its zip
    directory lost) is reported as damaged.
    """
    p, z = _open(path)
    with z as run:
        # Every member counts, read or not (an unreferenced one too): images 5x (the uint8 array
        # and the float32 tensor made from it), and what logging one query's rows allocates.
        bound = read_bound(p.stat().st_size) if max_bytes is None else int(max_bytes)
        run.check_budget(sorted(run.names), bound, {"images_uint8": 5}, "pass max_bytes to load_run to raise it",
                         others=True, extra=_logging_bytes(run))  # fmt: skip
        layout = _read_layout(run)
        kinds = _read_kinds(run)
        blocks = tuple(run.ints(run.read("blocks", _INT, (None,)), "blocks", 0, _MAX_LAYOUT))
        num_heads = run.ints(run.read("num_heads", _INT, ()), "num_heads", 1, _MAX_LAYOUT)[0]
        if not blocks or len(set(blocks)) != len(blocks):
            raise run.damaged(f"blocks are {list(blocks)}: expected at least one block, each once")
        queries = _read_queries(run, layout)
        dtypes = _read_dtypes(run)
        transforms = _read_transforms(run, layout)
        paths = None
        if run.has("image_paths"):
            paths = [Path(str(s)) for s in run.read("image_paths", _STR, (layout.num_frames,))]
        want = (len(blocks), len(queries), num_heads, layout.num_frames, layout.tokens_per_frame)
        for k in kinds:  # all headers first: nothing big is read from a file whose shapes are wrong
            run.checked_header(f"probs_{k}", "f", want)
        present = [n for n in SAVED_PREDICTIONS if run.has(f"pred_{n}")]
        for n in present:
            run.checked_header(f"pred_{n}", "f", _prediction_shape(n, layout))
        probs = {k: _tensor(run, f"probs_{k}", want, dtypes) for k in kinds}
        predictions = {n: _tensor(run, f"pred_{n}", _prediction_shape(n, layout), dtypes) for n in present}
        tensor = _read_images(run, layout)
        label = ModelLabel(*(str(t) for t in run.read("model_label", _STR, (2,)))) if run.has("model_label") else None
    rows = AttentionRows(layout, queries, blocks, num_heads, probs)
    return CaptureResult(predictions, rows, layout, None, label), LoadedImages(tensor, paths, transforms)


def load_extra(path: str | os.PathLike[str]) -> dict[str, object]:
    """The ``extra`` dict given to ``save_run`` (JSON values, and numpy arrays as arrays).

    The same bound as ``load_run`` applies to the extra members' declared sizes.
    """
    p, z = _open(path)
    with z as run:
        names = sorted(n for n in run.names if n.startswith("extra_"))
        run.check_budget(names, read_bound(p.stat().st_size))
        try:
            out = json.loads(str(run.read("extra_json", _STR, ())))
        except json.JSONDecodeError as e:
            raise run.damaged(f"extra_json ({e})") from None
        if not isinstance(out, dict):
            raise run.damaged("extra_json is not a JSON object")
        for name in names:
            if name != "extra_json":
                out[name.removeprefix("extra_")] = run.read(name)
    return out
