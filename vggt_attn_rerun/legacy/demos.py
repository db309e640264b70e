"""The earlier script's two demos: load photos and a model, extract one block, draw or return it.

As the earlier script, each demo shows its figures with ``plt.show()`` (``show=False`` skips that: the
figures are returned either way, pyplot-managed). Unlike the earlier script, a bad ``token_idx``,
``head_idx``, ``block_idx`` or mode raises UserError before the model runs (the earlier script moved the
token elsewhere and went on), ``model=`` reuses a loaded model (the earlier script loaded VGGT-1B on every
call), and frame attention is read in the query token's own frame.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from vggt_attn_rerun.core.images import LoadedImages
from vggt_attn_rerun.core.introspect import KINDS, check_blocks, check_kinds, model_heads, model_layout
from vggt_attn_rerun.core.resources import autocast_dtype_for
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.legacy.extraction import (
    DEFAULT_BUDGET_BYTES,
    AttentionExtractor,
    autocast_like_seed,
    extract_both_attentions,
    input_images,
)
from vggt_attn_rerun.legacy.figures import pyplot, visualize_attention_map, visualize_attention_on_image
from vggt_attn_rerun.legacy.values import check_head, frame_token, get_attention_values

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["demo_single_layer_attention", "demo_visualize_token_attention"]

ImagesArg = Sequence[str | os.PathLike[str]] | str | os.PathLike[str] | Tensor | LoadedImages
MODES = ("visualize", "data")


def _setup(model: nn.Module | None, image_paths: ImagesArg) -> tuple[nn.Module, Tensor]:
    if model is None:
        from vggt_attn_rerun.core.loading import load_model

        model = load_model(device="cuda" if torch.cuda.is_available() else "cpu")
    return model, input_images(model, image_paths)


def demo_visualize_token_attention(
    image_paths: ImagesArg,
    block_idx: int = 23,
    token_idx: int = 500,
    head_idx: int | str | None = 0,
    attention_types: Sequence[str] = ("frame", "global"),
    model: nn.Module | None = None,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    *,
    frame_idx: int | None = None,
    show: bool = True,
) -> tuple[list[tuple[str, Figure]], dict[str, Any]]:
    """Load photos, extract block ``block_idx`` and draw ``token_idx``'s attention (the earlier script's demo).

    Args:
        image_paths: the photos (loaded as vggt's ``load_and_preprocess_images``, crop mode), or
            the model input as a tensor or LoadedImages.
        block_idx, token_idx, head_idx: as in ``extract_both_attentions`` / ``get_attention_values``;
            out of range raises UserError naming the valid range, before the forward pass.
        attention_types: which figures to draw, ``"frame"`` and/or ``"global"``.
        model: the model; None loads ``core.loading.load_model()`` (facebook/VGGT-1B) on CUDA if
            available, else CPU. budget_bytes: as in ``extract_both_attentions``.
        frame_idx: with it, ``token_idx`` may be an index within that frame (``values``).
        show: call ``plt.show()`` once the figures are drawn, as the earlier script did.

    Returns:
        ``(figures, result)``: ``figures`` a list of ``(kind, Figure)`` (frame first), ``result``
        the dict of ``extract_both_attentions``.
    """
    pyplot()  # fail before minutes of loading and inference, not after
    kinds = check_kinds(attention_types)
    model, images = _setup(model, image_paths)
    layout = model_layout(model, images.shape[1], images.shape[3], images.shape[4])
    frame_token(layout, token_idx, frame_idx)
    check_head(head_idx, model_heads(model))
    check_blocks(model, [block_idx])

    result = extract_both_attentions(model, images, block_idx, autocast_dtype_for(images.device), budget_bytes)
    figures = []
    for kind in KINDS:  # the earlier script's order: frame, then global
        if kind in kinds:
            values = get_attention_values(
                result[f"{kind}_attention"]["attn_weights"], images, token_idx, head_idx,
                result["patch_start_idx"], kind, frame_idx=frame_idx, patch_size=layout.patch_size,
            )  # fmt: skip
            fig = visualize_attention_on_image(values, layer_name=f"{kind.capitalize()} Block {block_idx}")
            figures.append((kind, fig))
    if show:
        pyplot().show()
    return figures, result


def demo_single_layer_attention(
    image_paths: ImagesArg,
    block_idx: int = 23,
    attention_type: str = "global",
    token_idx: int = 500,
    head_idx: int | str | None = 0,
    mode: str = "visualize",
    *,
    model: nn.Module | None = None,
    frame_idx: int | None = None,
    show: bool = True,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
) -> Figure | dict[str, Any]:
    """Extract one kind of attention of one block; draw one token's row, or return the matrix.

    Args:
        image_paths, model, budget_bytes: as in ``demo_visualize_token_attention``.
        block_idx: the block; attention_type: ``"global"`` or ``"frame"``.
        token_idx: a global token index (``frame * P + index within frame``), or with
            ``frame_idx`` an index within that frame. Frame attention draws the row of the
            token's own frame (the earlier script always drew frame 0).
        head_idx: a head, or ``"mean"``.
        mode: ``"visualize"``: the token-to-token heatmap (``visualize_attention_map``), shown
            with ``plt.show()`` unless ``show=False``; ``"data"``: the raw matrix.

    Returns:
        visualize: the Figure. data: ``{"attention_weights": [S, H, P, P] (frame) or
        ``[1, H, S*P, S*P]`` (global), "layer_name", "layer_type", "num_heads", "num_tokens"}``,
        the earlier script's dict.
    """
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}: valid modes are {', '.join(MODES)}")
    kind = check_kinds(attention_type)[0]
    if mode == "visualize":
        pyplot()
    model, images = _setup(model, image_paths)
    layout = model_layout(model, images.shape[1], images.shape[3], images.shape[4])
    frame, local = frame_token(layout, token_idx, frame_idx)
    check_head(head_idx, model_heads(model))
    check_blocks(model, [block_idx])

    layer_name = f"{kind}_block_{int(block_idx)}"
    with AttentionExtractor(model, budget_bytes) as extractor:
        extractor.register_hooks(block_indices=[block_idx], attention_types=[kind])
        with torch.no_grad(), autocast_like_seed(images.device, autocast_dtype_for(images.device)):
            model(images)
        data = extractor.get_attention_maps()[layer_name]
    if mode == "data":
        return {
            "attention_weights": data["attn_weights"],
            "layer_name": layer_name,
            "layer_type": kind,
            "num_heads": data["num_heads"],
            "num_tokens": data["num_tokens"],
        }
    # frame attention: the token's own frame and its row there; global: the global row
    matrix, row = (frame, local) if kind == "frame" else (0, frame * layout.tokens_per_frame + local)
    fig = visualize_attention_map(
        data["attn_weights"], row, head_idx, matrix, title=f"{kind.capitalize()} Block {int(block_idx)}"
    )
    if show:
        pyplot().show()
    return fig
