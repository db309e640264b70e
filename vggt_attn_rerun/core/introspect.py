"""Where VGGT keeps its attention: the only module that reads the model's internals."""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence

from torch import nn

from vggt_attn_rerun.core.tokens import TokenLayout
from vggt_attn_rerun.errors import UserError

KINDS = ("frame", "global")
_BLOCK_LISTS = {"frame": "frame_blocks", "global": "global_blocks"}


def find_aggregator(model: nn.Module) -> nn.Module:
    """The module that owns VGGT's ``frame_blocks`` and ``global_blocks``."""
    for candidate in (getattr(model, "aggregator", None), model):
        if isinstance(candidate, nn.Module) and all(
            isinstance(getattr(candidate, name, None), nn.ModuleList) for name in ("frame_blocks", "global_blocks")
        ):
            return candidate
    raise UserError(
        f"model {type(model).__name__} has no VGGT aggregator: expected a module with .aggregator, "
        f"or one with .frame_blocks and .global_blocks (ModuleLists of attention blocks)"
    )


def model_patch_size(model: nn.Module) -> int:
    """Pixels per patch side of the model's patch embedding (14 for VGGT)."""
    agg = find_aggregator(model)
    ps = getattr(getattr(agg, "patch_embed", None), "patch_size", getattr(agg, "patch_size", 14))
    return int(ps[0] if isinstance(ps, (tuple, list)) else ps)


def model_num_registers(model: nn.Module) -> int:
    """Register tokens per frame: the special tokens before the patches, less the camera token."""
    return int(getattr(find_aggregator(model), "patch_start_idx", 5)) - 1


def model_embed_dim(model: nn.Module) -> int:
    """Channels of the aggregator's tokens (all heads together): 1024 for VGGT-1B."""
    attn = find_aggregator(model).frame_blocks[0].attn
    return int(attn.qkv.in_features) if hasattr(attn, "qkv") else int(attn.num_heads * attn.head_dim)


def model_layout(model: nn.Module, num_frames: int, height: int, width: int) -> TokenLayout:
    """The token layout the model will use for S frames of ``height x width`` pixels."""
    return TokenLayout.for_image_size(num_frames, height, width, model_patch_size(model), model_num_registers(model))


def model_depth(model: nn.Module) -> int:
    return len(find_aggregator(model).frame_blocks)


def model_heads(model: nn.Module) -> int:
    return int(find_aggregator(model).frame_blocks[0].attn.num_heads)


def check_kinds(kinds: str | Sequence[str]) -> tuple[str, ...]:
    """One kind ("global") or several (("frame", "global")) -> unique lower-case kinds, checked."""
    if isinstance(kinds, str):
        kinds = (kinds,)
    bad_type = [k for k in kinds if not isinstance(k, str)]
    if bad_type:
        raise UserError(f"attention kind {bad_type[0]!r} is not a str: valid kinds are frame, global")
    kinds = tuple(dict.fromkeys(k.strip().lower() for k in kinds))
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise UserError(f"unknown attention kind {bad[0] if bad else '(none)'!r}: valid kinds are frame, global")
    return kinds


def check_blocks(model: nn.Module, blocks: Iterable[int] | None) -> tuple[int, ...]:
    depth = model_depth(model)
    if blocks is None:
        return tuple(range(depth))
    if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Iterable):
        raise UserError(f"blocks must be a list of block indices 0..{depth - 1}, got {blocks!r:.60}")
    ints = []
    for b in blocks:
        if isinstance(b, bool) or not hasattr(b, "__index__"):
            raise UserError(f"block {b!r} is not a block index: valid blocks are the integers 0..{depth - 1}")
        ints.append(operator.index(b))
    blocks = tuple(sorted(dict.fromkeys(ints)))
    bad = [b for b in blocks if not 0 <= b < depth]
    if bad or not blocks:
        raise UserError(f"block {bad[0] if bad else '(none)'} does not exist: valid blocks are 0..{depth - 1}")
    return blocks
