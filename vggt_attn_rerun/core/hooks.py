"""Hooks that hand over the q and k each aggregator attention module really used.

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

from vggt_attn_rerun.core.introspect import _BLOCK_LISTS, find_aggregator

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


