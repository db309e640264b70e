"""A tiny VGGT-Omega: VGGT-Omega's module tree and code path at toy size, for tests.

Written from VGGT-Omega's public code (facebookresearch/vggt-omega, ``vggt_omega/models``), not
copied. What matches: ``aggregator.{patch_embed, rope_embed, frame_blocks, inter_frame_blocks,
camera_token, register_token, patch_token_start, inter_frame_attention_types, patch_size}``;
``SelfAttentionBlock.forward(x, rope)`` calls ``self.attn(self.norm1(x), rope=rope)``;
``SelfAttention``: ``qkv`` with a masked k bias, ``q_norm``/``k_norm`` (LayerNorm), then
``apply_rope(q, k, (sin, cos))`` on the patch tokens only (the special-token prefix untouched,
computed in the tables' dtype), then SDPA. DINOv3-style RoPE tables: patch centres normalised
by the longer side to [-1, 1], angles ``2 pi coord / period`` with ``period = base ** (2i / (D/2))``.
Frame blocks get RoPE, inter-frame blocks none; "register" inter-frame blocks attend among the
camera and register tokens of all frames only and leave the patch tokens alone. Per frame
``[camera, register x R, patches]``, frame 0 its own special tokens. Outputs ``pose_enc`` and
``depth`` (no point head).

What differs: a conv patch embedding instead of DINOv3, few small blocks, VGGT's tiny heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vggt_attn_rerun.testing.tiny_model import CameraHead, LayerScale, Mlp, PatchEmbed, PixelHead


class RopePositionEmbedding(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, base: float = 100.0) -> None:
        super().__init__()
        d_head = embed_dim // num_heads
        self.register_buffer("periods", base ** (2 * torch.arange(d_head // 4).float() / (d_head // 2)))

    def forward(self, *, H: int, W: int) -> tuple[Tensor, Tensor]:  # noqa: N803 (VGGT-Omega's keywords)
        m = max(H, W)
        ch = torch.arange(0.5, H, device=self.periods.device) / m
        cw = torch.arange(0.5, W, device=self.periods.device) / m
        coords = 2.0 * torch.stack(torch.meshgrid(ch, cw, indexing="ij"), -1).flatten(0, 1) - 1.0  # [HW, 2]
        angles = (2 * math.pi * coords[:, :, None] / self.periods[None, None]).flatten(1, 2).tile(2)  # [HW, D]
        return angles.sin(), angles.cos()


class LinearKMaskedBias(nn.Linear):
    """qkv projection whose k third has no bias (``bias_mask`` is 1, 0, 1 per third)."""

    def __init__(self, dim: int, out: int) -> None:
        super().__init__(dim, out, bias=True)
        mask = torch.ones(out)
        mask[out // 3 : 2 * out // 3] = 0
        self.register_buffer("bias_mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias * self.bias_mask)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q_norm = nn.LayerNorm(dim // num_heads)
        self.k_norm = nn.LayerNorm(dim // num_heads)
        self.qkv = LinearKMaskedBias(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def apply_rope(self, q: Tensor, k: Tensor, rope: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        sin, cos = rope
        dtype = q.dtype
        q, k = q.to(sin.dtype), k.to(sin.dtype)
        prefix = q.shape[-2] - sin.shape[-2]

        def rotate(x: Tensor) -> Tensor:
            body = x[:, :, prefix:]
            half = torch.cat([-body[..., body.shape[-1] // 2 :], body[..., : body.shape[-1] // 2]], -1)
            return torch.cat([x[:, :, :prefix], body * cos + half * sin], dim=-2)

        return rotate(q).to(dtype), rotate(k).to(dtype)

    def forward(self, x: Tensor, attn_bias: Tensor | None = None, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = self.apply_rope(q, k, rope)
        x = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class SelfAttentionBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.ls1 = LayerScale(dim, 0.5)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)
        self.ls2 = LayerScale(dim, 0.5)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope=rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


class Aggregator(nn.Module):
    def __init__(
        self, patch_size: int = 16, embed_dim: int = 64, depth: int = 3, num_heads: int = 4,
        num_register_tokens: int = 16, register_attention_block_indices: tuple[int, ...] = (1,),
    ) -> None:  # fmt: skip
        super().__init__()
        self.patch_size = patch_size
        self.depth = depth
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.rope_embed = RopePositionEmbedding(embed_dim, num_heads)
        self.frame_blocks = nn.ModuleList(SelfAttentionBlock(embed_dim, num_heads) for _ in range(depth))
        self.inter_frame_blocks = nn.ModuleList(SelfAttentionBlock(embed_dim, num_heads) for _ in range(depth))
        self.camera_token = nn.Parameter(2.0 * torch.randn(1, 2, 1, embed_dim))
        self.register_token = nn.Parameter(torch.randn(1, 2, num_register_tokens, embed_dim))
        self.patch_token_start = 1 + num_register_tokens
        self.inter_frame_attention_types = [
            "register" if i in register_attention_block_indices else "global" for i in range(depth)
        ]
        self.register_buffer("_resnet_mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("_resnet_std", torch.tensor([0.229, 0.224, 0.225]).view(1, 1, 3, 1, 1), persistent=False)

    @staticmethod
    def _special(tokens: Tensor, b: int, s: int) -> Tensor:
        first = tokens[:, :1].expand(b, 1, *tokens.shape[2:])
        rest = tokens[:, 1:].expand(b, s - 1, *tokens.shape[2:])
        return torch.cat([first, rest], dim=1).reshape(b * s, *tokens.shape[2:])

    def _inter_frame(self, tokens: Tensor, i: int, b: int, s: int, p: int, c: int) -> Tensor:
        tokens = tokens.reshape(b, s, p, c)
        if self.inter_frame_attention_types[i] == "global":
            return self.inter_frame_blocks[i](tokens.reshape(b, s * p, c), None).reshape(b, s, p, c)
        ps = self.patch_token_start  # "register" block: special tokens of all frames only
        special = self.inter_frame_blocks[i](tokens[:, :, :ps].reshape(b, s * ps, c), None)
        return torch.cat([special.reshape(b, s, ps, c), tokens[:, :, ps:]], dim=2)

    def forward(self, images: Tensor) -> tuple[list[Tensor | None], int]:
        b, s, _, h, w = images.shape
        x = ((images - self._resnet_mean) / self._resnet_std).reshape(b * s, 3, h, w)
        patches = self.patch_embed(x)
        tokens = torch.cat(
            [self._special(self.camera_token, b, s), self._special(self.register_token, b, s), patches], 1
        )
        _, p, c = tokens.shape
        with torch.no_grad():
            rope = self.rope_embed(H=h // self.patch_size, W=w // self.patch_size)
        outputs: list[Tensor | None] = []
        for i in range(self.depth):
            tokens = self.frame_blocks[i](tokens.reshape(b * s, p, c), rope)
            frame_out = tokens.reshape(b, s, p, c)
            tokens = self._inter_frame(tokens, i, b, s, p, c)
            outputs.append(torch.cat([frame_out, tokens], dim=-1))
        return outputs, self.patch_token_start


class VGGTOmega(nn.Module):
    def __init__(self, patch_size: int = 16, embed_dim: int = 64, depth: int = 3, num_heads: int = 4) -> None:
        super().__init__()
        self.aggregator = Aggregator(patch_size, embed_dim, depth, num_heads)
        self.camera_head = CameraHead(2 * embed_dim)
        self.dense_head = PixelHead(2 * embed_dim, patch_size, 2)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if images.ndim == 4:
            images = images[None]
        tokens, start = self.aggregator(images)
        d = self.dense_head(tokens, images, start)
        return {
            "pose_enc": self.camera_head(tokens)[-1],
            "depth": 2.0 + d[..., :1].tanh(),
            "depth_conf": 1.0 + d[..., 1].exp(),
            "images": images,
        }


def tiny_vggt_omega(seed: int = 0, embed_dim: int = 64, depth: int = 3, num_heads: int = 4) -> VGGTOmega:
    """A seeded tiny VGGT-Omega in eval mode; inter-frame block 1 is a "register" block."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VGGTOmega(16, embed_dim, depth, num_heads)
    return model.eval()
