"""The ``extra`` metadata of a run file: JSON values in ``extra_json``, arrays as ``extra_<name>``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from vggt_attn_rerun.errors import UserError


def _json_default(obj: object) -> object:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def extra_members(extra: Mapping[str, object] | None) -> dict[str, np.ndarray]:
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
