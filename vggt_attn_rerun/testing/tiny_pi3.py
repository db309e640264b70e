"""A tiny pi3: pi3's module tree and code path at toy size, for tests.

Written from pi3's public code (yyfz/Pi3, ``pi3/models/pi3.py``, ``layers/attention.py``,
``layers/pos_embed.py``), not copied. What matches: ``Pi3.{encoder, rope, position_getter,
decoder, register_token, patch_start_idx, patch_size}``; ``decoder`` is one list of
``BlockRope``, even index = frame attention over ``[B*N, hw, C]``, odd = global attention over
``[B, N*hw, C]``; ``BlockRope.forward(x, xpos=None)`` calls ``self.attn(self.norm1(x), xpos=xpos)``;
``FlashAttentionRope``: qkv, ``q_norm``/``k_norm`` then ``.to(v.dtype)``, the shared ``RoPE2D``
(croco style: cos/sin tables looked up by integer position, first half of each head rotated by
y, second by x), SDPA. Per frame 5 registers (the same for every frame) and no camera token;
positions are patch (row, col) + 1, registers at 0. The last two decoder outputs, concatenated,
feed the heads. Outputs ``points``, ``local_points``, ``conf``, ``camera_poses`` (camera-to-world).

What differs: a conv patch encoder instead of DINOv2, linear heads instead of the transformer
decoders, a small camera arc so random weights give a readable scene.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vggt_attn_rerun.testing.tiny_model import LayerScale, Mlp


class RoPE2D(nn.Module):
    def __init__(self, freq: float = 100.0) -> None:
        super().__init__()
        self.base = freq

    def _rope1d(self, x: Tensor, pos: Tensor) -> Tensor:
        # x [B, H, N, d], pos [B, N] integer positions: tables indexed by position
        d = x.shape[-1]
        inv_freq = 1.0 / (self.base ** (torch.arange(0, d, 2, device=x.device).float() / d))
        t = torch.arange(int(pos.max()) + 1, device=x.device, dtype=inv_freq.dtype)
        freqs = torch.outer(t, inv_freq).to(x.dtype)
        freqs = torch.cat([freqs, freqs], dim=-1)
        cos, sin = F.embedding(pos, freqs.cos())[:, None], F.embedding(pos, freqs.sin())[:, None]
        half = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], dim=-1)
        return x * cos + half * sin

    def forward(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """tokens ``[B, H, N, D]``, positions ``[B, N, 2]`` (y, x) integers -> ``[B, H, N, D]``."""
        y, x = tokens.chunk(2, dim=-1)
        return torch.cat([self._rope1d(y, positions[..., 0]), self._rope1d(x, positions[..., 1])], dim=-1)


class PositionGetter:
    def __call__(self, b: int, h: int, w: int, device: torch.device) -> Tensor:
        grid = torch.cartesian_prod(torch.arange(h, device=device), torch.arange(w, device=device))
        return grid.view(1, h * w, 2).expand(b, -1, 2).clone()


class FlashAttentionRope(nn.Module):
    def __init__(self, dim: int, num_heads: int, rope: nn.Module | None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=1e-6)
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-6)
        self.rope = rope

    def forward(self, x: Tensor, attn_bias: Tensor | None = None, xpos: Tensor | None = None) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).transpose(1, 3)
        q, k, v = [qkv[:, :, i] for i in range(3)]
        q, k = self.q_norm(q).to(v.dtype), self.k_norm(k).to(v.dtype)
        if self.rope is not None:
            q = self.rope(q, xpos)
            k = self.rope(k, xpos)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class BlockRope(nn.Module):
    def __init__(self, dim: int, num_heads: int, rope: nn.Module | None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = FlashAttentionRope(dim, num_heads, rope)
        self.ls1 = LayerScale(dim, 0.5)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.ls2 = LayerScale(dim, 0.5)

    def forward(self, x: Tensor, xpos: Tensor | None = None) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), xpos=xpos))
        return x + self.ls2(self.mlp(self.norm2(x)))


class Encoder(nn.Module):
    """Conv patch embedding that answers like DINOv2's ``forward(x, is_training=True)``."""

    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor, is_training: bool = False) -> dict[str, Tensor]:
        return {"x_norm_patchtokens": self.proj(x).flatten(2).transpose(1, 2)}


class Pi3(nn.Module):
    def __init__(self, dim: int = 64, depth: int = 4, num_heads: int = 4, num_register_tokens: int = 5) -> None:
        super().__init__()
        self.patch_size = 14
        self.encoder = Encoder(self.patch_size, dim)
        self.rope = RoPE2D(100.0)
        self.position_getter = PositionGetter()
        self.decoder = nn.ModuleList(BlockRope(dim, num_heads, self.rope) for _ in range(2 * depth))
        self.patch_start_idx = num_register_tokens
        self.register_token = nn.Parameter(torch.randn(1, 1, num_register_tokens, dim))
        self.point_head = nn.Linear(2 * dim, self.patch_size**2 * 4)  # xy, log z, conf per pixel
        self.camera_head = nn.Linear(2 * dim, 6)
        self.register_buffer("image_mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def decode(self, hidden: Tensor, n: int, h: int, w: int) -> Tensor:
        bn, hw, c = hidden.shape
        b = bn // n
        registers = self.register_token.repeat(b, n, 1, 1).reshape(bn, -1, c)
        hidden = torch.cat([registers, hidden], dim=1)
        hw = hidden.shape[1]
        pos = self.position_getter(bn, h // self.patch_size, w // self.patch_size, hidden.device) + 1
        pos = torch.cat([torch.zeros(bn, self.patch_start_idx, 2, dtype=pos.dtype, device=pos.device), pos], 1)
        outputs = []
        for i, blk in enumerate(self.decoder):
            shape = (bn, hw, -1) if i % 2 == 0 else (b, n * hw, -1)
            hidden = blk(hidden.reshape(shape), xpos=pos.reshape(shape[:2] + (2,)))
            if i + 1 >= len(self.decoder) - 1:
                outputs.append(hidden.reshape(bn, hw, -1))
        return torch.cat(outputs, dim=-1)

    def forward(self, imgs: Tensor) -> dict[str, Tensor]:
        imgs = (imgs - self.image_mean) / self.image_std
        b, n, _, h, w = imgs.shape
        gh, gw, ps = h // self.patch_size, w // self.patch_size, self.patch_size
        hidden = self.encoder(imgs.reshape(b * n, 3, h, w), is_training=True)["x_norm_patchtokens"]
        hidden = self.decode(hidden, n, h, w)[:, self.patch_start_idx :]  # [B*N, hw, 2C]
        raw = self.point_head(hidden).reshape(b, n, gh, gw, ps, ps, 4).permute(0, 1, 2, 4, 3, 5, 6)
        raw = raw.reshape(b, n, h, w, 4) * 0.1
        z = torch.exp(raw[..., 2:3]) + 1.0
        v, u = torch.meshgrid(torch.arange(h, device=imgs.device), torch.arange(w, device=imgs.device), indexing="ij")
        xy = torch.stack([(u - w / 2) / w, (v - h / 2) / w], -1) + raw[..., :2]
        local_points = torch.cat([xy * z, z], dim=-1)
        cam = self.camera_head(hidden.mean(1)).reshape(b, n, 6) * 0.05
        step = torch.linspace(0, 0.3 * (n - 1), n, device=imgs.device)
        poses = torch.eye(4, device=imgs.device).repeat(b, n, 1, 1)
        angle = cam[..., 0]
        poses[..., 0, 0], poses[..., 0, 2] = angle.cos(), angle.sin()
        poses[..., 2, 0], poses[..., 2, 2] = -angle.sin(), angle.cos()
        poses[..., :3, 3] = cam[..., 3:] + torch.stack([step, 0 * step, 0 * step], -1)
        homog = torch.cat([local_points, torch.ones_like(z)], dim=-1)
        points = torch.einsum("bnij,bnhwj->bnhwi", poses, homog)[..., :3]
        return {"points": points, "local_points": local_points, "conf": raw[..., 3:], "camera_poses": poses}


def tiny_pi3(seed: int = 0, dim: int = 64, depth: int = 4, num_heads: int = 4) -> Pi3:
    """A seeded tiny pi3 in eval mode (``depth`` frame + ``depth`` global blocks)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Pi3(dim, depth, num_heads)
    return model.eval()
