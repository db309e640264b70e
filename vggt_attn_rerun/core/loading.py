"""Building and loading the model whose attention we visualise.

``load_model(spec, arch=...)`` accepts: ``tiny`` (toy model of the architecture's family, for
tests and demos), ``random`` (the architecture at full size, random weights, seed 0), a Hugging
Face Hub id (``facebook/VGGT-1B``, ``yyfz233/Pi3``), a local directory (``config.json`` +
``model.safetensors`` or ``model.pt``), a local state-dict file (``.safetensors``, ``.pt``,
``.pth``), or ``module:callable`` returning an ``nn.Module``.

Unlike ``VGGT.from_pretrained``, which loads with ``strict=False`` and silently keeps random
weights for missing keys, every checkpoint is checked key by key here. Architectures
(``core.architectures``): vggt (default; also read from .pt), pi3, pi3x, streamvggt, vggt-omega and
their tiny replicas; all but vggt read ``.safetensors`` only. The model is tagged with its
adapter (``core.adapters``) so that capture reads it the right way.

A model that is not a trained one carries a ``ModelLabel`` (``label_model``, ``model_label``):
``random`` and ``tiny`` here, ``testing.tiny_vggt`` and ``testing.matching_vggt`` themselves, so
the label follows the model whatever builds or loads it (``module:callable`` included); capture
copies it into its result and every recording shows it.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pickle
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vggt_attn_rerun.core.adapters import ARCH_ATTR
from vggt_attn_rerun.core.architectures import ARCHS as _ARCHS
from vggt_attn_rerun.core.architectures import TINY_OF, arch_builder, arch_for_hub_id, finish_random, get_arch
from vggt_attn_rerun.errors import UserError

DEFAULT_MODEL = "facebook/VGGT-1B"
ARCHS = tuple(_ARCHS)
VGGT_COMMIT = "a288dd0f14786c93483e45524328726ab7b1b4ce"
VGGT_SOURCE = f"vggt @ git+https://github.com/facebookresearch/vggt@{VGGT_COMMIT}"
VGGT_INSTALL_HINT = "vggt is not installed: run  vggt-attn-rerun install-vggt  (see README)"
WEIGHT_FILES = ("model.safetensors", "model.pt", "model.pth")
SPEC_SYNTAX = (
    "tiny, random, a Hugging Face Hub id (e.g. facebook/VGGT-1B), a local directory with config.json + "
    "model.safetensors, a .safetensors/.pt/.pth file, or module:callable"
)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_CALLABLE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
_SHOW_KEYS = 5


#: the model attribute that holds its ModelLabel
MODEL_LABEL_ATTR = "vggt_attn_rerun_label"


@dataclass(frozen=True)
class ModelLabel:
    """What a recording must say about a model that is not a trained one.

    ``title``: a few words for view titles (``RANDOM weights``); ``note``: one or two sentences
    that say what the model is and what its pictures mean.
    """

    title: str
    note: str


RANDOM_LABEL = ModelLabel(
    "RANDOM weights",
    "Model: RANDOM weights (--model random): the architecture at full size, untrained; its attention, "
    "cameras and points show the machinery, not what a trained model does.",
)
TINY_LABEL = ModelLabel(
    "TINY random model",
    "Model: a TINY random-weight replica (--model tiny): the code path of the architecture, not its learned attention.",
)


def label_model(model: nn.Module, label: ModelLabel) -> nn.Module:
    """Attach ``label`` to ``model`` (returned, for chaining); recordings of it show the label."""
    setattr(model, MODEL_LABEL_ATTR, label)
    return model


def model_label(model: nn.Module) -> ModelLabel | None:
    """The model's ModelLabel, or None for a model that carries none (a trained checkpoint)."""
    label = getattr(model, MODEL_LABEL_ATTR, None)
    return label if isinstance(label, ModelLabel) else None


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters (CPU for a model without any)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def vggt_install_command(source: str | None = None) -> list[str]:
    """The pip command that installs vggt into this interpreter's environment."""
    # --no-deps: vggt's metadata pins numpy<2 (and opencv), but rerun-sdk 0.41 needs numpy>=2, so
    # no resolver can install both. vggt's model code runs fine on numpy 2, and what it really
    # needs at run time (huggingface_hub, safetensors, einops) comes with our `vggt` extra.
    return [sys.executable, "-m", "pip", "install", "--no-deps", source or VGGT_SOURCE]


# -- architectures ----------------------------------------------------------------------------------
def _vggt_class() -> type[nn.Module]:
    try:
        from vggt.models.vggt import VGGT
    except ModuleNotFoundError as e:
        if e.name is None or e.name == "vggt" or e.name.startswith("vggt."):
            raise UserError(VGGT_INSTALL_HINT) from e
        raise UserError(
            f"vggt cannot be imported because {e.name} is missing: pip install 'vggt-attn-rerun[vggt]'"
        ) from e
    return VGGT


def _arch_builder(arch: str) -> Callable[..., nn.Module]:
    """The constructor for ``arch``; imported early so that a missing package fails before a download."""
    if arch == "vggt":
        return _vggt_class()
    return arch_builder(get_arch(arch))


def _build(builder: Callable[..., nn.Module], config: Mapping[str, Any], source: str = "") -> nn.Module:
    """Call ``builder`` with the entries of ``config`` that it accepts (hub configs carry extras).
    A config the constructor cannot take (a string for a size, a negative depth) is a UserError
    naming ``source``, the config's file."""
    params = inspect.signature(builder).parameters
    accepted = {k: v for k, v in config.items() if k in params}
    try:
        return builder(**accepted)
    except (KeyboardInterrupt, UserError):
        raise
    except Exception as e:  # TypeError, ValueError, RuntimeError, ... from the constructor
        name = getattr(builder, "__name__", "the model")
        if not source:
            raise UserError(f"cannot build {name} ({_first_line(e)})") from e
        keys = ", ".join(sorted(accepted)) or "none"
        raise UserError(
            f"cannot build {name} from model config {source} ({_first_line(e)}); entries used: {keys}"
        ) from e


# -- reading checkpoints ----------------------------------------------------------------------------
def _first_line(e: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()  # torch colours some messages
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _read_safetensors(path: Path) -> Any:
    try:
        from safetensors.torch import load_file
    except ModuleNotFoundError as e:
        raise UserError(f"reading {path} needs safetensors: pip install 'vggt-attn-rerun[vggt]'") from e
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types for bad headers and I/O
        raise UserError(f"{path} is not a checkpoint: safetensors cannot read it ({_first_line(e)})") from e


def _read_torch(path: Path) -> Any:
    try:
        # weights_only: a checkpoint is data; never run the arbitrary code a pickle may carry.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, KeyError, RuntimeError, ... depending on the bytes
        if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e):
            reason = "it holds pickled Python objects besides tensors, which are never unpickled (weights_only)"
        else:
            reason = f"torch.load(weights_only=True) cannot read it: {_first_line(e)}"
        raise UserError(
            f"{path} is not a checkpoint: {reason}; expected a state dict of tensors saved with "
            f"torch.save or safetensors"
        ) from e


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``.pt``, ``.pth``, ``.bin``).

    A dict with a ``model`` or ``state_dict`` entry (training checkpoints) is unwrapped.
    """
    path = Path(path)
    obj = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
    while isinstance(obj, Mapping) and any(isinstance(obj.get(k), Mapping) for k in ("model", "state_dict")):
        obj = obj["model"] if isinstance(obj.get("model"), Mapping) else obj["state_dict"]
    if isinstance(obj, Mapping) and not obj:
        raise UserError(f"{path} is not a checkpoint: it holds no tensors (an empty state dict)")
    if not isinstance(obj, Mapping):
        raise UserError(f"{path} is not a checkpoint: expected a dict of tensors, got {type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise UserError(
                f"{path} is not a checkpoint: expected a dict of tensors, but entry {key!r} is a {type(value).__name__}"
            )
    return dict(obj)


def _examples(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOW_KEYS])
    return shown + (", ..." if len(names) > _SHOW_KEYS else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _load_state_dict_into(model: nn.Module, sd: Mapping[str, torch.Tensor], strict: bool, source: str) -> None:
    """Copy ``sd`` into ``model`` after checking names and shapes.

    Missing or unexpected keys raise UserError when ``strict``, else warn; differing shapes
    always raise (such a tensor cannot be loaded at all).
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    resized = [k for k in expected if k in sd and sd[k].shape != expected[k].shape]
    if resized:
        k = resized[0]
        raise UserError(
            f"checkpoint {source} does not fit {type(model).__name__}: {_plural(len(resized), 'tensor')} "
            f"with another shape (e.g. {k}: {list(sd[k].shape)} in the checkpoint, "
            f"{list(expected[k].shape)} in the model); is it for another architecture or config?"
        )
    problems = []
    if missing:
        problems.append(f"{_plural(len(missing), 'missing key')} ({_examples(missing)})")
    if unexpected:
        problems.append(f"{_plural(len(unexpected), 'unexpected key')} ({_examples(unexpected)})")
    if problems:
        message = f"checkpoint {source} does not match {type(model).__name__}: " + "; ".join(problems)
        if strict:
            raise UserError(message + "; pass strict=False to load it anyway")
        warnings.warn(message, stacklevel=3)
    # Names are checked above; strict=False here only lets the partial load proceed.
    model.load_state_dict(sd, strict=False)


# -- the kinds of spec ------------------------------------------------------------------------------
def _random_model(arch: str) -> nn.Module:
    builder = _arch_builder(arch)
    with torch.random.fork_rng(devices=[]):  # seed the build without disturbing the caller's RNG
        torch.manual_seed(0)
        return finish_random(get_arch(arch), builder())


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read model config {path} ({_first_line(e)}): expected a JSON object") from e
    if not isinstance(config, dict):
        raise UserError(f"model config {path} is not a JSON object")
    return config


def _from_file(path: Path, arch: str, strict: bool, config: Mapping[str, Any] | None = None,
               config_source: str = "") -> nn.Module:  # fmt: skip
    if get_arch(arch).safetensors_only and path.suffix != ".safetensors":
        raise UserError(
            f"{path}: checkpoints of --arch {arch} are read from .safetensors files only (a {path.suffix or 'pickle'} "
            "file is a pickle, which can run code); convert it once with safetensors.torch.save_file"
        )
    builder = _arch_builder(arch)
    sd = read_state_dict(path)
    model = _build(builder, config or {}, config_source)
    _load_state_dict_into(model, sd, strict, str(path))
    return model


def _from_dir(folder: Path, arch: str, strict: bool) -> nn.Module:
    weights = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        raise UserError(f"model folder {folder} has no weights: expected one of {', '.join(WEIGHT_FILES)}")
    config_path = folder / "config.json"
    config = _read_config(config_path) if config_path.is_file() else {}
    return _from_file(weights, arch, strict, config, str(config_path))


#: seconds to wait for the Hub to answer before saying it cannot be reached
HUB_PROBE_TIMEOUT_S = 3.0
#: what to try when no weights can be had
OFFLINE_HINT = (
    "to try the tool offline: vggt-attn-rerun demo (a constructed demo model on generated images), "
    "or --model tiny (a tiny random model on your photos)"
)


def _hub_reachable(timeout: float) -> bool:
    """Whether a TCP connection to the Hub's host opens within ``timeout`` s (DNS included).

    huggingface_hub's own timeouts and retries take 25-30 s when the network is down; this
    answers in at most ``timeout``. The lookup runs in a daemon thread because
    ``getaddrinfo`` has no timeout of its own.
    """
    import socket
    import threading
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    answer: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])


def _download(repo_id: str, filename: str) -> str:
    import logging

    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, filename)
    if isinstance(cached, str):  # in the local cache: no network needed
        return cached
    from huggingface_hub import constants

    # Offline mode fails at once by itself; otherwise ask the network first, briefly.
    if not constants.HF_HUB_OFFLINE and not _hub_reachable(HUB_PROBE_TIMEOUT_S):
        raise ConnectionError(f"the Hugging Face Hub could not be reached within {HUB_PROBE_TIMEOUT_S:g} s")
    # huggingface_hub logs each failed request as a warning before raising; our one-line error
    # (which names --model PATH) says it better.
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        return hf_hub_download(repo_id=repo_id, filename=filename)
    finally:
        hub_logger.setLevel(level)


def _from_hub(repo_id: str, arch: str, strict: bool) -> nn.Module:
    builder = _arch_builder(arch)
    try:
        import huggingface_hub  # noqa: F401
    except ModuleNotFoundError as e:
        raise UserError(
            f"downloading {repo_id} needs huggingface_hub: pip install 'vggt-attn-rerun[vggt]', "
            f"or pass --model PATH (a local directory or checkpoint file); {OFFLINE_HINT}"
        ) from e
    try:
        weights = _download(repo_id, "model.safetensors")
    except Exception as e:  # offline, unknown repo, gated repo, network: all mean "no weights"
        raise UserError(
            f"the weights of {repo_id} could not be downloaded from the Hugging Face Hub ({_first_line(e)}); "
            f"pass --model PATH (a local directory with config.json + model.safetensors, or a "
            f".safetensors/.pt file) instead; {OFFLINE_HINT}"
        ) from e
    try:
        config = _read_config(Path(_download(repo_id, "config.json")))
    except Exception:  # the config is optional: VGGT's defaults are VGGT-1B's
        config = {}
    sd = read_state_dict(weights)
    model = _build(builder, config, f"config.json of {repo_id}")
    _load_state_dict_into(model, sd, strict, repo_id)
    return model


def _from_callable(spec: str) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"cannot import module {module_name!r} for model {spec!r} ({_first_line(e)})") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"module {module_name!r} has no attribute {attr!r}: model {spec!r} names nothing")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"model {spec!r} is not callable: expected a function that returns an nn.Module")
    try:
        model = obj()
    except SystemExit as e:  # exit() or sys.exit() in the callable: not a model, and not our exit code
        raise UserError(
            f"model {spec!r} exited (SystemExit {e.code!r}) instead of returning a torch.nn.Module"
        ) from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model {spec!r} returned a {type(model).__name__}: expected a torch.nn.Module")
    return model


def check_model_spec(spec: str) -> None:
    """The checks of ``spec`` that load nothing: a path that names no file or folder (UserError).

    Run before the images and the other models load, so that a typo costs a second.
    """
    path = Path(spec).expanduser()
    if spec in ("tiny", "random") or path.exists() or _CALLABLE.fullmatch(spec):
        return
    if path.suffix.lower() in _CHECKPOINT_SUFFIXES or spec.startswith((".", "/", "~")):
        raise UserError(f"model file {spec} does not exist: give an existing path, or one of: {SPEC_SYNTAX}")


def _resolve(spec: str, arch: str, strict: bool) -> nn.Module:
    if spec == "tiny":
        return _arch_builder(TINY_OF.get(arch, arch))()
    if spec == "random":
        return _random_model(arch)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _from_dir(path, arch, strict)
    if path.is_file():
        return _from_file(path, arch, strict)
    if _CALLABLE.fullmatch(spec):
        return _from_callable(spec)
    check_model_spec(spec)
    if _HUB_ID.fullmatch(spec):
        return _from_hub(spec, arch, strict)
    raise UserError(f"unknown model {spec!r}: valid are {SPEC_SYNTAX}")


def load_model(
    spec: str = DEFAULT_MODEL,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    strict: bool = True,
    arch: str | None = None,
) -> nn.Module:
    """Build or load the model named by ``spec`` (see the module docstring) in eval mode.

    Args:
        spec: what to load; see ``SPEC_SYNTAX``.
        device, dtype: where and in which precision the returned model lives.
        strict: a checkpoint with missing or unexpected keys raises UserError (else warns).
        arch: the architecture that checkpoints, ``random`` and ``tiny`` are built as (see
            ``core.architectures.ARCHS``): ``vggt`` (needs the vggt package; a config.json beside the
            weights sets its arguments), ``pi3``, ``pi3x``, ``streamvggt``, ``vggt-omega``, or a tiny
            replica (``tiny``, ``tiny-pi3``, ...). Default: the architecture of a known Hub id, else vggt.

    Returns:
        The model; it takes images ``[S, 3, H, W]`` or ``[B, S, 3, H, W]`` in [0, 1].
    """
    spec = str(spec).strip()
    named = arch not in (None, "auto")
    arch = get_arch(arch).name if named else (arch_for_hub_id(spec) or "vggt")
    model = _resolve(spec, arch, strict)
    if model_label(model) is None and spec in ("random", "tiny"):
        label_model(model, RANDOM_LABEL if spec == "random" else TINY_LABEL)
    if named or not _CALLABLE.fullmatch(spec):
        # The adapter travels with the model: capture then reads it as this architecture.
        setattr(model, ARCH_ATTR, get_arch(TINY_OF.get(arch, arch) if spec == "tiny" else arch).adapter)
    try:
        model = model.to(device=device, dtype=dtype)
    except (RuntimeError, AssertionError, ValueError) as e:  # e.g. "Torch not compiled with CUDA enabled"
        raise UserError(f"cannot move the model to {device} as {dtype} ({_first_line(e)})") from e
    return model.eval()
