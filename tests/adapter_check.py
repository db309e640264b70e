"""Test-only: an explicit recomputation of one attention module's attention, for any adapter."""

import torch

from vggt_attn_rerun.core.adapters import ModelAdapter
from vggt_attn_rerun.testing.recompute import recompute_attention, rope_of


class ModuleRecorder:
    """Records the input x, the keyword arguments and the output of one attention module."""

    def __init__(self, adapter: ModelAdapter, model, kind: str, block: int):
        self.adapter, self.kind, self.block = adapter, kind, block
        self.attn = adapter.attention(model, kind, block)
        self.handle = self.attn.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        self.x, self.kwargs, self.out = args[0].detach(), dict(kwargs), output.detach()

    def remove(self):
        self.handle.remove()

    def explicit(self):
        """``(A [B', H, N, N], v [B', H, N, D])``: softmax in fp32 of scale * q k^T + mask."""
        rope = rope_of(self.attn, self.adapter.name)
        pos, mask = self.kwargs.get(self.adapter.pos_kwarg), self.kwargs.get("attn_mask")
        return recompute_attention(self.attn, self.x, pos, mask=mask, rope=rope)


def check_rows_and_output(rec: ModuleRecorder, res, atol=1e-5):
    """Rows equal the explicit attention, and ``proj(A @ V)`` of the rows rebuilds the module output.

    Returns how many rows were compared (a check that compared nothing would be no check).
    """
    lay, a = res.layout, rec.attn
    full, v = rec.explicit()
    rows = res.rows.probs[rec.kind][res.rows.block_index(rec.block)]  # [Q, H, S, P]
    special_only = rec.kind == "global" and full.shape[-1] == lay.num_frames * lay.patch_start
    compared = 0
    for i, qq in enumerate(res.rows.queries):
        if special_only:
            if qq.local >= lay.patch_start:  # patch tokens take no part in this block
                assert rows[i].abs().max() == 0
                continue
            b, t = 0, qq.frame * lay.patch_start + qq.local
            want = full[b, :, t].reshape(-1, lay.num_frames, lay.patch_start)
            got, rest = rows[i][..., : lay.patch_start], rows[i][..., lay.patch_start :]
            assert rest.abs().max() == 0
        elif rec.kind == "global":
            b, t = 0, qq.token(lay)
            want, got = full[b, :, t].reshape(-1, lay.num_frames, lay.tokens_per_frame), rows[i]
        else:
            b, t = qq.frame, qq.local
            want, got = full[b, :, t], rows[i, :, qq.frame]
            others = [f for f in range(lay.num_frames) if f != qq.frame]
            assert rows[i][:, others].abs().max() == 0
        torch.testing.assert_close(got, want, atol=atol, rtol=0)
        heads = torch.einsum("hn,hnd->hd", got.reshape(a.num_heads, -1).to(v.dtype), v[b])
        torch.testing.assert_close(a.proj(heads.reshape(-1)), rec.out[b, t], atol=atol, rtol=1e-4)
        compared += 1
    return compared
