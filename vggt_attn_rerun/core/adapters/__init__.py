"""Model adapters: where a VGGT-like model keeps its attention, and how its tokens are laid out.

Each supported architecture is one small ``ModelAdapter``: the module that owns the blocks,
the attention module of every frame and global block, the per-frame special tokens, the patch
size, the keyword under which a block hands positions (and masks) to its attention, how RoPE
is applied when it is not a submodule, how the model is called, and which predictions give
points and cameras. Capture, layout and hooks only talk to the adapter.

Adapters are chosen from the model's type (``adapter_for(model)``) or named
(``adapter_for(model, "pi3")``); ``load_model(..., arch=...)`` tags the model it builds with
its architecture so that a named choice travels with the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from vggt_attn_rerun.errors import UserError

# Attribute that load_model sets on a model built for a named architecture.
ARCH_ATTR = "_vggt_attn_arch"
# Keywords under which attention modules commonly receive a mask; an adapter without a mask
# refuses a call that passes one, rather than returning rows the model did not compute.
MASK_KWARGS = ("attn_mask", "attn_bias", "mask")


@dataclass(frozen=True)
class ModelAdapter:
    """How to read the attention of one architecture.

    Attributes:
        name: the architecture's name (``--arch``).
        title: a human name for messages and the README table.
        matches: ``model -> bool``, true when the model (or its aggregator) is of this type.
        fits: ``model -> bool``, true when the model has this architecture's blocks (a named
            ``--arch`` needs only this); None: same as ``matches``.
        root: ``model -> module`` that owns the blocks (the aggregator, or a view naming the blocks).
        blocks: ``(root, kind) -> blocks`` of ``kind`` ("frame" or "global") in order; each has ``.attn``.
        patch_size: ``root -> int`` pixels per patch side.
        num_registers: ``root -> int`` register tokens per frame.
        num_cameras: camera tokens per frame (before the registers): 1, or 0 when there is none.
        pos_kwarg: the keyword under which a block passes positions (or RoPE tables) to ``attn``.
        mask_kwarg: the keyword of an attention mask the model passes (additive float or boolean
            ``True`` = attend, as ``scaled_dot_product_attention`` reads it), or None.
        apply_rope: ``(attn, q, k, pos) -> (q, k)`` for models whose RoPE is not a submodule
            ``attn.rope`` (then the hooks cannot see its output); None otherwise.
        run: ``(model, images [B, S, 3, H, W]) -> dict`` of predictions.
        points: the prediction that gives 3D points (``world_points``, ``points``, or ``depth``
            to unproject with the cameras).
        cameras: the prediction that gives cameras (``pose_enc`` or ``camera_poses``).
    """

    name: str
    title: str
    matches: Callable[[nn.Module], bool]
    root: Callable[[nn.Module], nn.Module]
    blocks: Callable[[nn.Module, str], Sequence[nn.Module]]
    patch_size: Callable[[nn.Module], int]
    num_registers: Callable[[nn.Module], int]
    fits: Callable[[nn.Module], bool] | None = None
    num_cameras: int = 1
    pos_kwarg: str = "pos"
    mask_kwarg: str | None = None
    apply_rope: Callable[[nn.Module, Tensor, Tensor, object], tuple[Tensor, Tensor]] | None = None
    run: Callable[[nn.Module, Tensor], dict] = lambda model, images: model(images)
    points: str = "world_points"
    cameras: str = "pose_enc"

    def attention(self, model: nn.Module, kind: str, block: int) -> nn.Module:
        """The attention module of ``block`` of ``kind``."""
        return self.blocks(self.root(model), kind)[block].attn

    def depth(self, model: nn.Module) -> int:
        return len(self.blocks(self.root(model), "frame"))


def _registry() -> dict[str, ModelAdapter]:
    # Imported here: the family modules import ModelAdapter from this one.
    from vggt_attn_rerun.core.adapters import omega, pi3, vggt

    adapters = (vggt.STREAMVGGT, pi3.PI3, omega.VGGT_OMEGA, vggt.VGGT)  # most specific first
    return {a.name: a for a in adapters}


def arch_names() -> tuple[str, ...]:
    """The names ``--arch`` accepts, VGGT first."""
    return tuple(sorted(_registry(), key=lambda n: (n != "vggt", n)))


def adapter_named(name: str) -> ModelAdapter:
    adapters = _registry()
    key = name.strip().lower().replace("_", "-")
    if key not in adapters:
        raise UserError(f"unknown architecture {name!r}: valid are {', '.join(arch_names())}")
    return adapters[key]


def adapter_for(model: nn.Module, arch: str | ModelAdapter | None = None) -> ModelAdapter:
    """The adapter named ``arch``, else the one ``load_model`` tagged the model with, else by type.

    A named adapter must find its blocks in the model: a mismatch raises UserError. An adapter
    already resolved for this model (``arch`` a ModelAdapter) is returned as it is, so that a run
    resolves it once and hands it down.
    """
    if isinstance(arch, ModelAdapter):
        return arch
    _refuse_token_merging(model)
    arch = arch or getattr(model, ARCH_ATTR, None)
    if arch and arch != "auto":
        adapter = adapter_named(arch)
        if not (adapter.fits or adapter.matches)(model):
            raise UserError(
                f"model {type(model).__name__} is not a {adapter.title} model (--arch {adapter.name}): "
                f"its modules do not have that architecture's blocks; valid are {', '.join(arch_names())} "
                "or auto"
            )
        return adapter
    for adapter in _registry().values():
        if adapter.matches(model):
            return adapter
    raise UserError(
        f"model {type(model).__name__} has no VGGT-like attention: expected VGGT or StreamVGGT (a module "
        "with .aggregator, or one with .frame_blocks and .global_blocks), VGGT-Omega (.frame_blocks and "
        ".inter_frame_blocks) or pi3 (.decoder, frame and global blocks alternating)"
    )


def _refuse_token_merging(model: nn.Module) -> None:
    """FastVGGT merges tokens after RoPE inside global attention: its rows exist only for merged
    tokens, and a query cannot be mapped back to its own row exactly, so it is refused."""
    parts = [model, getattr(model, "aggregator", None)]
    if any(p is not None and "fastvggt" in type_path(p).lower() for p in parts):
        raise UserError(
            "FastVGGT is not supported: it merges tokens inside global attention, so a query's own attention "
            "row does not exist; use VGGT (facebook/VGGT-1B) on the same photos"
        )


def type_path(module: object) -> str:
    """``package.module.Class`` of a module's type (what adapters recognise models by)."""
    return f"{type(module).__module__}.{type(module).__qualname__}"
