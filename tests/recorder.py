"""Test-only hooks that record what an attention module saw and produced."""

from vggt_attn_rerun.core.introspect import find_aggregator
from vggt_attn_rerun.testing.recompute import recompute_attention


class AttentionRecorder:
    """Test-only hooks: the inputs (x, pos) and output of each attention module."""

    def __init__(self, model, kind, block):
        agg = find_aggregator(model)
        self.attn = (agg.frame_blocks if kind == "frame" else agg.global_blocks)[block].attn
        self.handle = self.attn.register_forward_hook(self._out, with_kwargs=True)

    def _out(self, module, args, kwargs, output):
        self.x, self.pos, self.out = args[0].detach(), kwargs["pos"], output.detach()

    def remove(self):
        self.handle.remove()

    def explicit_attention(self):
        """Full softmax(scale * rope(q_norm(q)) rope(k_norm(k))^T) from the recorded input: [B, H, N, N]."""
        return recompute_attention(self.attn, self.x, self.pos)[0]

    def values(self):
        """v of the recorded input: [B, H, N, D]."""
        return recompute_attention(self.attn, self.x, self.pos)[1]
