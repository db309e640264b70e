"""``QKHooks``: torch hooks that hand over the q and k each attention module really used, and its mask.

How: hooks read the q and k each selected attention module really uses, right where the
module computes them (outputs of ``q_norm``/``k_norm``, then of the shared ``rope`` module,
which gets its positions by keyword from the block; the adapter names the keyword: ``pos``
for VGGT, ``xpos`` for pi3). Models whose RoPE is a method rather than a module (VGGT-Omega)
have it applied to the normed q/k by the module's own method (``ModelAdapter.apply_rope``).
When the module returns, the consumer ``on_qk`` gets q, k and the attention mask the block passed, if any.
So:

- exact: the same q/k (norms and RoPE included) as the module; masks are handed on;
- light: no second qkv projection, no ``N x N`` matrix; the fused SDPA path of the model stays on;
- faithful: hooks only read; they are removed on exit, also when the forward raises.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor, nn

from vggt_attn_rerun.core.adapters import MASK_KWARGS, ModelAdapter, adapter_for
from vggt_attn_rerun.errors import UserError


@dataclass
class _Slot:
    """One hooked attention module, and what its hooks have read during its current call."""

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


class QKHooks:
    """Torch hooks that hand over the q, k and mask each selected attention module used.

    A context manager: on entry it hooks the attention modules of ``blocks`` x ``kinds`` (their
    q_norm/k_norm, the shared rope module); while active, each hooked module's return calls
    ``on_qk(kind, block, q, k, attn)``, or ``on_qk(..., mask=mask)`` when the block passed an
    attention mask (StreamVGGT: additive float or boolean, True = attend, broadcastable to
    ``[B', H, N, N]``). q, k: ``[B', H, N, D]`` after q_norm/k_norm and RoPE, in the dtype the
    module used. On exit, also when the forward raised, every hook is removed.
    """

    def __init__(
        self,
        model: nn.Module,
        blocks: Sequence[int],
        kinds: Sequence[str],
        on_qk: Callable[..., None],
        arch: str | ModelAdapter | None = None,
    ) -> None:
        self.adapter = arch if isinstance(arch, ModelAdapter) else adapter_for(model, arch)
        if self.adapter.mask_kwarg is not None and "mask" not in _parameters(on_qk):
            raise UserError(
                f"{self.adapter.title} masks its attention, and this consumer of q/k ({type(on_qk).__name__}) does "
                "not apply masks; use capture(), which does"
            )
        self._model, self._blocks, self._kinds, self._on_qk = model, list(blocks), list(kinds), on_qk
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._active: _Slot | None = None  # the slot whose attention module is running

    def __enter__(self) -> QKHooks:
        try:
            self._register()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._remove()

    def _register(self) -> None:
        adapter = self.adapter
        root = adapter.root(self._model)
        ropes: dict[int, nn.Module] = {}
        for kind in self._kinds:
            for b in self._blocks:
                attn = adapter.blocks(root, kind)[b].attn
                _check_norms(attn, kind, b)
                slot = _Slot(kind, b, _arg_index(attn, adapter.pos_kwarg), _arg_index(attn, adapter.mask_kwarg))
                self._handles += [
                    attn.register_forward_pre_hook(partial(self._before_attn, slot), with_kwargs=True),
                    attn.register_forward_hook(partial(self._after_attn, slot), with_kwargs=True),
                    attn.q_norm.register_forward_hook(partial(self._after_norm, slot, "q")),
                    attn.k_norm.register_forward_hook(partial(self._after_norm, slot, "k")),
                ]
                rope = _rope_module(attn)
                if rope is not None:
                    ropes[id(rope)] = rope
        self._handles += [rope.register_forward_hook(self._after_rope) for rope in ropes.values()]

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._active = None

    def _before_attn(self, slot: _Slot, module: nn.Module, args: tuple, kwargs: dict) -> None:
        adapter = self.adapter
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
        self._active = slot

    def _after_norm(self, slot: _Slot, name: str, module: nn.Module, args: tuple, output: Tensor) -> None:
        if self._active is slot:
            setattr(slot, name, output)

    def _after_rope(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        # The rope module is shared by all blocks. Match its input by identity with the q/k this
        # block's norms just produced; a model that casts them first (pi3's `.to(v.dtype)` under
        # autocast) hands over a copy, which is matched by call order (q first, then k).
        slot = self._active
        if slot is None or not args:
            return
        name = next((n for n in ("q", "k") if args[0] is getattr(slot, n) and n not in slot.roped), None)
        if name is None:
            name = next((n for n in ("q", "k") if n not in slot.roped), None)
        if name is not None and getattr(slot, name) is not None:
            setattr(slot, name, output)
            slot.roped.add(name)

    def _after_attn(self, slot: _Slot, module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        try:
            if slot.q is None or slot.k is None:
                raise RuntimeError(
                    f"{slot.kind} block {slot.block}: q_norm/k_norm did not run; this attention "
                    f"module does not follow {self.adapter.title}'s code path"
                )
            q, k = slot.q, slot.k
            rope = _rope_module(module)
            if rope is not None and slot.roped != {"q", "k"}:
                # A variant applied RoPE to a copy we did not see: apply it as the module would.
                q = rope(q, slot.pos) if "q" not in slot.roped else q
                k = rope(k, slot.pos) if "k" not in slot.roped else k
            elif rope is None and self.adapter.apply_rope is not None:
                q, k = self.adapter.apply_rope(module, q, k, slot.pos)
            if slot.mask is None:
                self._on_qk(slot.kind, slot.block, q, k, module)
            else:
                self._on_qk(slot.kind, slot.block, q, k, module, mask=slot.mask)
        finally:
            slot.q = slot.k = slot.pos = slot.mask = None
            self._active = None
