"""Where a VGGT-like model keeps its attention: read through its adapter (core.adapters).

Every function takes an optional ``arch``: an adapter name, or the ModelAdapter a caller already
resolved (``model_adapter``), which is then used as it is; without it the adapter is the one
``load_model`` tagged the model with, else the one its type matches.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence

from torch import nn

from vggt_attn_rerun.core.adapters import ModelAdapter, adapter_for
from vggt_attn_rerun.core.tokens import TokenLayout
from vggt_attn_rerun.errors import UserError

KINDS = ("frame", "global")
# The names of the block lists on what find_aggregator returns, for every architecture.
_BLOCK_LISTS = {"frame": "frame_blocks", "global": "global_blocks"}


def model_adapter(model: nn.Module, arch: str | ModelAdapter | None = None) -> ModelAdapter:
    return adapter_for(model, arch)


class NamedBlocks(nn.Module):
    """A view that names a model's blocks ``frame_blocks`` and ``global_blocks`` (no copies).

    Not registered on the model, so its state dict is untouched.
    """

    def __init__(self, frame_blocks: Sequence[nn.Module], global_blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.frame_blocks = nn.ModuleList(frame_blocks)
        self.global_blocks = nn.ModuleList(global_blocks)


def find_aggregator(model: nn.Module, arch: str | ModelAdapter | None = None) -> nn.Module:
    """The module that owns the model's ``frame_blocks`` and ``global_blocks`` (VGGT's aggregator).

    For models that name them otherwise (VGGT-Omega's ``inter_frame_blocks``, pi3's one decoder
    list) a view with those two names is returned. ``attention_module`` works for every architecture.
    """
    adapter = adapter_for(model, arch)
    root = adapter.root(model)
    if all(isinstance(getattr(root, name, None), nn.ModuleList) for name in ("frame_blocks", "global_blocks")):
        return root
    return NamedBlocks(adapter.blocks(root, "frame"), adapter.blocks(root, "global"))


def attention_module(model: nn.Module, kind: str, block: int, arch: str | ModelAdapter | None = None) -> nn.Module:
    """The attention module of ``block`` of ``kind`` ("frame" or "global")."""
    return adapter_for(model, arch).attention(model, kind, block)


def model_patch_size(model: nn.Module, arch: str | ModelAdapter | None = None) -> int:
    """Pixels per patch side of the model's patch embedding (14 for VGGT, 16 for VGGT-Omega)."""
    adapter = adapter_for(model, arch)
    return int(adapter.patch_size(adapter.root(model)))


def model_num_registers(model: nn.Module, arch: str | ModelAdapter | None = None) -> int:
    """Register tokens per frame: the special tokens before the patches, less the camera token."""
    adapter = adapter_for(model, arch)
    return int(adapter.num_registers(adapter.root(model)))


def model_num_cameras(model: nn.Module, arch: str | ModelAdapter | None = None) -> int:
    """Camera tokens per frame: 1, or 0 for models without one (pi3)."""
    return adapter_for(model, arch).num_cameras


def model_embed_dim(model: nn.Module, arch: str | ModelAdapter | None = None) -> int:
    """Channels of the aggregator's tokens (all heads together): 1024 for VGGT-1B."""
    attn = attention_module(model, "frame", 0, arch)
    return int(attn.qkv.in_features) if hasattr(attn, "qkv") else int(attn.num_heads * attn.head_dim)


def model_layout(
    model: nn.Module, num_frames: int, height: int, width: int, arch: str | ModelAdapter | None = None
) -> TokenLayout:
    """The token layout the model will use for S frames of ``height x width`` pixels."""
    adapter = adapter_for(model, arch)
    root = adapter.root(model)
    return TokenLayout.for_image_size(
        num_frames, height, width, int(adapter.patch_size(root)), int(adapter.num_registers(root)),
        adapter.num_cameras,
    )  # fmt: skip


def model_depth(model: nn.Module, arch: str | ModelAdapter | None = None) -> int:
    return adapter_for(model, arch).depth(model)


def model_heads(model: nn.Module, arch: str | ModelAdapter | None = None) -> int:
    return int(attention_module(model, "frame", 0, arch).num_heads)


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


def check_blocks(
    model: nn.Module, blocks: Iterable[int] | None, arch: str | ModelAdapter | None = None
) -> tuple[int, ...]:
    depth = model_depth(model, arch)
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
