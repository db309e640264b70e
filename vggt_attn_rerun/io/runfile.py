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
- ``transforms``: float64 ``[S, 8]`` (orig_w, orig_h, scale_x, scale_y, offset_x, offset_y,
  model_w, model_h); ``image_paths``: unicode ``[S]`` (only when the images came from files);
- ``extra_json``: JSON text of the JSON-serializable entries of ``extra``; ``extra_<name>`` for
  its numpy-array entries (numeric, bool or str arrays).

Not saved: ``pose_enc_list`` and ``images`` of the predictions (the input images are saved
once, as above), track outputs, and the q/k cache (``CaptureResult.qk_cache`` is None on load).
"""

from __future__ import annotations

import json
import os
import secrets
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from vggt_attn_rerun.core.capture import CaptureResult
from vggt_attn_rerun.core.images import FrameTransform, LoadedImages
from vggt_attn_rerun.core.rows import AttentionRows
from vggt_attn_rerun.core.tokens import Query, TokenLayout
from vggt_attn_rerun.errors import UserError

FORMAT_NAME = "vggt-attn-rerun/run"
FORMAT_VERSION = "1"
RUN_SUFFIX = ".npz"
#: the predictions a run file keeps (the ones the viewer displays)
SAVED_PREDICTIONS = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf")

_TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


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
    return torch.from_numpy(np.array(a)).to(_TORCH_DTYPES[dtype_name])


def _images_uint8(tensor: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """``[S, 3, H, W]`` float in [0, 1] -> ``[S, H, W, 3]`` uint8, and the float32 tensor when
    uint8 cannot reproduce it exactly (else None)."""
    t = tensor.detach().to("cpu", torch.float32)
    u8 = (t * 255).round().clamp(0, 255).to(torch.uint8)
    back = u8.to(torch.float32).div(255)
    exact = bool(torch.equal(back, t))
    return u8.permute(0, 2, 3, 1).contiguous().numpy(), (None if exact else t.contiguous().numpy())


def _json_default(obj: object) -> object:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _extra_members(extra: Mapping[str, object] | None) -> dict[str, np.ndarray]:
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
                raise UserError(
                    f"extra array {key!r} has dtype {value.dtype}: valid are numeric, bool or str arrays"
                )
            arrays[f"extra_{key}"] = value
        else:
            plain[key] = value
    try:
        text = json.dumps(plain, default=_json_default)
    except (TypeError, ValueError) as e:
        raise UserError(f"extra must hold JSON-serializable values or numpy arrays: {e}") from None
    return {"extra_json": np.array(text), **arrays}


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
    dtypes: dict[str, str] = {}
    m: dict[str, np.ndarray] = {
        "__format__": np.array(FORMAT_NAME),
        "format_version": np.array(FORMAT_VERSION),
        "layout": np.array(
            [lay.num_frames, lay.grid_h, lay.grid_w, lay.patch_size, lay.num_registers], np.int64
        ),
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
        [(t.orig_w, t.orig_h, t.scale_x, t.scale_y, t.offset_x, t.offset_y, t.model_w, t.model_h)
         for t in images.transforms], np.float64,
    )  # fmt: skip
    if images.paths is not None:
        m["image_paths"] = np.array([str(p) for p in images.paths], dtype=np.str_)
    m.update(_extra_members(extra))
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
    # O_EXCL with mode 0o666 gives the file the usual permissions (the umask applies).
    tmp = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise UserError(f"cannot save run to {path}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **members)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise UserError(f"cannot save run to {path}: {e.strerror or e}") from e
        raise
    return path


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _format_of(path: Path) -> tuple[str, str] | None:
    """(format name, version) from a file's first members, or None if it is not an npz of ours."""
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if "__format__.npy" not in names or "format_version.npy" not in names:
                return None
            out = []
            for member in ("__format__.npy", "format_version.npy"):
                with z.open(member) as f:
                    a = np.lib.format.read_array(f, allow_pickle=False)
                if a.dtype.kind != "U" or a.ndim != 0:
                    return None
                out.append(str(a))
            return out[0], out[1]
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, KeyError):
        return None


def is_run_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a run file written by ``save_run`` (any format version).

    Cheap: reads the zip directory and two tiny members, never the arrays. A file of another
    version returns True so that ``load_run`` can say which version it is.
    """
    p = Path(path)
    if not p.is_file():
        return False
    fmt = _format_of(p)
    return fmt is not None and fmt[0] == FORMAT_NAME


def _open(path: str | os.PathLike[str]) -> tuple[Path, np.lib.npyio.NpzFile]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"run file {p} does not exist")
    fmt = _format_of(p)
    if fmt is None or fmt[0] != FORMAT_NAME:
        raise UserError(f"{p} is not a vggt-attn-rerun run file (expected an .npz written by save_run)")
    if fmt[1] != FORMAT_VERSION:
        raise UserError(
            f"run file {p} has format version {fmt[1]}; this version of vggt-attn-rerun reads version "
            f"{FORMAT_VERSION}: capture the run again"
        )
    try:
        return p, np.load(p, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"cannot read run file {p}: {e}") from None


def _get(z: np.lib.npyio.NpzFile, path: Path, name: str) -> np.ndarray:
    try:
        return z[name]
    except KeyError:
        raise UserError(f"run file {path} is damaged: member {name!r} is missing") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"run file {path} is damaged: cannot read {name!r} ({e})") from None


def load_run(path: str | os.PathLike[str]) -> tuple[CaptureResult, LoadedImages]:
    """Re-open a run written by ``save_run``: equal objects, no model needed.

    Rows come back in the dtype they were saved in (bit-exact), predictions hold the saved
    display keys (``SAVED_PREDICTIONS``), ``qk_cache`` is None. UserError (naming the path) for a
    file that is not a run file, of another format version, or damaged.
    """
    p, z = _open(path)
    with z:
        try:
            lay_v = [int(v) for v in _get(z, p, "layout")]
            layout = TokenLayout(*lay_v)
            kinds = [str(k) for k in _get(z, p, "kinds")]
            blocks = tuple(int(b) for b in _get(z, p, "blocks"))
            num_heads = int(_get(z, p, "num_heads"))
            labels = [str(s) for s in _get(z, p, "query_labels")]
            queries = tuple(
                Query(int(f), int(loc), labels[i]) for i, (f, loc) in enumerate(_get(z, p, "queries"))
            )
            for q in queries:
                q.token(layout)
            dtypes = json.loads(str(_get(z, p, "dtypes")))
            probs = {k: _from_numpy(_get(z, p, f"probs_{k}"), dtypes[f"probs_{k}"]) for k in kinds}
            want = (len(blocks), len(queries), num_heads, layout.num_frames, layout.tokens_per_frame)
            for k, t in probs.items():
                if tuple(t.shape) != want:
                    raise UserError(
                        f"run file {p} is damaged: probs of {k} have shape {list(t.shape)}, "
                        f"expected {list(want)}"
                    )
            predictions = {
                name: _from_numpy(_get(z, p, f"pred_{name}"), dtypes[f"pred_{name}"])
                for name in SAVED_PREDICTIONS
                if f"pred_{name}" in z.files
            }
            if "images_float32" in z.files:
                tensor = torch.from_numpy(np.array(_get(z, p, "images_float32"), dtype=np.float32))
            else:
                u8 = _get(z, p, "images_uint8")
                tensor = (
                    torch.from_numpy(np.array(u8)).permute(0, 3, 1, 2).to(torch.float32).div(255).contiguous()
                )
            transforms = [
                FrameTransform(
                    int(t[0]),
                    int(t[1]),
                    float(t[2]),
                    float(t[3]),
                    float(t[4]),
                    float(t[5]),
                    int(t[6]),
                    int(t[7]),
                )
                for t in _get(z, p, "transforms")
            ]
            paths = [Path(str(s)) for s in _get(z, p, "image_paths")] if "image_paths" in z.files else None
        except (KeyError, ValueError, TypeError, json.JSONDecodeError) as e:
            if isinstance(e, UserError):
                raise
            raise UserError(f"run file {p} is damaged: {e}") from None
    rows = AttentionRows(layout, queries, blocks, num_heads, probs)
    return CaptureResult(predictions, rows, layout, None), LoadedImages(tensor, paths, transforms)


def load_extra(path: str | os.PathLike[str]) -> dict[str, object]:
    """The ``extra`` dict given to ``save_run`` (JSON values, and numpy arrays as arrays)."""
    p, z = _open(path)
    with z:
        try:
            out: dict[str, object] = json.loads(str(_get(z, p, "extra_json")))
        except json.JSONDecodeError as e:
            raise UserError(f"run file {p} is damaged: extra_json ({e})") from None
        for name in z.files:
            if name.startswith("extra_") and name != "extra_json":
                out[name.removeprefix("extra_")] = _get(z, p, name)
    return out
