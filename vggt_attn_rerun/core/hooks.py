"""Hooks that hand over the q and k each attention module really used, and its mask.

How: hooks read the q and k each selected attention module really uses, right where the
module computes them (outputs of ``q_norm``/``k_norm``, then of the shared ``rope`` module,
which gets its positions by keyword from the block; the adapter names the keyword: ``pos``
for VGGT, ``xpos`` for pi3). Models whose RoPE is a method rather than a module (VGGT-Omega)
have it applied to the normed q/k by the module's own method (``ModelAdapter.apply_rope``).
When the module returns, ``on_qk`` gets q, k and the attention mask the block passed, if any.
So:

- exact: the same q/k (norms and RoPE included) as the module; masks are handed on;
- light: no second qkv projection, no ``N x N`` matrix; the fused SDPA path of the model stays on;
- faithful: hooks only read; they are removed on exit, also when the forward raises.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from vggt_attn_rerun.core.adapters import MASK_KWARGS, ModelAdapter, adapter_for
from vggt_attn_rerun.errors import UserError


@dataclass
class _Slot:
    kind: str
    block: int
    pos_index: int | None  # positional index of the positions argument of attn.forward
    mask_index: int | None
    q: Tensor | None = None
    k: Tensor | None = None
    pos: object = None
    mask: Tensor | None = None
    roped: set[str] = field(default_factory=set)


def _arg(args: tuple, kwargs: dict, name: str | None, index: int | None) -> object:
    if name is None:
        return None
    if name in kwargs:
        return kwargs[name]
    return args[index] if index is not None and len(args) > index else None


def _arg_index(module: nn.Module, name: str | None) -> int | None:
    try:
        names = list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return None
    return names.index(name) if name in names else None


def _parameters(fn: Callable) -> tuple[str, ...]:
    try:
        return tuple(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return ()


def _check_norms(attn: nn.Module, kind: str, block: int) -> None:
    for name in ("q_norm", "k_norm"):
        if not isinstance(getattr(attn, name, None), nn.Module):
            raise UserError(
                f"{kind} block {block}: the attention module ({type(attn).__name__}) has no {name} module, "
                "so the q and k it uses cannot be read; models built without q/k normalization are not supported"
            )


def _rope_module(attn: nn.Module) -> nn.Module | None:
    rope = getattr(attn, "rope", None)
    return rope if isinstance(rope, nn.Module) else None


@contextmanager
def qk_hooks(
    model: nn.Module,
    blocks: Sequence[int],
    kinds: Sequence[str],
    on_qk: Callable[..., None],
    arch: str | ModelAdapter | None = None,
) -> Iterator[None]:
    """While active, calls ``on_qk(kind, block, q, k, attn)`` after each selected attention module ran.

    q, k: ``[B', H, N, D]`` after q_norm/k_norm and RoPE, in the dtype the module used. When the
    block passed an attention mask (StreamVGGT), it comes as ``on_qk(..., mask=mask)``: additive
    float or boolean (True = attend), broadcastable to ``[B', H, N, N]``.
    """
    adapter = arch if isinstance(arch, ModelAdapter) else adapter_for(model, arch)
    if adapter.mask_kwarg is not None and "mask" not in _parameters(on_qk):
        raise UserError(
            f"{adapter.title} masks its attention, and this consumer of q/k ({type(on_qk).__name__}) does not "
            "apply masks; use capture(), which does"
        )
    handles: list[torch.utils.hooks.RemovableHandle] = []
    active: list[_Slot] = []  # the slot whose attention module is running (at most one)
    ropes: dict[int, nn.Module] = {}

    def pre_hook(slot: _Slot) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            slot.q = slot.k = None
            slot.roped.clear()
            slot.pos = _arg(args, kwargs, adapter.pos_kwarg, slot.pos_index)
            slot.mask = _arg(args, kwargs, adapter.mask_kwarg, slot.mask_index)
            if kwargs.get("use_cache"):
                raise UserError(
                    f"{adapter.title}'s streaming mode (k/v cache) is not captured: capture runs the model on "
                    "all frames at once, which attends to the same keys"
                )
            unexpected = [n for n in MASK_KWARGS if n != adapter.mask_kwarg and kwargs.get(n) is not None]
            if unexpected:
                raise UserError(
                    f"{slot.kind} block {slot.block} got an attention mask ({unexpected[0]}) that the {adapter.title} "
                    f"adapter does not apply; the rows would be wrong. Pick the right --arch (e.g. streamvggt)"
                )
            active[:] = [slot]

        return hook

    def norm_hook(slot: _Slot, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if active and active[0] is slot:
                setattr(slot, name, output)

        return hook

    def rope_hook(module: nn.Module, args: tuple, output: Tensor) -> None:
        # The rope module is shared by all blocks. Match its input by identity with the q/k this
        # block's norms just produced; a model that casts them first (pi3's `.to(v.dtype)` under
        # autocast) hands over a copy, which is matched by call order (q first, then k).
        if not active or not args:
            return
        slot = active[0]
        name = next((n for n in ("q", "k") if args[0] is getattr(slot, n) and n not in slot.roped), None)
        if name is None:
            name = next((n for n in ("q", "k") if n not in slot.roped), None)
        if name is not None and getattr(slot, name) is not None:
            setattr(slot, name, output)
            slot.roped.add(name)

    def post_hook(slot: _Slot) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            try:
                if slot.q is None or slot.k is None:
                    raise RuntimeError(
                        f"{slot.kind} block {slot.block}: q_norm/k_norm did not run; this attention "
                        f"module does not follow {adapter.title}'s code path"
                    )
                q, k = slot.q, slot.k
                rope = _rope_module(module)
                if rope is not None and slot.roped != {"q", "k"}:
                    # A variant applied RoPE to a copy we did not see: apply it as the module would.
                    q = rope(q, slot.pos) if "q" not in slot.roped else q
                    k = rope(k, slot.pos) if "k" not in slot.roped else k
                elif rope is None and adapter.apply_rope is not None:
                    q, k = adapter.apply_rope(module, q, k, slot.pos)
                if slot.mask is None:
                    on_qk(slot.kind, slot.block, q, k, module)
                else:
                    on_qk(slot.kind, slot.block, q, k, module, mask=slot.mask)
            finally:
                slot.q = slot.k = slot.pos = slot.mask = None
                active.clear()

        return hook

    try:
        root = adapter.root(model)
        for kind in kinds:
            for b in blocks:
                attn = adapter.blocks(root, kind)[b].attn
                _check_norms(attn, kind, b)
                slot = _Slot(kind, b, _arg_index(attn, adapter.pos_kwarg), _arg_index(attn, adapter.mask_kwarg))
                handles.append(attn.register_forward_pre_hook(pre_hook(slot), with_kwargs=True))
                handles.append(attn.register_forward_hook(post_hook(slot), with_kwargs=True))
                handles.append(attn.q_norm.register_forward_hook(norm_hook(slot, "q")))
                handles.append(attn.k_norm.register_forward_hook(norm_hook(slot, "k")))
                rope = _rope_module(attn)
                if rope is not None:
                    ropes[id(rope)] = rope
        for rope in ropes.values():
            handles.append(rope.register_forward_hook(rope_hook))
        yield
    finally:
        for h in handles:
            h.remove()
        active.clear()
