"""Capture the attention of chosen query tokens during one VGGT forward pass.

How: hooks read the q and k each aggregator attention module really uses, right where the
module computes them (outputs of ``q_norm``/``k_norm`` and of the shared ``rope``, which gets
``pos`` by keyword from ``Block.forward``). When the module returns, its query rows are
rebuilt as ``softmax(scale * q_rows @ k^T)`` in fp32, stored, and q/k are released. So:

- exact: the same q/k (norms and RoPE included) and scale as the module, softmax in fp32;
- light: one ``[Q, H, N]`` row block per module, never an ``N x N`` matrix, and no second
  qkv projection; the fused SDPA path of the model stays on;
- faithful: hooks only read; they are removed on exit, also when the forward raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .errors import UserError
from .tokens import Query, TokenLayout

KINDS = ("frame", "global")
_BLOCK_LISTS = {"frame": "frame_blocks", "global": "global_blocks"}


def find_aggregator(model: nn.Module) -> nn.Module:
    """The module that owns VGGT's ``frame_blocks`` and ``global_blocks``."""
    for candidate in (getattr(model, "aggregator", None), model):
        if isinstance(candidate, nn.Module) and all(
            isinstance(getattr(candidate, name, None), nn.ModuleList) for name in ("frame_blocks", "global_blocks")
        ):
            return candidate
    raise UserError(
        f"model {type(model).__name__} has no VGGT aggregator: expected a module with .aggregator, "
        f"or one with .frame_blocks and .global_blocks (ModuleLists of attention blocks)"
    )


def model_layout(model: nn.Module, num_frames: int, height: int, width: int) -> TokenLayout:
    """The token layout the model will use for S frames of ``height x width`` pixels."""
    agg = find_aggregator(model)
    patch_size = int(getattr(agg, "patch_size", 14))
    if isinstance(getattr(agg, "patch_embed", None), nn.Module) and hasattr(agg.patch_embed, "patch_size"):
        ps = agg.patch_embed.patch_size
        patch_size = int(ps[0] if isinstance(ps, tuple) else ps)
    num_registers = int(getattr(agg, "patch_start_idx", 5)) - 1
    return TokenLayout.for_image_size(num_frames, height, width, patch_size, num_registers)


def model_depth(model: nn.Module) -> int:
    return len(find_aggregator(model).frame_blocks)


def model_heads(model: nn.Module) -> int:
    return int(find_aggregator(model).frame_blocks[0].attn.num_heads)


def check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    kinds = tuple(dict.fromkeys(k.strip().lower() for k in kinds))
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise UserError(f"unknown attention kind {bad[0] if bad else '(none)'!r}: valid kinds are frame, global")
    return kinds


def check_blocks(model: nn.Module, blocks: Sequence[int] | None) -> tuple[int, ...]:
    depth = model_depth(model)
    if blocks is None:
        return tuple(range(depth))
    blocks = tuple(sorted(dict.fromkeys(int(b) for b in blocks)))
    bad = [b for b in blocks if not 0 <= b < depth]
    if bad or not blocks:
        raise UserError(f"block {bad[0] if bad else '(none)'} does not exist: valid blocks are 0..{depth - 1}")
    return blocks


# --------------------------------------------------------------------------------------------
# The hooks: deliver (kind, block, q, k) with q, k ``[B', H, N, D]`` exactly as the module used them
# --------------------------------------------------------------------------------------------


@dataclass
class _Slot:
    kind: str
    block: int
    q: Tensor | None = None
    k: Tensor | None = None
    pos: Tensor | None = None
    roped: set[str] = field(default_factory=set)


@contextmanager
def qk_hooks(
    model: nn.Module,
    blocks: Sequence[int],
    kinds: Sequence[str],
    on_qk: Callable[[str, int, Tensor, Tensor, nn.Module], None],
) -> Iterator[None]:
    """While active, calls ``on_qk(kind, block, q, k, attn)`` after each selected attention module ran.

    q, k: ``[B', H, N, D]`` after q_norm/k_norm and RoPE, in the dtype the module used.
    """
    agg = find_aggregator(model)
    handles: list[torch.utils.hooks.RemovableHandle] = []
    active: list[_Slot] = []  # the slot whose attention module is running (at most one)
    ropes: dict[int, nn.Module] = {}

    def pre_hook(slot: _Slot) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            slot.q = slot.k = None
            slot.roped.clear()
            slot.pos = kwargs.get("pos", args[1] if len(args) > 1 else None)
            active[:] = [slot]

        return hook

    def norm_hook(slot: _Slot, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if active and active[0] is slot:
                setattr(slot, name, output)

        return hook

    def rope_hook(module: nn.Module, args: tuple, output: Tensor) -> None:
        # The rope module is shared by all blocks; match its input by identity with the
        # q/k this block's norms just produced, so the order of the two calls does not matter.
        if not active:
            return
        slot = active[0]
        for name in ("q", "k"):
            if args and args[0] is getattr(slot, name):
                setattr(slot, name, output)
                slot.roped.add(name)

    def post_hook(slot: _Slot) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Tensor) -> None:
            try:
                if slot.q is None or slot.k is None:
                    raise RuntimeError(
                        f"{slot.kind} block {slot.block}: q_norm/k_norm did not run; this attention "
                        "module does not follow VGGT's code path"
                    )
                q, k = slot.q, slot.k
                rope = module.rope
                if rope is not None and slot.roped != {"q", "k"}:
                    # A variant applied RoPE to a copy we did not see: apply it as the module would.
                    q = rope(q, slot.pos) if "q" not in slot.roped else q
                    k = rope(k, slot.pos) if "k" not in slot.roped else k
                on_qk(slot.kind, slot.block, q, k, module)
            finally:
                slot.q = slot.k = slot.pos = None
                active.clear()

        return hook

    try:
        for kind in kinds:
            for b in blocks:
                attn = getattr(agg, _BLOCK_LISTS[kind])[b].attn
                slot = _Slot(kind, b)
                handles.append(attn.register_forward_pre_hook(pre_hook(slot), with_kwargs=True))
                handles.append(attn.register_forward_hook(post_hook(slot), with_kwargs=True))
                handles.append(attn.q_norm.register_forward_hook(norm_hook(slot, "q")))
                handles.append(attn.k_norm.register_forward_hook(norm_hook(slot, "k")))
                if attn.rope is not None:
                    ropes[id(attn.rope)] = attn.rope
        for rope in ropes.values():
            handles.append(rope.register_forward_hook(rope_hook))
        yield
    finally:
        for h in handles:
            h.remove()
        active.clear()


def attention_logits_rows(q_rows: Tensor, k: Tensor, scale: float) -> Tensor:
    """fp32 softmax of ``scale * q_rows @ k^T``: q_rows ``[H, Q, D]``, k ``[H, N, D]`` -> ``[H, Q, N]``."""
    # The model may run under autocast; our matmul must not be cast down again.
    with torch.autocast(q_rows.device.type, enabled=False):
        logits = (q_rows.float() * scale) @ k.float().transpose(-2, -1)
        return logits.softmax(dim=-1)


# --------------------------------------------------------------------------------------------
# Rows of Q queries
# --------------------------------------------------------------------------------------------


@dataclass
class AttentionRows:
    """The attention rows of Q query tokens, per kind, block and head.

    Attributes:
        layout: the run's TokenLayout (S frames, gh x gw patches, special tokens).
        queries: the Q queries, in order.
        blocks: the captured block indices, in order (index ``l`` of the first axis below).
        num_heads: H.
        probs: per kind, ``[L, Q, H, S, P]`` raw probabilities over all keys in token order
            (each frame: camera, registers, patches). Each ``[l, q, h]`` sums to 1. For frame
            attention only the query's own frame is non-zero (frames attend within themselves).

    Views (no copies): ``patches(kind)`` ``[L, Q, H, S, gh, gw]`` and ``special(kind)``
    ``[L, Q, H, S, 1 + R]``. Renormalizing over patches is explicit: ``patches(kind, renorm=True)``.
    """

    layout: TokenLayout
    queries: tuple[Query, ...]
    blocks: tuple[int, ...]
    num_heads: int
    probs: dict[str, Tensor]

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.probs)

    def block_index(self, block: int) -> int:
        try:
            return self.blocks.index(block)
        except ValueError:
            raise UserError(f"block {block} was not captured: captured blocks are {list(self.blocks)}") from None

    def _probs(self, kind: str) -> Tensor:
        if kind not in self.probs:
            raise UserError(f"attention kind {kind!r} was not captured: captured kinds are {list(self.probs)}")
        return self.probs[kind]

    def patches(self, kind: str, renorm: bool = False) -> Tensor:
        """``[L, Q, H, S, gh, gw]``: probability on each patch key (renorm: divided by the patch mass)."""
        lay = self.layout
        p = self._probs(kind)[..., lay.patch_start :]
        if renorm:
            p = p / p.sum(dim=(-1, -2), keepdim=True).clamp_min(1e-30)
        return p.reshape(*p.shape[:-1], lay.grid_h, lay.grid_w)

    def special(self, kind: str) -> Tensor:
        """``[L, Q, H, S, 1 + R]``: probability on each frame's camera and register tokens."""
        return self._probs(kind)[..., : self.layout.patch_start]

    def frame_mass(self, kind: str) -> Tensor:
        """``[L, Q, H, S]``: total probability on each frame's tokens."""
        return self._probs(kind).sum(-1)

    def head_mean(self, kind: str) -> Tensor:
        """``[L, Q, S, P]``: the mean over heads of the raw probabilities."""
        return self._probs(kind).mean(2)

    def get(self, kind: str, block: int) -> Tensor:
        """``[Q, H, S, gh, gw]`` patch probabilities of one block."""
        return self.patches(kind)[self.block_index(block)]


class RowCollector:
    """on_qk consumer that keeps the rows of the queries (see AttentionRows)."""

    def __init__(self, layout: TokenLayout, queries: Sequence[Query], blocks: Sequence[int],
                 kinds: Sequence[str], num_heads: int, store_device: str | torch.device = "cpu",
                 store_dtype: torch.dtype = torch.float32) -> None:  # fmt: skip
        self.layout = layout
        self.queries = tuple(queries)
        self.blocks = tuple(blocks)
        self.num_heads = num_heads
        lay, q = layout, len(self.queries)
        self.probs = {
            kind: torch.zeros(
                len(self.blocks),
                q,
                num_heads,
                lay.num_frames,
                lay.tokens_per_frame,
                dtype=store_dtype,
                device=store_device,
            )  # fmt: skip
            for kind in kinds
        }
        self.seen: set[tuple[str, int]] = set()
        self._frames = torch.tensor([qq.frame for qq in self.queries], dtype=torch.long)
        self._locals = torch.tensor([qq.local for qq in self.queries], dtype=torch.long)
        self._globals = torch.tensor([qq.token(layout) for qq in self.queries], dtype=torch.long)

    def _check_shape(self, kind: str, q: Tensor) -> None:
        lay = self.layout
        expected = (lay.num_frames, lay.tokens_per_frame) if kind == "frame" else (1, lay.num_tokens)
        if (q.shape[0], q.shape[2]) != expected:
            raise UserError(
                f"{kind} attention saw {q.shape[0]} sequences of {q.shape[2]} tokens but the layout expects "
                f"{expected[0]} of {expected[1]} ({lay.num_frames} frames of {lay.grid_h}x{lay.grid_w} patches, "
                "batch size 1)"
            )

    def __call__(self, kind: str, block: int, q: Tensor, k: Tensor, attn: nn.Module) -> None:
        self.compute(kind, block, q, k, float(attn.scale))

    def compute(self, kind: str, block: int, q: Tensor, k: Tensor, scale: float) -> None:
        """Store the rows of the queries from q, k ``[B', H, N, D]`` of one attention module."""
        self._check_shape(kind, q)
        out = self.probs[kind][self.blocks.index(block)]  # [Q, H, S, P]
        with torch.no_grad():
            if kind == "global":
                rows = attention_logits_rows(q[0][:, self._globals.to(q.device)], k[0], scale)  # [H, Q, S*P]
                out.copy_(rows.transpose(0, 1).reshape(out.shape))
            else:
                # One einsum for all queries against every frame's keys, then each query keeps its own
                # frame: S times the needed flops (tiny next to the attention itself) but no Python
                # loop over frames and no per-query copy of the keys.
                frames, local = self._frames.to(q.device), self._locals.to(q.device)
                with torch.autocast(q.device.type, enabled=False):
                    logits = torch.einsum("qhd,shpd->qhsp", q[frames, :, local].float() * scale, k.float())
                    rows = logits[torch.arange(len(frames), device=q.device), :, frames].softmax(dim=-1)  # [Q, H, P]
                out[torch.arange(len(frames)), :, self._frames] = rows.to(out)
        self.seen.add((kind, block))

    def result(self) -> AttentionRows:
        missing = [(k, b) for k in self.probs for b in self.blocks if (k, b) not in self.seen]
        if missing:
            raise RuntimeError(f"the forward pass did not run these attention modules: {missing[:4]}")
        return AttentionRows(self.layout, self.queries, self.blocks, self.num_heads, self.probs)


class QKCache:
    """on_qk consumer that keeps every block's q and k, so new queries need no second forward pass.

    Memory: ``2 * P * C`` values per frame per (kind, block), stored in the dtype the module used
    (rows from the cache are then bit-identical to a fresh capture's). VGGT-1B (C = 1024) at
    518x518 (P = 1374) in fp32: 11.3 MB per frame per (kind, block), 540 MB per frame for all
    24 blocks x 2 kinds; half that for a bf16 model. Fewer blocks or one kind shrink it.
    """

    def __init__(self, store_device: str | torch.device = "cpu") -> None:
        self.store_device = store_device
        self.qk: dict[tuple[str, int], tuple[Tensor, Tensor]] = {}
        self.scale: dict[tuple[str, int], float] = {}

    def __call__(self, kind: str, block: int, q: Tensor, k: Tensor, attn: nn.Module) -> None:
        def keep(t: Tensor) -> Tensor:
            return t.detach().to(self.store_device, copy=True)

        self.qk[(kind, block)] = (keep(q), keep(k))
        self.scale[(kind, block)] = float(attn.scale)

    def nbytes(self) -> int:
        return sum(q.nbytes + k.nbytes for q, k in self.qk.values())

    def rows(self, layout: TokenLayout, queries: Sequence[Query], num_heads: int) -> AttentionRows:
        """Attention rows of new queries from the cached q/k (no forward pass)."""
        if not self.qk:
            raise UserError("the q/k cache is empty: capture with keep_qk=True to query again without a forward pass")
        blocks = sorted({b for _, b in self.qk})
        kinds = [k for k in KINDS if any(kk == k for kk, _ in self.qk)]
        for qq in queries:
            qq.token(layout)
        collector = RowCollector(layout, queries, blocks, kinds, num_heads)
        for (kind, block), (q, k) in self.qk.items():
            collector.compute(kind, block, q, k, self.scale[(kind, block)])
        return collector.result()


@dataclass
class CaptureResult:
    """What one forward pass with capture returns.

    ``qk_cache`` is set when capture ran with ``keep_qk=True``: ``qk_cache.rows(layout, queries,
    rows.num_heads)`` gives the rows of any other query without running the model again.
    """

    predictions: dict[str, Tensor]
    rows: AttentionRows
    layout: TokenLayout
    qk_cache: QKCache | None = None


def _prepare_images(images: Tensor) -> Tensor:
    if images.ndim == 4:
        images = images[None]
    if images.ndim != 5 or images.shape[0] != 1 or images.shape[2] != 3:
        raise UserError(f"images must be [S, 3, H, W] or [1, S, 3, H, W], got {list(images.shape)}")
    return images


def capture(
    model: nn.Module,
    images: Tensor,
    queries: Sequence[Query] | Callable[[TokenLayout], Sequence[Query]],
    blocks: Sequence[int] | None = None,
    kinds: Sequence[str] = KINDS,
    autocast_dtype: torch.dtype | None = None,
    store_dtype: torch.dtype = torch.float32,
    keep_qk: bool = False,
) -> CaptureResult:
    """Run ``model(images)`` once and capture the attention rows of ``queries``.

    Args:
        model: VGGT or a model with its module tree (e.g. ``testing.tiny_vggt()``), in eval mode.
        images: ``[S, 3, H, W]`` or ``[1, S, 3, H, W]`` in [0, 1], H and W multiples of the patch size.
        queries: Query objects, or a function of the layout that returns them.
        blocks: block indices (default all); kinds: "frame" and/or "global".
        autocast_dtype: run the forward under ``torch.autocast(device, dtype)`` (e.g. bf16);
            attention rows are still computed in fp32 from the q/k the model used.
        store_dtype: dtype of the stored rows (fp32 default; fp16 halves their memory).
        keep_qk: also keep every block's q/k (see QKCache for its memory) so that other
            queries can be answered later without a forward pass.

    Returns:
        CaptureResult with the model's predictions (untouched) and AttentionRows.
    """
    images = _prepare_images(images)
    layout = model_layout(model, images.shape[1], images.shape[3], images.shape[4])
    qs = list(queries(layout) if callable(queries) else queries)
    if not qs:
        raise UserError("no queries given: pass at least one token, patch or pixel to query")
    for qq in qs:
        qq.token(layout)  # validates frame and index against this layout
    kinds, blocks = check_kinds(kinds), check_blocks(model, blocks)
    collector = RowCollector(layout, qs, blocks, kinds, model_heads(model), store_dtype=store_dtype)
    cache = QKCache() if keep_qk else None

    def on_qk(kind: str, block: int, q: Tensor, k: Tensor, attn: nn.Module) -> None:
        collector(kind, block, q, k, attn)
        if cache is not None:
            cache(kind, block, q, k, attn)

    device = images.device
    with torch.no_grad(), qk_hooks(model, blocks, kinds, on_qk):
        if autocast_dtype is not None:
            with torch.autocast(device.type, dtype=autocast_dtype):
                predictions = model(images)
        else:
            predictions = model(images)
    return CaptureResult(predictions, collector.result(), layout, cache)


# --------------------------------------------------------------------------------------------
# Full matrices (only on request: the seed API needs them)
# --------------------------------------------------------------------------------------------


def full_matrix_bytes(layout: TokenLayout, num_heads: int, kinds: Sequence[str], num_blocks: int = 1) -> int:
    """fp32 bytes of full attention matrices: frame ``[S, H, P, P]``, global ``[1, H, S*P, S*P]``."""
    per_kind = {
        "frame": layout.num_frames * num_heads * layout.tokens_per_frame**2 * 4,
        "global": num_heads * layout.num_tokens**2 * 4,
    }
    return num_blocks * sum(per_kind[k] for k in kinds)


class FullCollector:
    """on_qk consumer that builds full matrices in chunks of query rows."""

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
                    rows = attention_logits_rows(q[i, :, s : s + self.chunk_rows], k[i], float(attn.scale))
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
    images = _prepare_images(images)
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
    with torch.no_grad(), qk_hooks(model, blocks, kinds, collector):
        predictions = model(images)
    return predictions, collector.maps, layout
