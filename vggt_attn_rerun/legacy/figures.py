"""The earlier script's figures: one token's attention drawn over the images, with matplotlib.

Every function returns a pyplot figure (``plt.figure``), as the earlier script's did: a notebook shows it
when the cell ends, a script shows it with ``plt.show()``, and ``plt.close(fig)`` frees it.
Needs matplotlib (extra ``plot``), else UserError. Token indices: see ``values``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from vggt_attn_rerun.core.tokens import VGGT_PATCH_SIZE
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.legacy.values import (
    MEAN,
    check_head,
    get_all_frames_attention,
    get_attention_values,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "visualize_all_frames_attention",
    "visualize_attention_map",
    "visualize_attention_on_image",
    "visualize_frame_attention",
]


def pyplot() -> Any:
    """``matplotlib.pyplot``, or UserError naming the extra that installs it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("matplotlib is needed for figures: pip install 'vggt-attn-rerun[plot]'") from None
    return plt


def _query_pixel(meta: Mapping[str, Any]) -> tuple[float, float] | None:
    """(x, y) of the query patch centre in imshow coordinates of its frame; None for a special token."""
    gh, gw, start, local = meta["grid_h"], meta["grid_w"], meta["patch_start_idx"], meta["local_idx"]
    if local < start:
        return None
    row, col = divmod(local - start, gw)
    # imshow puts pixel centres at integers: continuous coordinate c sits at c - 0.5.
    return (col + 0.5) * meta["W"] / gw - 0.5, (row + 0.5) * meta["H"] / gh - 0.5


def _mark(ax: Any, query: tuple[float, float] | None) -> None:
    if query is not None:
        ax.plot(*query, marker="+", color="white", markersize=12, mew=2)


def _frame_figure(
    values: Mapping[str, Any], title: str, cmap: str, alpha: float, figsize: tuple[float, float]
) -> Figure:
    """The query's frame and its map over it (2 axes + colorbar)."""
    meta, frame = values["metadata"], values["metadata"]["frame_idx"]
    image, resized = values["images"][frame], values["attention_maps_resized"]
    fig = pyplot().figure(figsize=figsize, layout="constrained")
    ax_img, ax_map = fig.subplots(1, 2)
    ax_img.imshow(image)
    ax_img.set_title(f"Original Image (Frame {frame})")
    ax_map.imshow(image)
    im = ax_map.imshow(resized, cmap=cmap, alpha=alpha, vmin=0, vmax=float(resized.max()))
    ax_map.set_title(title)
    for ax in (ax_img, ax_map):
        ax.axis("off")
    _mark(ax_map, _query_pixel(meta))
    fig.colorbar(im, ax=ax_map, fraction=0.046, pad=0.04, label="Attention Weight")
    return fig


def _frames_figure(
    images: np.ndarray, resized: np.ndarray, frames: Sequence[int], titles: Sequence[str], suptitle: str,
    query: tuple[set[int], float, float] | None, cmap: str, alpha: float, figsize: tuple[float, float] | None,
) -> Figure:  # fmt: skip
    """A row of images over a row of their maps, one colour scale (2*n axes + colorbar); the query
    ``(frames to mark, x, y)`` is marked with a cross."""
    n = len(frames)
    fig = pyplot().figure(figsize=figsize or (5 * n, 10), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    vmax = float(np.max(resized))
    for i, f in enumerate(frames):
        axes[0, i].imshow(images[f])
        axes[0, i].set_title(f"Frame {f}")
        axes[1, i].imshow(images[f])
        im = axes[1, i].imshow(resized[i], cmap=cmap, alpha=alpha, vmin=0, vmax=vmax)
        axes[1, i].set_title(titles[i])
        for ax in axes[:, i]:
            ax.axis("off")
        if query is not None and f in query[0]:
            _mark(axes[1, i], query[1:])
    fig.suptitle(suptitle, fontsize=14, fontweight="bold")
    fig.colorbar(im, ax=axes[1, -1], fraction=0.046, pad=0.04, label="Attention Weight")
    return fig


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
    *,
    frame_idx: int | None = None,
    patch_size: int = VGGT_PATCH_SIZE,
) -> Figure:
    """One token's attention over the images (the earlier script's figure).

    Takes either the earlier script's arguments (as ``get_attention_values``, ``frame_idx`` included) or, as
    first argument, the dict ``get_attention_values`` returned. Frame attention: the query's frame
    (the earlier script always drew frame 0) and the map over it. Global attention: a row of the S images
    over a row of the S maps laid over them, one colour scale. The query patch is marked with a cross.
    """
    if isinstance(attn_weights, Mapping):
        values = attn_weights
    else:
        if images is None or token_idx is None:
            raise UserError("visualize_attention_on_image needs images and token_idx with a weights tensor")
        values = get_attention_values(
            attn_weights, images, token_idx, head_idx, patch_start_idx, attention_type,
            frame_idx=frame_idx, patch_size=patch_size,
        )  # fmt: skip
    meta = values["metadata"]
    head_text = f"{layer_name}, Head {meta['head_idx']}".lstrip(", ")
    frame = meta["frame_idx"]
    if meta["attention_type"] == "frame":
        title = f"Frame Attention from Token {meta['token_idx']} (Frame {frame})\n{head_text}"
        return _frame_figure(values, title, cmap, alpha, figsize or (15, 5))
    s = int(meta["S"])
    query = _query_pixel(meta)
    return _frames_figure(
        values["images"], values["attention_maps_resized"], range(s), [f"Attention to Frame {f}" for f in range(s)],
        f"Global Attention from Token {meta['token_idx']} (Frame {frame})\n{head_text}",
        None if query is None else ({frame}, *query), cmap, alpha, figsize,
    )  # fmt: skip


def visualize_frame_attention(
    attn_weights: Tensor,
    images: Tensor,
    token_idx: int,
    head_idx: int | str | None = 0,
    patch_start_idx: int = 5,
    frame_idx: int | None = None,
    layer_name: str = "",
    cmap: str = "turbo",
    alpha: float = 0.6,
    figsize: tuple[float, float] = (12, 5),
    *,
    patch_size: int = VGGT_PATCH_SIZE,
) -> Figure:
    """Frame attention ``[S, H, P, P]`` of one token over its frame (the earlier script's figure).

    ``token_idx`` is an index within frame ``frame_idx`` (0..P-1, as the earlier script) or a global index
    of a token of that frame; with ``frame_idx=None`` it is a global index (for frame 0 the two
    are the same, so the earlier script's default ``frame_idx=0`` keeps its meaning).
    """
    values = get_attention_values(
        attn_weights, images, token_idx, head_idx, patch_start_idx, "frame", frame_idx=frame_idx, patch_size=patch_size
    )
    meta = values["metadata"]
    title = f"Frame Attention from Token {token_idx}\n{layer_name}, Head {meta['head_idx']}, Frame {meta['frame_idx']}"
    return _frame_figure(values, title, cmap, alpha, figsize)


def visualize_all_frames_attention(
    attn_weights: Tensor,
    images: Tensor,
    token_idx: int,
    head_idx: int | str | None = 0,
    patch_start_idx: int = 5,
    frame_indices: Sequence[int] | None = None,
    layer_name: str = "",
    cmap: str = "turbo",
    alpha: float = 0.6,
    figsize: tuple[float, float] | None = None,
    *,
    patch_size: int = VGGT_PATCH_SIZE,
) -> Figure:
    """Frame attention of the token at the same place in several frames, one colour scale
    (``get_all_frames_attention``; 2 rows: the images, the maps over them)."""
    data = get_all_frames_attention(
        attn_weights, images, token_idx, head_idx, patch_start_idx, frame_indices, patch_size=patch_size
    )
    meta, frames = data["metadata"], data["frame_indices"]
    query = _query_pixel(meta)  # the same place in every frame: each map is that frame's token
    return _frames_figure(
        data["images"], data["attention_maps_resized"], frames, [f"Frame Attention (Frame {f})" for f in frames],
        f"Frame Attention from Token {token_idx}\n{layer_name}, Head {meta['head_idx']}",
        None if query is None else (set(frames), *query), cmap, alpha, figsize,
    )  # fmt: skip


def _matrix_row(weights: Tensor, token_idx: int, frame_idx: int | None) -> tuple[int, int]:
    """(first-axis index, row) of ``token_idx`` in a full matrix ``[B', H, N, N]``.

    A row index ``0..N-1`` of matrix ``frame_idx`` (default 0), or, for frame attention
    (``B' = S > 1``), a global index ``frame * N + row``.
    """
    b, n = int(weights.shape[0]), int(weights.shape[-1])
    try:
        token = operator.index(token_idx)
        frame = None if frame_idx is None else operator.index(frame_idx)
    except TypeError:
        raise UserError(f"token_idx and frame_idx must be integers, got {token_idx!r}, {frame_idx!r}") from None
    if frame is not None and not 0 <= frame < b:
        raise UserError(f"frame_idx {frame} is out of range: valid are 0..{b - 1}")
    if 0 <= token < n:
        return frame or 0, token
    if 0 <= token < b * n and (frame is None or token // n == frame):
        return divmod(token, n)
    glob = f", or global indices 0..{b * n - 1}" if b > 1 else ""
    raise UserError(f"token_idx {token} is out of range: valid are rows 0..{n - 1} of a matrix{glob}")


def visualize_attention_map(
    attn_weights: Tensor,
    token_idx: int = 0,
    head_idx: int | str | None = 0,
    frame_idx: int | None = None,
    title: str = "Attention Map",
    figsize: tuple[float, float] = (8, 6),
    cmap: str = "turbo",
) -> Figure:
    """One row of a full attention matrix ``[B', H, N, N]`` as a token-to-token heatmap (the earlier script's).

    The N keys are laid out row-major in the smallest square (as the earlier script; the padding is blank,
    not zero). ``frame_idx`` picks the matrix of frame attention ``[S, H, P, P]`` (None: 0, or
    the frame of a global ``token_idx``); global attention ``[1, H, N, N]`` has only matrix 0.
    """
    square_4d = isinstance(attn_weights, Tensor) and attn_weights.ndim == 4
    if not square_4d or attn_weights.shape[-1] != attn_weights.shape[-2]:
        shape = list(attn_weights.shape) if isinstance(attn_weights, Tensor) else type(attn_weights).__name__
        raise UserError(f"attn_weights must be a full attention matrix [B, H, N, N], got {shape}")
    b, row = _matrix_row(attn_weights, token_idx, frame_idx)
    head = check_head(head_idx, int(attn_weights.shape[1]))
    rows = attn_weights.detach()[b, :, row].float().cpu()
    attn = (rows.mean(0) if head is None else rows[head]).numpy()
    side = math.ceil(math.sqrt(attn.size))
    square = np.full(side * side, np.nan, dtype=np.float32)
    square[: attn.size] = attn
    fig = pyplot().figure(figsize=figsize, layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(square.reshape(side, side), cmap=cmap, aspect="auto")
    ax.set_title(f"{title}\nToken {token_idx}, Head {MEAN if head is None else head}", fontsize=12, fontweight="bold")
    ax.set_xlabel("Key Token Position")
    ax.set_ylabel("Key Token Position")
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("Attention Weight", rotation=270, labelpad=15)
    return fig
