"""Will the forward pass fit in memory? A rough estimate, a check, and readable out-of-memory errors.

The estimate is deliberately simple and errs high: it exists to stop a run that cannot fit
*before* minutes of model loading and computing are wasted, and to turn an out-of-memory crash
into advice. It is not a profiler.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from vggt_attn_rerun.core.adapters import ModelAdapter
from vggt_attn_rerun.core.introspect import find_aggregator, model_embed_dim, model_heads
from vggt_attn_rerun.core.qk_cache import qk_cache_bytes_per_frame
from vggt_attn_rerun.core.tokens import VGGT_NUM_REGISTERS, VGGT_PATCH_SIZE, TokenLayout
from vggt_attn_rerun.errors import UserError

WARN_FRACTION = 0.8

# Inside one transformer block at most this many [S*P, C] tensors are alive at once: the
# residual, the normed input, q/k/v (3), RoPE temporaries of q and k (~3), the attention output,
# the projection, and the 4C-wide MLP hidden layer before and after GELU (8). Counted in fp32
# because LayerNorm and the residual adds stay fp32 under autocast.
_LIVE_TOKEN_TENSORS = 16
# VGGT keeps the [S, P, 2C] outputs of 4 aggregator layers for its DPT heads.
_CACHED_LAYERS = 4
# The DPT heads run on up to 8 frames at a time with ~128 fp32 channels at full resolution
# (their widest feature map), outside autocast.
_HEAD_FRAMES_PER_CHUNK = 8
_HEAD_CHANNELS = 128
# depth (1) + depth_conf (1) + world_points (3) + world_points_conf (1) + images (3) per pixel.
_PREDICTION_CHANNELS = 9
_FP32 = 4

OOM_ADVICE = (
    "use fewer images, --mode crop or a smaller --image-size, --dtype bfloat16 (CUDA), fewer --query or --blocks"
)


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes of one forward pass with capture, by cause (see ``estimate_memory``)."""

    weights: int
    weight_casts: int
    activations: int
    attention_matrix: int
    capture: int
    heads: int
    qk_cache: int = 0

    @property
    def total(self) -> int:
        return sum((self.weights, self.weight_casts, self.activations, self.attention_matrix,
                    self.capture, self.heads, self.qk_cache))  # fmt: skip

    @property
    def transient(self) -> int:
        """What the forward pass needs on top of the weights already loaded on the device."""
        return self.total - self.weights


def _element_size(dtype: torch.dtype | None) -> int:
    return torch.empty((), dtype=dtype or torch.float32).element_size()


def estimate_memory(
    *,
    num_frames: int,
    height: int,
    width: int,
    dtype: torch.dtype | None,
    num_params: int,
    queries: int | Sequence[object],
    blocks: int | Sequence[int],
    kinds: Sequence[str],
    heads: int,
    embed_dim: int,
    patch_size: int = VGGT_PATCH_SIZE,
    num_registers: int = VGGT_NUM_REGISTERS,
    fused_attention: bool = True,
    keep_qk: bool = False,
) -> MemoryEstimate:
    """Estimate the peak memory of ``capture`` on S frames of ``height x width`` model pixels.

    Args (keyword-only):
        num_frames, height, width: S frames of ``height x width`` model input pixels.
        dtype: the autocast dtype (None or float32: no autocast). Weights are fp32 either way.
        num_params: parameters of the model (weights are counted as fp32).
        queries, blocks: Q query tokens and L captured blocks (counts or the lists themselves);
            kinds: "frame" and/or "global".
        heads, embed_dim: H and C of the aggregator's attention.
        fused_attention: whether the attention modules call ``F.scaled_dot_product_attention``
            (VGGT's default). Assumption: the fused call picks a flash or memory-efficient kernel
            and never materializes the ``[H, N, N]`` matrix. That holds for CUDA and, measured on
            torch 2.13, for fp32/bf16/fp16 on CPU; if torch falls back to its math kernel, the
            real peak is higher by up to ``2 * H * (S*P)^2`` elements. When False (the explicit
            softmax path), that matrix is counted.
        keep_qk: ``capture(..., keep_qk=True)`` also keeps q and k of every token, captured block
            and kind (``qk_cache.qk_cache_bytes_per_frame``: 540 MB per 518x518 frame of VGGT-1B).

    Returns:
        The estimate, by cause; ``.total`` and ``.transient`` (total minus resident weights).
    """
    s = int(num_frames)
    queries = queries if isinstance(queries, int) else len(queries)
    blocks = blocks if isinstance(blocks, int) else len(blocks)
    tokens_per_frame = 1 + num_registers + (height // patch_size) * (width // patch_size)
    n_global = s * tokens_per_frame
    act = _element_size(dtype)
    low_precision = act < _FP32

    weights = int(num_params) * _FP32
    # Autocast caches a low-precision copy of every weight for the duration of the forward.
    weight_casts = int(num_params) * act if low_precision else 0
    token_tensor = n_global * embed_dim * _FP32
    activations = (_LIVE_TOKEN_TENSORS + 2 * _CACHED_LAYERS) * token_tensor

    attention_matrix = 0
    if not fused_attention:
        # logits and their softmax, for the largest sequence: all frames in global attention
        n = n_global if "global" in kinds else tokens_per_frame
        batch = 1 if "global" in kinds else s
        attention_matrix = 2 * batch * heads * n * n * act

    stored = len(kinds) * blocks * queries * heads * s * tokens_per_frame * _FP32
    # Per module: fp32 logits and softmax of the query rows [H, Q, N] plus an fp32 copy of k.
    rows_transient = 2 * heads * queries * n_global * _FP32 + n_global * embed_dim * _FP32
    capture = stored + rows_transient

    pixels = height * width
    head_channels = min(s, _HEAD_FRAMES_PER_CHUNK) * _HEAD_CHANNELS + s * _PREDICTION_CHANNELS
    heads_bytes = head_channels * pixels * _FP32
    layout = TokenLayout(s, height // patch_size, width // patch_size, patch_size, num_registers)
    qk_cache = s * qk_cache_bytes_per_frame(layout, embed_dim, blocks, len(kinds)) if keep_qk else 0
    return MemoryEstimate(weights, weight_casts, activations, attention_matrix, capture, heads_bytes, qk_cache)


def _meminfo_available(path: Path = Path("/proc/meminfo")) -> int | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    m = re.search(r"^MemAvailable:\s+(\d+)\s*kB", text, re.MULTILINE)
    return int(m.group(1)) * 1024 if m else None


def available_memory_bytes(device: str | torch.device) -> int | None:
    """Bytes the forward pass can still allocate on ``device``, or None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # Blocks torch has cached but not handed out are free to us, though not to the driver.
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(cached, 0))
    if device.type == "cpu":
        return _meminfo_available()
    return None


DEVICE_TYPES = ("cpu", "cuda", "mps")


DTYPES = ("auto", "float32", "bfloat16", "float16")


def autocast_dtype_for(device: torch.device) -> torch.dtype | None:
    """The ``auto`` autocast dtype: bfloat16 on Ampere or newer CUDA, float16 on older CUDA, none on CPU."""
    if device.type != "cuda":
        return None
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def resolve_device(device: str, dtype: str = "auto") -> tuple[str, torch.dtype | None]:
    """``--device`` and ``--dtype`` -> (a device the model can run on, the autocast dtype or None).

    ``device``: auto (cuda if available, else cpu), cpu, cuda, cuda:N or mps; anything else
    (``meta``, which holds no data, or an unknown name) is a UserError. ``dtype``: auto
    (bfloat16 on Ampere+ CUDA, float16 on older CUDA, none on CPU), float32 (no autocast),
    bfloat16 or float16.
    """
    valid = "auto, cpu, cuda, cuda:N, mps"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"--device {device}: unknown device; valid are {valid}") from e
    if dev.type not in DEVICE_TYPES:
        raise UserError(f"--device {device}: cannot run the model on {dev.type} devices; valid are {valid}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available to this torch; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: valid CUDA devices are 0..{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: MPS is not available; use --device cpu")
    if dtype == "auto":
        return str(dev), autocast_dtype_for(dev)
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: valid are {', '.join(DTYPES)}")
    return str(dev), None if dtype == "float32" else getattr(torch, dtype)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_memory(needed: int, available: int | None, device: str | torch.device, force: bool = False) -> str | None:
    """Refuse (UserError) when ``needed`` exceeds ``available`` unless ``force``.

    Returns a warning line when the run is close to the limit (or forced past it), else None.
    """
    if available is None:
        return None
    fraction = needed / max(available, 1)
    summary = (
        f"the forward pass needs about {format_bytes(needed)} but only {format_bytes(available)} "
        f"is available on {device}"
    )
    if fraction > 1.0:
        if not force:
            raise UserError(f"{summary}: {OOM_ADVICE}; or pass --force to try anyway")
        return f"warning: {summary}; continuing because of --force"
    if fraction > WARN_FRACTION:
        return (
            f"warning: the forward pass needs about {format_bytes(needed)}, {fraction:.0%} of the "
            f"{format_bytes(available)} available on {device}: it may run out of memory"
        )
    return None


def check_forward_memory(model: torch.nn.Module, layout: TokenLayout, *, autocast: torch.dtype | None, queries: int,
                         blocks: int, kinds: Sequence[str], device: str, keep_qk: bool = False,
                         force: bool = False, arch: str | ModelAdapter | None = None) -> str | None:  # fmt: skip
    """``check_memory`` of one capture with ``model`` (already loaded) on ``layout``'s frames.

    The weights are already resident, so only what the forward pass adds is compared with the
    memory available on ``device``. Returns the warning line, if any; UserError when it will not fit.
    ``arch``: the model's adapter (``core.introspect``).
    """
    h, w = layout.image_size
    attn = find_aggregator(model, arch).frame_blocks[0].attn
    estimate = estimate_memory(
        num_frames=layout.num_frames, height=h, width=w, dtype=autocast,
        num_params=sum(p.numel() for p in model.parameters()), queries=queries, blocks=blocks, kinds=kinds,
        heads=model_heads(model, arch), embed_dim=model_embed_dim(model, arch), patch_size=layout.patch_size,
        num_registers=layout.num_registers, fused_attention=bool(getattr(attn, "fused_attn", True)), keep_qk=keep_qk,
    )  # fmt: skip
    return check_memory(estimate.transient, available_memory_bytes(device), device, force)


def _is_cpu_oom(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or (
        isinstance(e, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(e)
    )


@contextmanager
def translate_oom(device: str | torch.device) -> Iterator[None]:
    """Turn an out-of-memory error inside the block into a UserError with advice."""
    try:
        yield
    except torch.OutOfMemoryError as e:
        raise UserError(f"out of memory on {device} during the forward pass: {OOM_ADVICE}") from e
    except (MemoryError, RuntimeError) as e:
        if not _is_cpu_oom(e):
            raise
        raise UserError(f"out of memory on {device} during the forward pass: {OOM_ADVICE}") from e
