"""Interventions on a model's attention: ablate a head, a block's attention branch, or cross-view attention.

One context manager, ``intervene(model, interventions)``, in the style of TransformerLens's
``hooks()``: while it is active, the model's forward runs with the interventions applied, on
the model's own code path; on exit every hook is removed (also when the forward raises).

- ``HeadAblation``: one head's output, before the output projection (``attn.proj``), replaced
  by zeros or by its mean over the tokens of its sequence (one frame in a frame block, all
  frames in a global block). The input of ``proj`` is ``[B', N, H * D]``, head-major, as every
  supported model builds it (``x.transpose(1, 2).reshape(B, N, C)``).
- ``BlockAblation``: the attention module's whole output (the residual branch
  ``x + ls1(attn(norm1(x)))``) replaced by zeros or by its mean over tokens.
- ``CrossViewKnockout``: in a global block, the rows of the chosen query tokens (default: every
  patch token) keep only the keys of their own frame: probabilities on other frames' keys set
  to 0 and the row renormalised, which is the softmax over the own frame's keys. The q and k
  are those the module used (``core.hooks.QKHooks``: norms, RoPE and masks included), v comes
  from the module's ``qkv`` output (``[B', N, 3, H, D]``, as every supported model splits it).
  The knocked-out rows replace the module's rows before ``proj``, then ``proj`` runs again.
  Blocks whose sequence holds only the special tokens (VGGT-Omega's "register" blocks, where
  patch tokens do not attend) have no patch rows: a knockout of patch tokens changes nothing there.

Each intervention applies to every element of the batch, or to one (``item``), so several
interventions can share one forward pass of a batch of copies of the same scene.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vggt_attn_rerun.core.adapters import ModelAdapter, adapter_for
from vggt_attn_rerun.core.hooks import QKHooks
from vggt_attn_rerun.core.introspect import KINDS
from vggt_attn_rerun.core.rows import mask_rows
from vggt_attn_rerun.core.tokens import TokenLayout
from vggt_attn_rerun.errors import UserError

ABLATIONS = ("zero", "mean")
# Knocked-out rows are computed this many query rows at a time: bounds the [H, rows, N] logits.
_ROW_CHUNK = 2048


@dataclass(frozen=True)
class HeadAblation:
    """Head ``head`` of ``kind`` block ``block``: its output replaced by zeros or its mean over tokens."""

    kind: str
    block: int
    head: int
    ablation: str = "zero"
    item: int | None = None

    @property
    def label(self) -> str:
        return f"{self.kind} block {self.block} head {self.head} ({self.ablation})"


@dataclass(frozen=True)
class BlockAblation:
    """The attention output of ``kind`` block ``block`` (its residual branch) replaced by zeros or its mean."""

    kind: str
    block: int
    ablation: str = "zero"
    item: int | None = None

    @property
    def label(self) -> str:
        return f"{self.kind} block {self.block} attention ({self.ablation})"


@dataclass(frozen=True)
class CrossViewKnockout:
    """Global block ``block``: the rows of ``tokens`` (global token indices; None: every patch token)
    attend only to their own frame's keys."""

    block: int
    tokens: tuple[int, ...] | None = None
    item: int | None = None
    kind: str = field(default="global", init=False)

    @property
    def label(self) -> str:
        who = "patch tokens" if self.tokens is None else f"{len(self.tokens)} query token(s)"
        return f"global block {self.block} cross-view knockout ({who})"


Intervention = HeadAblation | BlockAblation | CrossViewKnockout


def _check_one(iv: object, adapter: ModelAdapter, root: nn.Module, layout: TokenLayout | None) -> None:
    if not isinstance(iv, (HeadAblation, BlockAblation, CrossViewKnockout)):
        raise UserError(
            f"intervention {iv!r:.60} is a {type(iv).__name__}: "
            "valid are HeadAblation, BlockAblation, CrossViewKnockout"
        )
    if iv.kind not in KINDS:
        raise UserError(f"{iv.label}: unknown attention kind {iv.kind!r}: valid kinds are frame, global")
    depth = len(adapter.blocks(root, iv.kind))
    if isinstance(iv.block, bool) or not isinstance(iv.block, int) or not 0 <= iv.block < depth:
        raise UserError(f"{iv.label}: block {iv.block!r} does not exist: valid blocks are 0..{depth - 1}")
    attn = adapter.blocks(root, iv.kind)[iv.block].attn
    if iv.item is not None and (not isinstance(iv.item, int) or iv.item < 0):
        raise UserError(f"{iv.label}: item {iv.item!r} must be a batch index >= 0 or None (every element)")
    if iv.item is not None and iv.kind == "frame" and layout is None:
        raise UserError(f"{iv.label}: an intervention on one batch item of a frame block needs the token layout")
    if isinstance(iv, (HeadAblation, BlockAblation)) and iv.ablation not in ABLATIONS:
        raise UserError(f"{iv.label}: unknown ablation {iv.ablation!r}: valid are {', '.join(ABLATIONS)}")
    if isinstance(iv, HeadAblation):
        heads = int(getattr(attn, "num_heads", 0))
        if not isinstance(getattr(attn, "proj", None), nn.Module) or heads < 1:
            raise UserError(
                f"{iv.label}: the {adapter.title} attention module ({type(attn).__name__}) has no .proj and "
                ".num_heads, so a head's output cannot be replaced; ablate the whole block instead"
            )
        if isinstance(iv.head, bool) or not isinstance(iv.head, int) or not 0 <= iv.head < heads:
            raise UserError(f"{iv.label}: head {iv.head!r} does not exist: valid heads are 0..{heads - 1}")
    if isinstance(iv, CrossViewKnockout):
        if layout is None:
            raise UserError(f"{iv.label}: a cross-view knockout needs the token layout (which token is in which frame)")
        missing = [n for n in ("qkv", "proj", "q_norm", "k_norm") if not isinstance(getattr(attn, n, None), nn.Module)]
        if missing or not hasattr(attn, "scale"):
            what = missing[0] if missing else "scale"
            raise UserError(
                f"{iv.label}: the {adapter.title} attention module ({type(attn).__name__}) has no .{what}, so its "
                "attention cannot be recomputed with a knockout; valid interventions there are head and block ablations"
            )
        if iv.tokens is not None:
            bad = [t for t in iv.tokens if not isinstance(t, int) or not 0 <= t < layout.num_tokens]
            if bad or not iv.tokens:
                raise UserError(
                    f"{iv.label}: token {bad[0] if bad else '(none)'} does not exist: "
                    f"valid are 0..{layout.num_tokens - 1}"
                )


def check_interventions(
    model: nn.Module,
    interventions: Sequence[Intervention],
    layout: TokenLayout | None = None,
    arch: str | ModelAdapter | None = None,
) -> None:
    """Raise UserError (one line) for an intervention the model's adapter cannot apply: before any forward."""
    adapter = arch if isinstance(arch, ModelAdapter) else adapter_for(model, arch)
    root = adapter.root(model)
    for iv in interventions:
        _check_one(iv, adapter, root, layout)


@dataclass
class _Site:
    """The interventions on one attention module and what its forward handed over."""

    kind: str
    block: int
    heads: list[HeadAblation] = field(default_factory=list)
    blocks: list[BlockAblation] = field(default_factory=list)
    knockouts: list[CrossViewKnockout] = field(default_factory=list)
    qk: tuple[Tensor, Tensor, Tensor | None] | None = None
    v: Tensor | None = None
    pre_proj: Tensor | None = None


def _items(iv: Intervention, kind: str, num_seqs: int, layout: TokenLayout | None) -> slice | Tensor:
    """The sequences ``[B']`` of the module's input that the intervention touches."""
    if iv.item is None:
        return slice(None)
    per = layout.num_frames if kind == "frame" else 1  # frame blocks see B * S sequences
    if (iv.item + 1) * per > num_seqs:
        raise UserError(f"{iv.label}: item {iv.item} is outside the batch of {num_seqs // per}")
    return slice(iv.item * per, (iv.item + 1) * per)


def _replace(x: Tensor, rows: slice | Tensor, cols: slice, ablation: str) -> None:
    """In place: ``x[rows, :, cols]`` -> zeros, or its mean over the token axis (dim 1)."""
    part = x[rows, :, cols]
    x[rows, :, cols] = 0 if ablation == "zero" else part.mean(dim=1, keepdim=True).expand_as(part)


def _frames_of(n: int, layout: TokenLayout) -> tuple[Tensor, Tensor]:
    """Frame ``[N]`` and global token index ``[N]`` of each position of a global sequence of N tokens."""
    if n == layout.num_tokens:
        idx = torch.arange(n)
        return idx // layout.tokens_per_frame, idx
    ps = layout.patch_start
    if n == layout.num_frames * ps:  # special tokens only (VGGT-Omega's register blocks)
        idx = torch.arange(n)
        return idx // ps, (idx // ps) * layout.tokens_per_frame + idx % ps
    raise UserError(
        f"a global block saw {n} tokens but the layout has {layout.num_tokens} ({layout.num_frames} frames of "
        f"{layout.tokens_per_frame}): the knockout needs the layout of these images"
    )


def _knockout_rows(site: _Site, attn: nn.Module, x: Tensor, layout: TokenLayout) -> Tensor:
    """``x`` ``[B', N, C]`` (the input of proj) with the knocked-out rows recomputed."""
    q, k, mask = site.qk
    v = site.v
    b, n, c = x.shape
    heads, d = q.shape[1], q.shape[3]
    if v.shape[-1] != 3 * heads * d:
        raise RuntimeError(f"global block {site.block}: qkv gives {v.shape[-1]} channels, expected 3 x {heads} x {d}")
    v = v.reshape(b, n, 3, heads, d)[:, :, 2].transpose(1, 2)  # [B', H, N, D]
    frame, token = _frames_of(n, layout)
    is_patch = (token % layout.tokens_per_frame) >= layout.patch_start
    x = x.clone()
    scale = float(attn.scale)
    for iv in site.knockouts:
        if iv.tokens is None:
            rows = torch.nonzero(is_patch).flatten()
        else:
            rows = torch.nonzero(torch.isin(token, torch.tensor(iv.tokens, dtype=torch.long))).flatten()
        seqs = range(b) if iv.item is None else [iv.item]
        for s in seqs:
            if s >= b:
                raise UserError(f"{iv.label}: item {s} is outside the batch of {b}")
            for start in range(0, len(rows), _ROW_CHUNK):
                r = rows[start : start + _ROW_CHUNK].to(q.device)
                keep = frame.to(q.device)[r][:, None] == frame.to(q.device)[None, :]  # [R, N]
                bias = torch.zeros(keep.shape, device=q.device).masked_fill(~keep, float("-inf"))[None]  # [1, R, N]
                if mask is not None:
                    picked = mask_rows(mask, torch.full_like(r, s), r, heads)  # [R, H, N]
                    picked = picked[:, :1] if picked.stride(1) == 0 else picked
                    bias = bias + picked.transpose(0, 1).to(q.device)
                with torch.autocast(q.device.type, enabled=False):
                    out = F.scaled_dot_product_attention(
                        q[s][:, r].float(), k[s].float(), v[s].float(), attn_mask=bias, scale=scale
                    )  # [H, R, D]
                x[s, r.to(x.device)] = out.transpose(0, 1).reshape(len(r), c).to(x)
    return x


@contextmanager
def intervene(
    model: nn.Module,
    interventions: Sequence[Intervention],
    layout: TokenLayout | None = None,
    arch: str | ModelAdapter | None = None,
) -> Iterator[None]:
    """While active, the model's forward runs with ``interventions`` applied.

    Args:
        model: a model with an adapter (VGGT, pi3, StreamVGGT, VGGT-Omega, or a tiny replica).
        interventions: HeadAblation, BlockAblation and CrossViewKnockout; several may touch the
            same module (head ablations are applied after a knockout, block ablations last).
        layout: the token layout of the images the model will see (``introspect.model_layout``);
            needed by knockouts and by per-item interventions on frame blocks.
        arch: the model's adapter or its name; default: chosen from the model's type.

    An intervention the adapter cannot apply raises UserError here, before any forward. With no
    interventions the model's output is bit-identical to its plain forward (no hook is set).
    """
    adapter = arch if isinstance(arch, ModelAdapter) else adapter_for(model, arch)
    interventions = list(interventions)
    check_interventions(model, interventions, layout, adapter)
    root = adapter.root(model)
    sites: dict[tuple[str, int], _Site] = {}
    for iv in interventions:
        site = sites.setdefault((iv.kind, iv.block), _Site(iv.kind, iv.block))
        {HeadAblation: site.heads, BlockAblation: site.blocks, CrossViewKnockout: site.knockouts}[type(iv)].append(iv)
    knocked = [s for s in sites.values() if s.knockouts]

    def on_qk(kind: str, block: int, q: Tensor, k: Tensor, attn: nn.Module, mask: Tensor | None = None) -> None:
        sites[(kind, block)].qk = (q, k, mask)

    def qkv_hook(site: _Site) -> object:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            site.v = output

        return hook

    def proj_pre_hook(site: _Site) -> object:
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            x = args[0]
            if site.knockouts and site.pre_proj is None:
                site.pre_proj = x  # the post hook recomputes the knocked-out rows and runs proj again
                return None
            if not site.heads:
                return None
            x = x.clone()
            width = x.shape[-1] // int(module_heads[(site.kind, site.block)])
            for iv in site.heads:
                _replace(x, _items(iv, site.kind, x.shape[0], layout), slice(iv.head * width, (iv.head + 1) * width),
                         iv.ablation)  # fmt: skip
            return (x, *args[1:])

        return hook

    def attn_hook(site: _Site) -> object:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
            try:
                if site.knockouts:
                    if site.qk is None or site.v is None or site.pre_proj is None:
                        raise RuntimeError(
                            f"global block {site.block}: the attention module did not run qkv, q_norm/k_norm and "
                            f"proj as {adapter.title}'s does; the knockout cannot be applied"
                        )
                    x = _knockout_rows(site, module, site.pre_proj, layout)
                    output = module.proj(x)  # the pre hook applies this module's head ablations
                    drop = getattr(module, "proj_drop", None)
                    output = drop(output) if isinstance(drop, nn.Module) else output
                if site.blocks:
                    output = output.clone()
                    for iv in site.blocks:
                        _replace(output, _items(iv, site.kind, output.shape[0], layout), slice(None), iv.ablation)
                return output if site.knockouts or site.blocks else None
            finally:
                site.qk = site.v = site.pre_proj = None

        return hook

    module_heads = {key: adapter.blocks(root, key[0])[key[1]].attn.num_heads for key in sites if sites[key].heads}
    handles: list[torch.utils.hooks.RemovableHandle] = []
    with ExitStack() as stack:
        if knocked:  # registered first, so its post hook hands over q and k before ours runs
            stack.enter_context(QKHooks(model, sorted({s.block for s in knocked}), ("global",), on_qk, adapter))
        stack.callback(lambda: [h.remove() for h in handles])
        for site in sites.values():
            attn = adapter.blocks(root, site.kind)[site.block].attn
            if site.knockouts:
                handles.append(attn.qkv.register_forward_hook(qkv_hook(site)))
            if site.heads or site.knockouts:
                handles.append(attn.proj.register_forward_pre_hook(proj_pre_hook(site)))
            if site.blocks or site.knockouts:
                handles.append(attn.register_forward_hook(attn_hook(site)))
        yield


WHATS = ("heads", "blocks", "knockout")


def sweep(
    model: nn.Module,
    what: str,
    kinds: Sequence[str] = ("global",),
    blocks: Sequence[int] | None = None,
    ablation: str = "zero",
    tokens: Sequence[int] | None = None,
    arch: str | ModelAdapter | None = None,
) -> list[Intervention]:
    """Every intervention of one sort over the chosen blocks, one per forward pass.

    ``what``: "heads" (each head of each block of each kind), "blocks" (each block's attention
    branch) or "knockout" (each global block; ``tokens`` None: all patch tokens, else those global
    token indices). ``kinds`` are ignored by knockouts, which exist in global blocks only.
    """
    adapter = arch if isinstance(arch, ModelAdapter) else adapter_for(model, arch)
    root = adapter.root(model)
    if what not in WHATS:
        raise UserError(f"unknown intervention sort {what!r}: valid are {', '.join(WHATS)}")
    if ablation not in ABLATIONS:
        raise UserError(f"unknown ablation {ablation!r}: valid are {', '.join(ABLATIONS)}")
    depth = len(adapter.blocks(root, "global"))
    blocks = tuple(range(depth)) if blocks is None else tuple(blocks)
    if what == "knockout":
        toks = None if tokens is None else tuple(int(t) for t in tokens)
        return [CrossViewKnockout(b, toks) for b in blocks]
    out: list[Intervention] = []
    for kind in kinds:
        for b in blocks:
            if what == "blocks":
                out.append(BlockAblation(kind, b, ablation))
            else:
                heads = int(adapter.blocks(root, kind)[b].attn.num_heads) if 0 <= b < depth else 1
                out += [HeadAblation(kind, b, h, ablation) for h in range(heads)]
    return out
