"""A CONSTRUCTED demo model: the tiny VGGT with one global block made of hand-made "matching" heads.

Random weights give diffuse attention maps, so a recording of ``tiny_vggt()`` shows the
machinery but not what a correspondence head looks like. ``matching_vggt()`` takes the same
seeded tiny model and rewrites the heads of ONE global block so that their attention follows
appearance across views:

- each head's key projection is set equal to its query projection (``k = q`` before the norms),
  so a token's logit to a key is the similarity of the two tokens' features (each head compares
  them through its own random projection);
- the block's q/k LayerNorm gains (shared by its heads, as in VGGT) are ``gain`` on the feature
  pairs that VGGT's 2D RoPE rotates slowly (at most 0.1 rad per patch) and 0 on the fast ones,
  so position barely changes the logits: what is left is appearance, sharpened by ``gain ** 2``.

The model's structure, code path and every other weight are those of ``tiny_vggt(seed)``;
nothing here is learned. The model carries ``CONSTRUCTED_LABEL``, so every recording made
with it says so, whatever the entry point; it is for demos and screenshots, never for claims about VGGT.
"""

from __future__ import annotations

import torch

from vggt_attn_rerun.core.loading import ModelLabel, label_model
from vggt_attn_rerun.testing.tiny_model import TinyVGGT, tiny_vggt

#: one line for recordings and docs: what this model is
CONSTRUCTED_NOTE = (
    "Model: CONSTRUCTED demo (vggt_attn_rerun.testing.matching_vggt): the random tiny VGGT with one "
    "global block made of hand-made appearance-matching heads (k = q weights, large q/k norm gains); "
    "not learned, not VGGT."
)
#: the label the model carries (core.loading.ModelLabel): every recording of it shows it
CONSTRUCTED_LABEL = ModelLabel("CONSTRUCTED demo model, not VGGT", CONSTRUCTED_NOTE)
UNIFORM_LABEL = ModelLabel(
    "CONSTRUCTED uniform model, not VGGT",
    "Model: CONSTRUCTED null model (testing.uniform_vggt): a tiny random VGGT whose global attention is exactly "
    "uniform; every consistency gain of its global blocks is 0 by construction.",
)


def _slow_rope_mask(head_dim: int, frequency: float, max_step: float) -> torch.Tensor:
    """``[head_dim]`` bool: features whose RoPE angle grows by at most ``max_step`` rad per patch.

    The layout of testing.tiny_model.RotaryPositionEmbedding2D (VGGT's): the first half of a head's
    features rotates with y, the second with x; within a half of d features, feature j and
    j + d/2 rotate together at ``frequency ** (-2 (j mod d/2) / d)`` rad per patch.
    """
    d = head_dim // 2
    inv_freq = 1.0 / (frequency ** (torch.arange(0, d, 2).float() / d))  # [d/2]
    half = torch.cat([inv_freq, inv_freq]) <= max_step  # [d]
    return torch.cat([half, half])


def matching_vggt(seed: int = 0, block: int = 2, gain: float = 1.5, max_step: float = 0.1) -> TinyVGGT:
    """``tiny_vggt(seed)`` whose global block ``block`` is made of appearance matchers.

    ``gain``: the q/k norm gain on the slow RoPE features; the logits scale with ``gain ** 2``
    (larger = sharper peaks). ``max_step``: the fastest RoPE rotation kept (rad per patch).
    The model is in eval mode; see the module docstring.
    """
    model = tiny_vggt(seed)
    agg = model.aggregator
    if not 0 <= block < len(agg.global_blocks):
        raise ValueError(f"block {block} does not exist: valid are 0..{len(agg.global_blocks) - 1}")
    attn = agg.global_blocks[block].attn
    dim = attn.qkv.in_features
    mask = _slow_rope_mask(attn.head_dim, agg.rope.frequency, max_step).float()
    with torch.no_grad():
        # qkv's output is [q | k | v], each dim wide: k := q for every head.
        attn.qkv.weight[dim : 2 * dim] = attn.qkv.weight[:dim]
        attn.qkv.bias[dim : 2 * dim] = attn.qkv.bias[:dim]
        for norm in (attn.q_norm, attn.k_norm):
            norm.weight.copy_(gain * mask)
            norm.bias.zero_()
    return label_model(model, CONSTRUCTED_LABEL).eval()


def uniform_vggt(seed: int = 0) -> TinyVGGT:
    """``tiny_vggt(seed)`` whose global attention is exactly uniform: every global block's query is 0.

    The q LayerNorm's gain and bias are zeroed, so every query vector is 0 (RoPE rotates 0 to 0),
    every logit is 0 and softmax gives each key ``1 / (S * P)``: a null model whose heads cannot
    follow geometry. The rest of the model is ``tiny_vggt(seed)``.
    """
    model = tiny_vggt(seed)
    with torch.no_grad():
        for block in model.aggregator.global_blocks:
            block.attn.q_norm.weight.zero_()
            block.attn.q_norm.bias.zero_()
    return label_model(model, UNIFORM_LABEL).eval()
