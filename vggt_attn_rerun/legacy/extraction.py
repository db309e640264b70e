"""The API of the earlier VGGT attention script users know, with its bugs fixed.

The earlier script is ``visualize_attention.py`` of the public fork ``tang0214/vggt`` (with
``example_visualize_attention.py``, ``demo_attention.ipynb`` and the guide
``ATTENTION_VISUALIZATION_README.md``). The names, arguments, defaults and return structures of
its public functions are kept, so code written for it runs unchanged: ``from visualize_attention
import ...`` works once the package is installed (``legacy/visualize_attention.py``, installed as a
top-level module, re-exports them all). This module: extraction (``AttentionExtractor``,
``extract_both_attentions``); ``values``: ``get_attention_values``,
``get_all_frames_attention``; ``figures``: the ``visualize_*`` figures; ``demos``: the
two demos. What differs:

1. RoPE is kept. The earlier script hooked ``Block`` and read ``pos`` from the positional inputs, but
   ``Block.forward`` passes ``pos`` to attention by keyword: ``pos`` was always None, RoPE was
   skipped and the maps were not the attention the model computed. Here the maps are built from
   the q and k the attention module really used (``core.hooks.QKHooks``: after q_norm/k_norm and RoPE).
2. Frame attention reads the frame the query token is in. The earlier script always read
   ``attn_weights[0]`` (frame 0) and always drew frame 0's image, whatever the token.
3. Bad indices raise ``UserError`` naming the valid range. The earlier script's demos silently moved an
   out-of-range ``token_idx`` to the first, middle or last token, ``register_hooks`` silently
   skipped missing blocks, and a bad ``head_idx`` ended in an IndexError.

Also: softmax in fp32 even under autocast (the earlier script ran it in fp16/bf16), full matrices are
checked against a memory budget (one global map of VGGT-1B is 7.7 GB at 8 views; the rows API
``vggt_attn_rerun.core.capture.capture`` never builds them), the patch size is an argument (the
demos take the model's) instead of a hard-coded 14, and one scene at a time: images or weights
holding a batch of several scenes are refused in one line (the earlier script silently used the first).

Token indices: ``token_idx`` is a global token index, ``frame * P + index within frame`` with
``P = patch_start_idx + grid_h * grid_w``, for frame and global attention alike; for a token of
frame 0 this is the earlier script's index, so the earlier script's calls keep their meaning. Where a function takes
``frame_idx`` (``visualize_frame_attention``, and ``get_attention_values`` /
``visualize_attention_on_image`` by keyword), ``token_idx`` may instead be an index within that
frame, as the guide's FAQ counts frame-attention tokens (``values`` module docstring).

Figures are pyplot figures (``plt.figure``), so a notebook shows them as the earlier script's did; the demos
call ``plt.show()`` as the earlier script did, unless given ``show=False``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn

from vggt_attn_rerun.core.hooks import QKHooks
from vggt_attn_rerun.core.images import LoadedImages, batched_images, load_images
from vggt_attn_rerun.core.introspect import KINDS, check_blocks, check_kinds
from vggt_attn_rerun.core.loading import model_device
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.legacy.full import FullCollector, capture_full

__all__ = ["AttentionExtractor", "extract_both_attentions"]

DEFAULT_BUDGET_BYTES = 4 << 30
_ROWS_API = "vggt_attn_rerun.capture"


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


class _BudgetedCollector(FullCollector):
    """FullCollector that refuses a block whose matrix would take the maps over the budget.

    The layout is unknown until the forward pass runs, so the check happens per block, before
    its ``[B', H, N, N]`` matrix is allocated.
    """

    def __init__(self, blocks: Sequence[int], budget_bytes: int) -> None:
        super().__init__(blocks)
        self.budget_bytes = int(budget_bytes)

    def __call__(self, kind: str, block: int, q: Tensor, k: Tensor, attn: nn.Module) -> None:
        b, h, n, _ = q.shape
        need = b * h * n * n * 4
        # A second forward pass replaces the map of the same block, so that one does not count.
        held = sum(m.numel() * m.element_size() for key, m in self.maps.items() if key != (kind, block))
        if held + need > self.budget_bytes:
            raise UserError(
                f"full {kind} attention of block {block} ([{b}, {h}, {n}, {n}] fp32, {need / 2**30:.2f} GiB) "
                f"would take the captured maps to {(held + need) / 2**30:.2f} GiB, over the budget of "
                f"{self.budget_bytes / 2**30:.2f} GiB: capture rows of chosen tokens with {_ROWS_API}, "
                "or hook fewer blocks, or raise budget_bytes"
            )
        super().__call__(kind, block, q, k, attn)


def _entry(weights: Tensor, kind: str) -> dict[str, Any]:
    """The earlier script's per-layer record."""
    return {
        "attn_weights": weights,
        "layer_type": kind,
        "num_heads": int(weights.shape[1]),
        "num_tokens": int(weights.shape[-1]),
    }


class AttentionExtractor:
    """Full attention matrices of chosen blocks, captured while the user runs ``model(images)``.

    Usage (as the earlier script)::

        extractor = AttentionExtractor(model)
        extractor.register_hooks(block_indices=[23], attention_types=["frame", "global"])
        with torch.no_grad():
            model(images)
        maps = extractor.get_attention_maps()
        extractor.clear_hooks()

    or ``with AttentionExtractor(model) as extractor: ...`` (hooks are removed on exit, also
    when the forward pass raises).

    Args:
        model: VGGT, or a model with its module tree (``testing.tiny_vggt()``).
        budget_bytes: most fp32 bytes the captured matrices may take (default 4 GiB). Exceeding
            it raises UserError from inside ``model(images)``, before the matrix is allocated.
    """

    def __init__(self, model: nn.Module, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self.model = model
        self.budget_bytes = int(budget_bytes)
        self.attention_maps: dict[str, dict[str, Any]] = {}
        self._stack: contextlib.ExitStack | None = None
        self._collector: _BudgetedCollector | None = None

    def register_hooks(
        self,
        block_indices: Sequence[int] | None = None,
        attention_types: str | Sequence[str] = ("global", "frame"),
    ) -> None:
        """Hook the attention modules of ``block_indices`` (None: all) for each kind in ``attention_types``.

        Replaces hooks and maps of an earlier call. A block that does not exist raises
        UserError naming the valid blocks (the earlier script skipped it silently).
        """
        self.clear_hooks()
        kinds = check_kinds(attention_types)
        blocks = check_blocks(self.model, block_indices)
        collector = _BudgetedCollector(blocks, self.budget_bytes)
        stack = contextlib.ExitStack()
        stack.enter_context(QKHooks(self.model, blocks, kinds, collector))
        self._stack, self._collector = stack, collector
        self.attention_maps = {}

    def clear_hooks(self) -> None:
        """Remove every hook this extractor added. Maps already captured stay readable."""
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def get_attention_maps(self) -> dict[str, dict[str, Any]]:
        """The maps of the last forward pass, keyed ``frame_block_{i}`` / ``global_block_{i}``.

        Each value is ``{"attn_weights", "layer_type", "num_heads", "num_tokens"}`` (the earlier script's
        record) with ``attn_weights`` fp32 on CPU: frame ``[S, H, P, P]``, global ``[1, H, S*P, S*P]``
        (rows are queries, columns keys, each row sums to 1).
        """
        if self._collector is not None:
            self.attention_maps = {
                f"{kind}_block_{block}": _entry(weights, kind)
                for (kind, block), weights in self._collector.maps.items()
            }
        return self.attention_maps

    def __enter__(self) -> AttentionExtractor:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.clear_hooks()


def input_images(model: nn.Module, images: Tensor | LoadedImages | str | os.PathLike | Sequence) -> Tensor:
    """``[1, S, 3, H, W]`` on the model's device from a tensor ``[S, 3, H, W]`` / ``[1, S, 3, H, W]``,
    LoadedImages, or photo paths (loaded like vggt's ``load_and_preprocess_images``)."""
    if not isinstance(images, (Tensor, LoadedImages)):
        images = load_images(images)
    return batched_images(images).to(model_device(model))


def autocast_like_seed(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    # The earlier script used torch.cuda.amp.autocast, which does nothing for CPU tensors: keep that, so CPU
    # runs stay fp32, and skip dtypes CUDA autocast does not take (it would only warn).
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def extract_both_attentions(
    model: nn.Module,
    images: Tensor | Sequence[str | os.PathLike[str]],
    block_idx: int = 23,
    dtype: torch.dtype | None = torch.float16,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
) -> dict[str, Any]:
    """Frame and global attention of one block, in one forward pass.

    Args:
        model: VGGT or a model with its module tree, in eval mode.
        images: ``[S, 3, H, W]`` or ``[1, S, 3, H, W]`` in [0, 1] (one scene), LoadedImages, or
            image paths (loaded as ``images.load_images``, i.e. as vggt's ``load_and_preprocess_images``).
        block_idx: the block (0..depth-1; VGGT-1B: 0..23). Out of range: UserError.
        dtype: CUDA autocast dtype of the forward pass (None: off; ignored on CPU). The
            attention itself is always computed in fp32 from the q/k the model used.
        budget_bytes: most bytes the two full matrices may take; checked before the forward pass.

    Returns:
        ``{"frame_attention": {"attn_weights" [S, H, P, P], "layer_type", "num_heads", "num_tokens"},
        "global_attention": {"attn_weights" [1, H, S*P, S*P], ...}, "block_idx", "patch_start_idx"}``.
    """
    x = input_images(model, images)
    with autocast_like_seed(x.device, dtype):
        _, maps, layout = capture_full(model, x, [block_idx], KINDS, budget_bytes=budget_bytes)
    block = int(block_idx)
    return {
        "frame_attention": _entry(maps[("frame", block)], "frame"),
        "global_attention": _entry(maps[("global", block)], "global"),
        "block_idx": block,
        "patch_start_idx": layout.patch_start,
    }
