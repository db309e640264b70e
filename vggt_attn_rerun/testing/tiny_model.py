"""A tiny VGGT for tests and offline demos: VGGT's module tree and code path at toy size.

What matches VGGT (so that anything that captures attention here captures it on VGGT too):
``model.aggregator.{patch_embed, rope, frame_blocks, global_blocks, camera_token,
register_token, patch_start_idx}``; ``Block.forward(x, pos=None)`` calls
``self.attn(self.norm1(x), pos=pos)`` with ``pos`` BY KEYWORD; ``Attention`` has
``qkv, q_norm, k_norm, rope, scale, fused_attn, attn_drop, proj, proj_drop`` and the same
forward (qk-norm per head, then one shared 2D RoPE, then SDPA or an explicit softmax);
special tokens: frame 0 has its own camera/register tokens, later frames share a second set;
positions are patch (row, col) + 1 with the special tokens at (0, 0); frame and global blocks
alternate. The heads return VGGT's output dict with the same keys and shapes.

What differs: a conv patch embedding instead of DINOv2, few small blocks, and simple heads
(a linear camera head and linear per-patch depth/point heads) instead of the camera trunk and DPT.
The heads are built so that the geometry is coherent (points = unprojected depth) which makes
recordings of random weights readable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vggt_attn_rerun.core.geometry import pose_encoding_to_cameras
from vggt_attn_rerun.core.loading import TINY_LABEL, label_model


class RotaryPositionEmbedding2D(nn.Module):
    """2D RoPE: the first half of each head's features rotates with y, the second half with x."""

    def __init__(self, frequency: float = 100.0) -> None:
        super().__init__()
        self.frequency = frequency

    def _rotate_1d(self, x: Tensor, positions: Tensor) -> Tensor:
        # x: [B, H, N, d]; positions: [B, N]
        d = x.shape[-1]
        inv_freq = 1.0 / (self.frequency ** (torch.arange(0, d, 2, device=x.device).float() / d))
        angles = positions.float()[..., None] * inv_freq  # [B, N, d/2]
        angles = torch.cat([angles, angles], dim=-1).to(x.dtype)[:, None]  # [B, 1, N, d]
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
        rotated = torch.cat([-x2, x1], dim=-1)
        return x * angles.cos() + rotated * angles.sin()

    def forward(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """tokens ``[B, H, N, D]``, positions ``[B, N, 2]`` (y, x) -> ``[B, H, N, D]``."""
        y_feats, x_feats = tokens.chunk(2, dim=-1)
        return torch.cat(
            [self._rotate_1d(y_feats, positions[..., 0]), self._rotate_1d(x_feats, positions[..., 1])], dim=-1
        )


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, rope: nn.Module | None = None, fused_attn: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = fused_attn
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm = nn.LayerNorm(self.head_dim)
        self.k_norm = nn.LayerNorm(self.head_dim)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim, bias=True)
        self.proj_drop = nn.Dropout(0.0)
        self.rope = rope

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            q = self.rope(q, pos)
            k = self.rope(k, pos)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            x = self.attn_drop(attn) @ v
        x = x.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, rope: nn.Module | None, init_values: float = 0.5) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, rope=rope)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * 4)
        self.ls2 = LayerScale(dim, init_values)

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), pos=pos))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, gh*gw, C]


class Aggregator(nn.Module):
    """Alternating frame/global attention over ``[B, S, 3, H, W]`` images in [0, 1]."""

    def __init__(
        self, patch_size: int = 14, embed_dim: int = 64, depth: int = 4, num_heads: int = 4,
        num_register_tokens: int = 4, rope_freq: float = 100.0, cached_layer_indices: tuple[int, ...] = (1,),
    ) -> None:  # fmt: skip
        super().__init__()
        self.patch_size = patch_size
        self.depth = depth
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.rope = RotaryPositionEmbedding2D(rope_freq) if rope_freq > 0 else None
        self.frame_blocks = nn.ModuleList(Block(embed_dim, num_heads, self.rope) for _ in range(depth))
        self.global_blocks = nn.ModuleList(Block(embed_dim, num_heads, self.rope) for _ in range(depth))
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, embed_dim))
        self.register_token = nn.Parameter(torch.randn(1, 2, num_register_tokens, embed_dim))
        self.patch_start_idx = 1 + num_register_tokens
        self.cached_layer_indices = set(cached_layer_indices) | {depth - 1}
        self.register_buffer("_resnet_mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("_resnet_std", torch.tensor([0.229, 0.224, 0.225]).view(1, 1, 3, 1, 1), persistent=False)

    @staticmethod
    def _special(tokens: Tensor, b: int, s: int) -> Tensor:
        # frame 0 takes the first set, every later frame the second: [B*S, X, C]
        first = tokens[:, :1].expand(b, 1, *tokens.shape[2:])
        rest = tokens[:, 1:].expand(b, s - 1, *tokens.shape[2:])
        return torch.cat([first, rest], dim=1).reshape(b * s, *tokens.shape[2:])

    def forward(self, images: Tensor) -> tuple[list[Tensor | None], int]:
        b, s, _, h, w = images.shape
        x = ((images - self._resnet_mean) / self._resnet_std).reshape(b * s, 3, h, w)
        patches = self.patch_embed(x)
        tokens = torch.cat(
            [self._special(self.camera_token, b, s), self._special(self.register_token, b, s), patches], 1
        )
        _, p, c = tokens.shape
        gh, gw = h // self.patch_size, w // self.patch_size
        pos = None
        if self.rope is not None:
            grid = torch.cartesian_prod(torch.arange(gh, device=images.device), torch.arange(gw, device=images.device))
            pos = torch.cat([torch.zeros(self.patch_start_idx, 2, dtype=grid.dtype, device=grid.device), grid + 1])
            pos = pos[None].expand(b * s, -1, -1)
        outputs: list[Tensor | None] = []
        for i in range(self.depth):
            tokens = self.frame_blocks[i](tokens.reshape(b * s, p, c), pos=pos)
            frame_out = tokens.reshape(b, s, p, c)
            global_pos = None if pos is None else pos.reshape(b, s * p, 2)
            tokens = self.global_blocks[i](tokens.reshape(b, s * p, c), pos=global_pos)
            global_out = tokens.reshape(b, s, p, c)
            outputs.append(torch.cat([frame_out, global_out], -1) if i in self.cached_layer_indices else None)
        return outputs, self.patch_start_idx


class CameraHead(nn.Module):
    """Camera token of the last layer -> ``pose_enc [B, S, 9]`` near a forward-facing rig."""

    def __init__(self, dim_in: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim_in)
        self.linear = nn.Linear(dim_in, 9)

    def forward(self, tokens_list: list[Tensor | None]) -> list[Tensor]:
        raw = self.linear(self.norm(tokens_list[-1][:, :, 0])) * 0.05  # [B, S, 9]
        s = raw.shape[1]
        # A small arc of cameras stepping sideways keeps random weights readable in 3D.
        step = torch.linspace(0, 0.3 * (s - 1), s, device=raw.device)
        t = raw[..., :3] + torch.stack([-step, torch.zeros_like(step), torch.zeros_like(step)], -1)
        quat = F.normalize(raw[..., 3:7] + raw.new_tensor([0.0, 0.0, 0.0, 1.0]), dim=-1)
        fov = 1.0 + raw[..., 7:9]
        return [torch.cat([t, quat, fov], dim=-1)]


class PixelHead(nn.Module):
    """Per-patch linear map to ``out`` channels per pixel: ``[B, S, H, W, out]``."""

    def __init__(self, dim_in: int, patch_size: int, out: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.out = out
        self.linear = nn.Linear(dim_in, patch_size * patch_size * out)

    def forward(self, tokens_list: list[Tensor | None], images: Tensor, patch_start_idx: int) -> Tensor:
        b, s, _, h, w = images.shape
        gh, gw, ps = h // self.patch_size, w // self.patch_size, self.patch_size
        x = self.linear(tokens_list[-1][:, :, patch_start_idx:]) * 0.1
        x = x.reshape(b, s, gh, gw, ps, ps, self.out).permute(0, 1, 2, 4, 3, 5, 6)
        return x.reshape(b, s, h, w, self.out)


class TinyVGGT(nn.Module):
    """VGGT's forward contract at toy size: ``images [S,3,H,W] or [B,S,3,H,W]`` -> VGGT's dict."""

    def __init__(self, patch_size: int = 14, embed_dim: int = 64, depth: int = 4, num_heads: int = 4) -> None:
        super().__init__()
        self.aggregator = Aggregator(patch_size, embed_dim, depth, num_heads)
        self.camera_head = CameraHead(2 * embed_dim)
        self.depth_head = PixelHead(2 * embed_dim, patch_size, 2)
        self.point_head = PixelHead(2 * embed_dim, patch_size, 4)
        self.track_head = None

    def forward(self, images: Tensor, query_points: Tensor | None = None) -> dict[str, Tensor]:
        if images.ndim == 4:
            images = images[None]
        tokens_list, patch_start_idx = self.aggregator(images)
        b, s, _, h, w = images.shape
        pose_enc_list = self.camera_head(tokens_list)
        pose_enc = pose_enc_list[-1]
        d = self.depth_head(tokens_list, images, patch_start_idx)
        depth = 2.0 + d[..., :1].tanh()  # [B, S, H, W, 1], a wavy wall 1-3 units away
        depth_conf = 1.0 + d[..., 1].exp()
        # Points are the depth unprojected with the predicted cameras plus a small learned
        # offset, so the tiny model's point map and depth map describe one scene.
        extr, intr = pose_encoding_to_cameras(pose_enc, (h, w))
        v, u = torch.meshgrid(
            torch.arange(h, device=images.device), torch.arange(w, device=images.device), indexing="ij"
        )
        fx, fy = intr[..., 0, 0, None, None], intr[..., 1, 1, None, None]
        cx, cy = intr[..., 0, 2, None, None], intr[..., 1, 2, None, None]
        z = depth[..., 0]
        cam = torch.stack([(u - cx) / fx * z, (v - cy) / fy * z, z], dim=-1)  # [B, S, H, W, 3]
        rot, t = extr[..., :3], extr[..., 3]
        world = torch.einsum("bsji,bshwj->bshwi", rot, cam - t[:, :, None, None, :])
        p = self.point_head(tokens_list, images, patch_start_idx)
        return {
            "pose_enc": pose_enc,
            "pose_enc_list": pose_enc_list,
            "depth": depth,
            "depth_conf": depth_conf,
            "world_points": world + 0.01 * p[..., :3],
            "world_points_conf": 1.0 + p[..., 3].exp(),
            "images": images,
        }


def tiny_vggt(seed: int = 0, embed_dim: int = 64, depth: int = 4, num_heads: int = 4, patch_size: int = 14) -> TinyVGGT:
    """A seeded TinyVGGT in eval mode (64-dim tokens, 4 heads, 4 frame + 4 global blocks)."""
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = TinyVGGT(patch_size, embed_dim, depth, num_heads)
        # Larger special tokens than VGGT's init make them attract visible attention,
        # as trained VGGT's do, so tests and demos exercise the special-token mass.
        with torch.no_grad():
            model.aggregator.camera_token.mul_(2.0)
    finally:
        torch.random.set_rng_state(gen_state)
    return label_model(model, TINY_LABEL).eval()
