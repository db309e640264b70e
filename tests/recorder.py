"""Test-only hooks that record what an attention module saw and produced."""

import torch

from vggt_attn_rerun.core.introspect import find_aggregator


class AttentionRecorder:
    """Test-only hooks: the inputs (x, pos) and output of each attention module, and its v."""

    def __init__(self, model, kind, block):
        agg = find_aggregator(model)
        self.attn = (agg.frame_blocks if kind == "frame" else agg.global_blocks)[block].attn
        self.handles = [
            self.attn.register_forward_hook(self._out, with_kwargs=True),
            self.attn.qkv.register_forward_hook(self._qkv),
        ]

    def _out(self, module, args, kwargs, output):
        self.x, self.pos, self.out = args[0].detach(), kwargs["pos"], output.detach()

    def _qkv(self, module, args, output):
        self.qkv = output.detach()

    def remove(self):
        for h in self.handles:
            h.remove()

    def explicit_attention(self):
        """Full softmax(scale * rope(q_norm(q)) rope(k_norm(k))^T) from the recorded input: [B, H, N, N]."""
        a = self.attn
        b, n, c = self.x.shape
        q, k, _ = self.qkv.reshape(b, n, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = a.q_norm(q), a.k_norm(k)
        q, k = a.rope(q, self.pos), a.rope(k, self.pos)
        return torch.softmax((q * a.scale) @ k.transpose(-2, -1), dim=-1)

    def values(self):
        a = self.attn
        b, n, c = self.x.shape
        return self.qkv.reshape(b, n, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)[2]  # [B, H, N, D]
