"""A tiny StreamVGGT: StreamVGGT's module tree and code path at toy size, for tests.

Written from StreamVGGT's public code (wzzheng/StreamVGGT, ``src/streamvggt``), not copied.
What matches: VGGT's tree (``aggregator.{frame_blocks, global_blocks, rope, camera_token,
register_token, patch_start_idx}``); ``Block.forward(x, pos=None, attn_mask=None)`` calls
``self.attn(self.norm1(x), pos=pos, attn_mask=attn_mask)`` by keyword; ``Attention.forward(x,
pos=None, attn_mask=None)``: qkv, q_norm/k_norm, shared 2D RoPE, then SDPA with ``attn_mask``
(or an explicit softmax that adds it). Global blocks get a frame-causal additive mask:
``finfo(dtype).min`` where the key's frame comes after the query's. ``StreamVGGT.forward(views)``
takes a list of ``{"img": [B, 3, H, W]}`` and returns per-view results (``ress``).

What differs: VGGT's tiny heads (see tiny_model) instead of DPT heads, no streaming k/v cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vggt_attn_rerun.testing import tiny_model as base


class Attention(base.Attention):
    def forward(self, x: Tensor, pos: Tensor | None = None, attn_mask: Tensor | None = None) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            q = self.rope(q, pos)
            k = self.rope(k, pos)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if attn_mask is not None:
                attn = attn + attn_mask
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        x = x.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class Block(base.Block):
    def __init__(self, dim: int, num_heads: int, rope: nn.Module | None, init_values: float = 0.5) -> None:
        super().__init__(dim, num_heads, rope, init_values)
        self.attn = Attention(dim, num_heads, rope=rope)

    def forward(self, x: Tensor, pos: Tensor | None = None, attn_mask: Tensor | None = None) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), pos=pos, attn_mask=attn_mask))
        return x + self.ls2(self.mlp(self.norm2(x)))


class Aggregator(base.Aggregator):
    """VGGT's aggregator whose global blocks see a frame-causal mask."""

    def __init__(self, patch_size: int = 14, embed_dim: int = 64, depth: int = 4, num_heads: int = 4) -> None:
        super().__init__(patch_size, embed_dim, depth, num_heads)
        self.frame_blocks = nn.ModuleList(Block(embed_dim, num_heads, self.rope) for _ in range(depth))
        self.global_blocks = nn.ModuleList(Block(embed_dim, num_heads, self.rope) for _ in range(depth))

    def forward(self, images: Tensor) -> tuple[list[Tensor | None], int]:
        b, s, _, h, w = images.shape
        x = ((images - self._resnet_mean) / self._resnet_std).reshape(b * s, 3, h, w)
        tokens = torch.cat(
            [self._special(self.camera_token, b, s), self._special(self.register_token, b, s), self.patch_embed(x)], 1
        )
        _, p, c = tokens.shape
        gh, gw = h // self.patch_size, w // self.patch_size
        grid = torch.cartesian_prod(torch.arange(gh, device=images.device), torch.arange(gw, device=images.device))
        pos = torch.cat([torch.zeros(self.patch_start_idx, 2, dtype=grid.dtype, device=grid.device), grid + 1])
        pos = pos[None].expand(b * s, -1, -1)
        frame_ids = torch.arange(s * p, device=images.device) // p
        future = frame_ids[:, None] < frame_ids[None, :]  # [S*P, S*P]: key frame after query frame
        attn_mask = future.to(tokens.dtype) * torch.finfo(tokens.dtype).min
        outputs: list[Tensor | None] = []
        for i in range(self.depth):
            tokens = self.frame_blocks[i](tokens.reshape(b * s, p, c), pos=pos)
            frame_out = tokens.reshape(b, s, p, c)
            tokens = self.global_blocks[i](
                tokens.reshape(b, s * p, c), pos=pos.reshape(b, s * p, 2), attn_mask=attn_mask
            )
            outputs.append(torch.cat([frame_out, tokens.reshape(b, s, p, c)], -1))
        return outputs, self.patch_start_idx


@dataclass
class StreamVGGTOutput:
    ress: list[dict] | None = None
    views: list[dict] | None = None


class StreamVGGT(base.TinyVGGT):
    def __init__(self, patch_size: int = 14, embed_dim: int = 64, depth: int = 4, num_heads: int = 4) -> None:
        super().__init__(patch_size, embed_dim, depth, num_heads)
        self.aggregator = Aggregator(patch_size, embed_dim, depth, num_heads)

    def forward(self, views: list[dict]) -> StreamVGGTOutput:
        images = torch.stack([view["img"] for view in views], dim=1)  # [B, S, 3, H, W]
        p = super().forward(images)
        ress = [
            {
                "pts3d_in_other_view": p["world_points"][:, s],
                "conf": p["world_points_conf"][:, s],
                "depth": p["depth"][:, s],
                "depth_conf": p["depth_conf"][:, s],
                "camera_pose": p["pose_enc"][:, s],
            }  # fmt: skip
            for s in range(images.shape[1])
        ]
        return StreamVGGTOutput(ress=ress, views=views)


def tiny_streamvggt(seed: int = 0, embed_dim: int = 64, depth: int = 4, num_heads: int = 4) -> StreamVGGT:
    """A seeded tiny StreamVGGT in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = StreamVGGT(14, embed_dim, depth, num_heads)
        with torch.no_grad():
            model.aggregator.camera_token.mul_(2.0)
    return model.eval()
