"""The architectures ``load_model`` can build, their packages and their known checkpoints.

Each relative of VGGT is installed like vggt: from its repository at a pinned commit, with
``--no-deps`` where its pins (numpy<2, old torch) conflict with rerun-sdk 0.41's numpy>=2.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from vggt_attn_rerun.errors import UserError

PI3_COMMIT = "9fa3ddb3f8d53041f8b2738df404f62223bbaa7b"
VGGT_OMEGA_COMMIT = "39a0cb8af88554f15ddcb5354cd52bde588fa014"
STREAMVGGT_COMMIT = "3e28c5c5d31128cc45a2f4832245664cb899d764"


@dataclass(frozen=True)
class Arch:
    """One buildable architecture.

    Attributes:
        name: what ``--arch`` / ``load_model(arch=...)`` call it.
        adapter: the name of its adapter (core.adapters).
        target: ``module:Class`` (or function) that builds it with random weights.
        package: the top-level package whose absence means "not installed".
        install: the command that installs it (shown when it is missing).
        safetensors_only: its checkpoints are read from ``.safetensors`` only (never a pickle).
        hub_ids: Hugging Face repositories known to hold its ``model.safetensors``.
    """

    name: str
    adapter: str
    target: str
    package: str
    install: str
    safetensors_only: bool = True
    hub_ids: tuple[str, ...] = ()


_TINY = "vggt_attn_rerun.testing"
ARCHS: dict[str, Arch] = {
    a.name: a
    for a in (
        Arch("vggt", "vggt", "vggt.models.vggt:VGGT", "vggt", "vggt-attn-rerun install-vggt", False,
             ("facebook/VGGT-1B", "facebook/VGGT-1B-Commercial")),
        Arch("pi3", "pi3", "pi3.models.pi3:Pi3", "pi3",
             f'pip install --no-deps "pi3 @ git+https://github.com/yyfz/Pi3@{PI3_COMMIT}"', hub_ids=("yyfz233/Pi3",)),
        Arch("pi3x", "pi3", "pi3.models.pi3x:Pi3X", "pi3",
             f'pip install --no-deps "pi3 @ git+https://github.com/yyfz/Pi3@{PI3_COMMIT}"', hub_ids=("yyfz233/Pi3X",)),
        Arch("vggt-omega", "vggt-omega", "vggt_omega.models.vggt_omega:VGGTOmega", "vggt_omega",
             "pip install --no-deps "
             f'"vggt-omega @ git+https://github.com/facebookresearch/vggt-omega@{VGGT_OMEGA_COMMIT}"'),
        Arch("streamvggt", "streamvggt", "streamvggt.models.streamvggt:StreamVGGT", "streamvggt",
             f"git clone https://github.com/wzzheng/StreamVGGT && git -C StreamVGGT checkout {STREAMVGGT_COMMIT} && "
             "export PYTHONPATH=$PWD/StreamVGGT/src (it has no package metadata; its model class also needs "
             "pip install transformers)"),
        Arch("tiny", "vggt", f"{_TINY}.tiny_model:tiny_vggt", "vggt_attn_rerun", "", False),
        Arch("tiny-pi3", "pi3", f"{_TINY}.tiny_pi3:tiny_pi3", "vggt_attn_rerun", ""),
        Arch("tiny-streamvggt", "streamvggt", f"{_TINY}.tiny_streamvggt:tiny_streamvggt", "vggt_attn_rerun", ""),
        Arch("tiny-vggt-omega", "vggt-omega", f"{_TINY}.tiny_vggt_omega:tiny_vggt_omega", "vggt_attn_rerun", ""),
    )
}  # fmt: skip
# The toy model of each family, for ``--model tiny --arch ARCH``.
TINY_OF = {"vggt": "tiny", "pi3": "tiny-pi3", "pi3x": "tiny-pi3", "streamvggt": "tiny-streamvggt",
           "vggt-omega": "tiny-vggt-omega"}  # fmt: skip
# What --arch accepts: every architecture of the registry but the tiny models' builders
# (``--model tiny --arch pi3`` picks those through TINY_OF).
ARCH_CHOICES = tuple(name for name in ARCHS if name not in TINY_OF.values())


def get_arch(name: str) -> Arch:
    key = name.strip().lower().replace("_", "-")
    if key not in ARCHS:
        raise UserError(f"unknown architecture {name!r}: valid are {', '.join(ARCHS)}")
    return ARCHS[key]


def arch_for_hub_id(repo_id: str) -> str | None:
    """The architecture of a known Hugging Face repository (None when unknown)."""
    return next((a.name for a in ARCHS.values() if repo_id in a.hub_ids), None)


def arch_builder(arch: Arch) -> Callable[..., nn.Module]:
    """The constructor of ``arch``, imported now so that a missing package fails before a download."""
    module_name, _, attr = arch.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (e.name == arch.package or e.name.startswith(arch.package + ".")):
            raise UserError(f"{arch.package} is not installed (needed for --arch {arch.name}): {arch.install}") from e
        raise UserError(f"{arch.package} cannot be imported because {e.name} is missing: pip install {e.name}") from e
    return getattr(module, attr)


def finish_random(arch: Arch, model: nn.Module) -> nn.Module:
    """Give a randomly built model the values its checkpoint would otherwise bring.

    VGGT-Omega's blocks leave their k-bias masks NaN and their layer scales empty until a
    checkpoint is loaded; its own DINOv3 initialiser sets both.
    """
    if arch.name == "vggt-omega":
        from vggt_omega.models.layers.vision_transformer import init_weights_vit

        model.apply(init_weights_vit)
    return model
