"""Full attention matrices, only on request (the earlier script's API needs them)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vggt_attn_rerun.core.hooks import QKHooks
from vggt_attn_rerun.core.images import batched_images
from vggt_attn_rerun.core.introspect import KINDS, check_blocks, check_kinds, model_heads, model_layout
from vggt_attn_rerun.core.rows import softmax_rows
from vggt_attn_rerun.core.tokens import TokenLayout
from vggt_attn_rerun.errors import UserError

# --------------------------------------------------------------------------------------------
# Full matrices (only on request: the earlier script's API needs them)
# --------------------------------------------------------------------------------------------


def full_matrix_bytes(layout: TokenLayout, num_heads: int, kinds: Sequence[str], num_blocks: int = 1) -> int:
    """fp32 bytes of full attention matrices: frame ``[S, H, P, P]``, global ``[1, H, S*P, S*P]``."""
    per_kind = {
        "frame": layout.num_frames * num_heads * layout.tokens_per_frame**2 * 4,
        "global": num_heads * layout.num_tokens**2 * 4,
    }
    return num_blocks * sum(per_kind[k] for k in kinds)


class FullCollector:
    """on_qk consumer that builds full attention matrices in chunks of query rows.

    ``maps[(kind, block)]``: fp32 CPU softmax probabilities ``[B, H, N, N]`` (B = S, N = P for
    frame attention; B = 1, N = S * P for global attention), ``chunk_rows`` query rows at a time.
    """

    def __init__(self, blocks: Sequence[int], chunk_rows: int = 1024) -> None:
        self.blocks = tuple(blocks)
        self.chunk_rows = chunk_rows
        self.maps: dict[tuple[str, int], Tensor] = {}

    def __call__(self, kind: str, block: int, q: Tensor, k: Tensor, attn: nn.Module) -> None:
        b, h, n, _ = q.shape
        out = torch.empty(b, h, n, n, dtype=torch.float32, device="cpu")
        with torch.no_grad():
            for i in range(b):
                for s in range(0, n, self.chunk_rows):
                    rows = softmax_rows(q[i, :, s : s + self.chunk_rows], k[i], float(attn.scale))
                    out[i, :, s : s + rows.shape[1]] = rows.cpu()
        self.maps[(kind, block)] = out


def capture_full(
    model: nn.Module,
    images: Tensor,
    blocks: Sequence[int],
    kinds: Sequence[str] = KINDS,
    budget_bytes: int = 4 << 30,
) -> tuple[dict[str, Tensor], dict[tuple[str, int], Tensor], TokenLayout]:
    """Full attention matrices (fp32, CPU) for a few blocks: frame ``[S, H, P, P]``, global ``[1, H, N, N]``.

    The memory they need is checked against ``budget_bytes`` before the forward pass: prefer
    ``capture`` (rows of chosen queries), which never builds these matrices.
    """
    images = batched_images(images)
    layout = model_layout(model, images.shape[1], images.shape[3], images.shape[4])
    kinds, blocks = check_kinds(kinds), check_blocks(model, blocks)
    need = full_matrix_bytes(layout, model_heads(model), kinds, len(blocks))
    if need > budget_bytes:
        raise UserError(
            f"full attention matrices for {len(blocks)} block(s) x {list(kinds)} need {need / 2**30:.2f} GiB, over the "
            f"budget of {budget_bytes / 2**30:.2f} GiB: capture rows of chosen queries instead (capture(...)), "
            "or raise budget_bytes"
        )
    collector = FullCollector(blocks)
    with torch.no_grad(), QKHooks(model, blocks, kinds, collector):
        predictions = model(images)
    return predictions, collector.maps, layout
