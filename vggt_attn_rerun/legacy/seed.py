"""The API of the earlier VGGT attention script users know, with its bugs fixed.

The seed is ``visualize_attention.py`` of the public fork ``tang0214/vggt`` (with
``example_visualize_attention.py`` and ``ATTENTION_VISUALIZATION_README.md``). The names,
arguments, defaults and return structures below are the seed's, so code written for it runs
unchanged (``from vggt_attn_rerun.compat import extract_both_attentions, ...``). What differs:

1. RoPE is kept. The seed hooked ``Block`` and read ``pos`` from the positional inputs, but
   ``Block.forward`` passes ``pos`` to attention by keyword: ``pos`` was always None, RoPE was
   skipped and the maps were not the attention the model computed. Here the maps are built from
   the q and k the attention module really used (``capture.qk_hooks``: after q_norm/k_norm and RoPE).
2. Frame attention reads the frame the query token is in. The seed always read
   ``attn_weights[0]`` (frame 0) and always drew frame 0's image, whatever the token.
3. Bad indices raise ``UserError`` naming the valid range. The seed's demo silently moved an
   out-of-range ``token_idx`` to the first or middle patch, ``register_hooks`` silently skipped
   missing blocks, and a bad ``head_idx`` ended in an IndexError.

Also: softmax in fp32 even under autocast (the seed ran it in fp16/bf16), full matrices are
checked against a memory budget (one global map of VGGT-1B is 7.7 GB at 8 views; the rows API
``vggt_attn_rerun.core.capture.capture`` never builds them), figures use no pyplot state and are not
shown, and the patch size is an argument (the demo takes the model's) instead of a hard-coded 14.

Token indices: ``token_idx`` is a global token index, ``frame * P + index within frame`` with
``P = patch_start_idx + grid_h * grid_w``, for frame and global attention alike. For a token of
frame 0 this is the seed's index, so the seed's calls keep their meaning.
"""

from __future__ import annotations

import contextlib
import operator
import os
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vggt_attn_rerun.core.hooks import qk_hooks
from vggt_attn_rerun.core.images import batched_images, load_images
from vggt_attn_rerun.core.introspect import KINDS, check_blocks, check_kinds, model_heads, model_layout
from vggt_attn_rerun.core.models import model_device
from vggt_attn_rerun.core.tokens import TokenLayout
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.legacy.full import FullCollector, capture_full

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "AttentionExtractor",
    "demo_visualize_token_attention",
    "extract_both_attentions",
    "get_attention_values",
    "visualize_attention_on_image",
]

DEFAULT_BUDGET_BYTES = 4 << 30
RESIZE_MODE = "bilinear"  # as the seed; align_corners=False puts each patch value at its patch centre
_ROWS_API = "vggt_attn_rerun.capture"
_MEAN = "mean"


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
    """The seed's per-layer record."""
    return {
        "attn_weights": weights,
        "layer_type": kind,
        "num_heads": int(weights.shape[1]),
        "num_tokens": int(weights.shape[-1]),
    }


def _as_kinds(attention_types: str | Sequence[str]) -> tuple[str, ...]:
    return check_kinds((attention_types,) if isinstance(attention_types, str) else tuple(attention_types))


class AttentionExtractor:
    """Full attention matrices of chosen blocks, captured while the user runs ``model(images)``.

    Usage (as the seed)::

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
        UserError naming the valid blocks (the seed skipped it silently).
        """
        self.clear_hooks()
        kinds = _as_kinds(attention_types)
        blocks = check_blocks(self.model, block_indices)
        collector = _BudgetedCollector(blocks, self.budget_bytes)
        stack = contextlib.ExitStack()
        stack.enter_context(qk_hooks(self.model, blocks, kinds, collector))
        self._stack, self._collector = stack, collector
        self.attention_maps = {}

    def clear_hooks(self) -> None:
        """Remove every hook this extractor added. Maps already captured stay readable."""
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def get_attention_maps(self) -> dict[str, dict[str, Any]]:
        """The maps of the last forward pass, keyed ``frame_block_{i}`` / ``global_block_{i}``.

        Each value is ``{"attn_weights", "layer_type", "num_heads", "num_tokens"}`` (the seed's
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


def _input_images(model: nn.Module, images: Tensor | Sequence[str | os.PathLike[str]]) -> Tensor:
    """A tensor ``[S, 3, H, W]`` / ``[1, S, 3, H, W]`` as given, or photos loaded like vggt's loader."""
    if isinstance(images, Tensor):
        return images.to(model_device(model))
    paths = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    return load_images(paths).tensor.to(model_device(model))


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    # The seed used torch.cuda.amp.autocast, which does nothing for CPU tensors: keep that, so CPU
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
        images: ``[S, 3, H, W]`` or ``[1, S, 3, H, W]`` in [0, 1], or image paths (loaded as
            ``images.load_images``, i.e. as vggt's ``load_and_preprocess_images``).
        block_idx: the block (0..depth-1; VGGT-1B: 0..23). Out of range: UserError.
        dtype: CUDA autocast dtype of the forward pass (None: off; ignored on CPU). The
            attention itself is always computed in fp32 from the q/k the model used.
        budget_bytes: most bytes the two full matrices may take; checked before the forward pass.

    Returns:
        ``{"frame_attention": {"attn_weights" [S, H, P, P], "layer_type", "num_heads", "num_tokens"},
        "global_attention": {"attn_weights" [1, H, S*P, S*P], ...}, "block_idx", "patch_start_idx"}``.
    """
    x = _input_images(model, images)
    with _autocast(x.device, dtype):
        _, maps, layout = capture_full(model, x, [block_idx], KINDS, budget_bytes=budget_bytes)
    block = int(block_idx)
    return {
        "frame_attention": _entry(maps[("frame", block)], "frame"),
        "global_attention": _entry(maps[("global", block)], "global"),
        "block_idx": block,
        "patch_start_idx": layout.patch_start,
    }


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


def _check_token(layout: TokenLayout, token_idx: int) -> tuple[int, int]:
    """Global token index -> (frame, index within frame), or UserError with the valid range."""
    try:
        token = operator.index(token_idx)
    except TypeError:
        raise UserError(f"token_idx must be an integer, got {token_idx!r}") from None
    if not 0 <= token < layout.num_tokens:
        p = layout.tokens_per_frame
        raise UserError(
            f"token_idx {token} is out of range: valid are 0..{layout.num_tokens - 1} "
            f"(frame * {p} + index within frame; {layout.num_frames} frames of {p} tokens, patches at "
            f"{layout.patch_start}..{p - 1} of each frame)"
        )
    return divmod(token, layout.tokens_per_frame)


def _check_head(head_idx: int | str | None, num_heads: int) -> int | None:
    """A head index, or None for the mean over heads."""
    if head_idx is None or (isinstance(head_idx, str) and head_idx.strip().lower() == _MEAN):
        return None
    try:
        head = operator.index(head_idx)  # type: ignore[arg-type]
    except TypeError:
        head = -1
    if not 0 <= head < num_heads:
        raise UserError(f"head_idx {head_idx!r} is out of range: valid are 0..{num_heads - 1}, or 'mean'")
    return head


def get_attention_values(
    attn_weights: Tensor,
    images: Tensor,
    token_idx: int,
    head_idx: int | str | None = 0,
    patch_start_idx: int = 5,
    attention_type: str = "frame",
    *,
    renormalize: bool = True,
    patch_size: int = 14,
) -> dict[str, Any]:
    """The attention of one query token over the patches of the images, as numpy arrays.

    Args:
        attn_weights: frame ``[S, H, P, P]`` or global ``[1, H, S*P, S*P]`` (from
            ``extract_both_attentions`` / ``AttentionExtractor``), ``P = patch_start_idx + gh * gw``.
        images: the model input, ``[S, 3, H, W]`` or ``[1, S, 3, H, W]`` in [0, 1].
        token_idx: global query token, ``frame * P + index within frame`` (special tokens allowed).
            Frame attention reads the row of that frame (the seed always read frame 0).
        head_idx: a head (0..H-1), or ``"mean"`` / None for the mean over heads.
        patch_start_idx: camera + register tokens before the patches of each frame (VGGT: 5).
        attention_type: ``"frame"`` or ``"global"``.
        renormalize: divide by the mass on patches (the seed's behaviour), so the maps sum to 1
            over all patches of all frames; False keeps the raw softmax probabilities.
        patch_size: pixels per patch side (VGGT: 14).

    Returns:
        ``attention_maps``: frame ``[gh, gw]``, global ``[S, gh, gw]`` (float32);
        ``attention_maps_resized``: frame ``[H, W]``, global ``[S, H, W]``, bilinear
        (``align_corners=False``) upsampling of the maps to the image size;
        ``images``: ``[S, H, W, 3]`` float32 in [0, 1];
        ``metadata``: grid_h, grid_w, H, W, S, token_idx, head_idx, attention_type,
        patch_start_idx, and frame_idx (the query's frame).
        Out-of-range token, head or type: UserError naming the valid range.
    """
    kind = _as_kinds(attention_type)[0]
    imgs = batched_images(images)[0]
    s, _, h, w = (int(d) for d in imgs.shape)
    layout = TokenLayout.for_image_size(s, h, w, patch_size, int(patch_start_idx) - 1)
    p, n = layout.tokens_per_frame, layout.num_tokens
    expected = [s, None, p, p] if kind == "frame" else [1, None, n, n]
    got = list(attn_weights.shape)
    if len(got) != 4 or any(e is not None and e != g for e, g in zip(expected, got, strict=True)):
        want = f"[{s}, H, {p}, {p}]" if kind == "frame" else f"[1, H, {n}, {n}]"
        raise UserError(
            f"{kind} attention weights must be {want} for {s} images of {w}x{h} with patch_start_idx "
            f"{patch_start_idx}, got {got}: pass the images and weights of the same run"
        )
    frame, local = _check_token(layout, token_idx)
    head = _check_head(head_idx, int(attn_weights.shape[1]))

    weights = attn_weights.detach()
    # One query row over the keys: frame [P] within the token's frame, global [S*P].
    rows = weights[frame, :, local] if kind == "frame" else weights[0, :, frame * p + local]
    row = (rows.mean(0) if head is None else rows[head]).float().cpu()
    keys = row.reshape(-1, p)[:, layout.patch_start :]  # [1 or S, gh*gw]
    if renormalize:
        keys = keys / keys.sum().clamp_min(torch.finfo(keys.dtype).tiny)
    maps = keys.reshape(-1, layout.grid_h, layout.grid_w)
    resized = F.interpolate(maps[:, None], size=(h, w), mode=RESIZE_MODE, align_corners=False)[:, 0]
    if kind == "frame":
        maps, resized = maps[0], resized[0]

    return {
        "attention_maps": maps.numpy(),
        "attention_maps_resized": resized.numpy(),
        "images": imgs.detach().permute(0, 2, 3, 1).float().clamp(0, 1).cpu().numpy(),
        "metadata": {
            "grid_h": layout.grid_h,
            "grid_w": layout.grid_w,
            "H": h,
            "W": w,
            "S": s,
            "token_idx": int(token_idx),
            "head_idx": _MEAN if head is None else head,
            "attention_type": kind,
            "patch_start_idx": layout.patch_start,
            "frame_idx": frame,
        },
    }


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _figure_class() -> type[Figure]:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("matplotlib is needed for figures: pip install 'vggt-attn-rerun[plot]'") from None
    return Figure


def _query_pixel(meta: Mapping[str, Any]) -> tuple[int, float, float] | None:
    """(frame, x, y) of the query patch centre in imshow coordinates, None for a special token."""
    gh, gw, start = meta["grid_h"], meta["grid_w"], meta["patch_start_idx"]
    frame, local = divmod(meta["token_idx"], start + gh * gw)
    if local < start:
        return None
    row, col = divmod(local - start, gw)
    # imshow puts pixel centres at integers: continuous coordinate c sits at c - 0.5.
    return frame, (col + 0.5) * meta["W"] / gw - 0.5, (row + 0.5) * meta["H"] / gh - 0.5


def visualize_attention_on_image(
    attn_weights: Tensor | Mapping[str, Any],
    images: Tensor | None = None,
    token_idx: int | None = None,
    head_idx: int | str | None = 0,
    patch_start_idx: int = 5,
    attention_type: str = "frame",
    layer_name: str = "",
    cmap: str = "turbo",
    alpha: float = 0.6,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """A matplotlib Figure of one token's attention over the images (no pyplot state).

    Takes either the seed's arguments (``attn_weights``, ``images``, ``token_idx``, ... as in
    ``get_attention_values``) or, as first argument, the dict ``get_attention_values`` returned.

    Frame attention: the query's frame (the seed always drew frame 0) and the map over it
    (2 axes + colorbar). Global attention: a row of the S images over a row of the S maps laid
    over them, one colour scale (2*S axes + colorbar). The query patch is marked with a cross.
    Needs matplotlib (extra ``plot``), else UserError.
    """
    figure_class = _figure_class()
    if isinstance(attn_weights, Mapping):
        values = attn_weights
    else:
        if images is None or token_idx is None:
            raise UserError("visualize_attention_on_image needs images and token_idx with a weights tensor")
        values = get_attention_values(
            attn_weights, images, token_idx, head_idx, patch_start_idx, attention_type
        )
    meta, imgs, resized = values["metadata"], values["images"], values["attention_maps_resized"]
    query = _query_pixel(meta)
    head_text = f"{layer_name}, Head {meta['head_idx']}".lstrip(", ")

    if meta["attention_type"] == "frame":
        frame = meta.get("frame_idx", 0)
        fig = figure_class(figsize=figsize or (15, 5), layout="constrained")
        ax_img, ax_map = fig.subplots(1, 2)
        ax_img.imshow(imgs[frame])
        ax_img.set_title(f"Original Image (Frame {frame})")
        ax_map.imshow(imgs[frame])
        im = ax_map.imshow(resized, cmap=cmap, alpha=alpha, vmin=0, vmax=float(resized.max()))
        ax_map.set_title(f"Frame Attention from Token {meta['token_idx']} (Frame {frame})\n{head_text}")
        for ax in (ax_img, ax_map):
            ax.axis("off")
        if query is not None:
            ax_map.plot(query[1], query[2], marker="+", color="white", markersize=12, mew=2)
        fig.colorbar(im, ax=ax_map, fraction=0.046, pad=0.04, label="Attention Weight")
        return fig

    s = int(meta["S"])
    fig = figure_class(figsize=figsize or (5 * s, 10), layout="constrained")
    axes = fig.subplots(2, s, squeeze=False)
    vmax = float(np.max(values["attention_maps"]))
    for f in range(s):
        axes[0, f].imshow(imgs[f])
        axes[0, f].set_title(f"Frame {f}")
        axes[1, f].imshow(imgs[f])
        im = axes[1, f].imshow(resized[f], cmap=cmap, alpha=alpha, vmin=0, vmax=vmax)
        axes[1, f].set_title(f"Attention to Frame {f}")
        for ax in axes[:, f]:
            ax.axis("off")
        if query is not None and query[0] == f:
            axes[1, f].plot(query[1], query[2], marker="+", color="white", markersize=12, mew=2)
    fig.suptitle(
        f"Global Attention from Token {meta['token_idx']} (Frame {meta.get('frame_idx', 0)})\n{head_text}",
        fontsize=14,
        fontweight="bold",
    )
    fig.colorbar(im, ax=axes[1, -1], fraction=0.046, pad=0.04, label="Attention Weight")
    return fig


# --------------------------------------------------------------------------------------------
# Demo
# --------------------------------------------------------------------------------------------


def _demo_dtype(device: torch.device) -> torch.dtype | None:
    # The seed's choice: bf16 on Ampere or newer, fp16 before; CPU stays fp32.
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16


def demo_visualize_token_attention(
    image_paths: Sequence[str | os.PathLike[str]],
    block_idx: int = 23,
    token_idx: int = 500,
    head_idx: int | str | None = 0,
    attention_types: Sequence[str] = ("frame", "global"),
    model: nn.Module | None = None,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
) -> tuple[list[tuple[str, Figure]], dict[str, Any]]:
    """Load photos, extract block ``block_idx`` and draw ``token_idx``'s attention.

    Args:
        image_paths: the photos (loaded as vggt's ``load_and_preprocess_images``, crop mode).
        block_idx, token_idx, head_idx: as in ``extract_both_attentions`` / ``get_attention_values``;
            out of range raises UserError naming the valid range, before the forward pass (the
            seed silently moved the token to another patch).
        attention_types: which figures to draw, ``"frame"`` and/or ``"global"``.
        model: the model; None loads ``models.load_model()`` (facebook/VGGT-1B) on CUDA if
            available, else CPU.
        budget_bytes: as in ``extract_both_attentions``.

    Returns:
        ``(figures, result)``: ``figures`` a list of ``(kind, Figure)`` (frame first), ``result``
        the dict of ``extract_both_attentions``. Nothing is shown: call ``fig.savefig`` or
        display the figures (the seed called ``plt.show()``).
    """
    _figure_class()  # fail before minutes of loading and inference, not after
    kinds = _as_kinds(attention_types)
    if model is None:
        from vggt_attn_rerun.core.models import load_model

        model = load_model(device="cuda" if torch.cuda.is_available() else "cpu")
    images = _input_images(model, image_paths)
    layout = model_layout(model, images.shape[0], images.shape[2], images.shape[3])
    _check_token(layout, token_idx)
    _check_head(head_idx, model_heads(model))
    check_blocks(model, [block_idx])

    result = extract_both_attentions(model, images, block_idx, _demo_dtype(images.device), budget_bytes)
    figures = []
    for kind in KINDS:  # the seed's order: frame, then global
        if kind in kinds:
            values = get_attention_values(
                result[f"{kind}_attention"]["attn_weights"], images, token_idx, head_idx,
                result["patch_start_idx"], kind, patch_size=layout.patch_size,
            )  # fmt: skip
            fig = visualize_attention_on_image(values, layer_name=f"{kind.capitalize()} Block {block_idx}")
            figures.append((kind, fig))
    return figures, result
