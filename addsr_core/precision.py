"""Which dtype and memory format the networks compute in: one policy for the CLI, the nodes and the bench.

``auto`` picks low precision only where the hardware runs it fast:
- CUDA: bf16 where the GPU supports it (Ampere and newer), else fp16 (Volta/Turing), else fp32.
- CPU: bf16 only with native bf16 matmul units (AMX-BF16 or AVX512-BF16) that oneDNN uses. Without
  them bf16 is emulated and far slower than fp32 (an AVX2-only AMD EPYC: 0.18 vs 33 GFLOP/s for a
  2048² matmul), so fp32 stays.
- anything else (MPS, XPU, ...): fp32, the safe default.
channels_last goes with every low-precision choice (the conv kernels of oneDNN and cuDNN run NHWC
natively there). On a CPU that stays fp32, ``auto`` still makes the VAE NHWC: measured on an
AVX2-only EPYC (``bench/bench_vae_layout.py``, full-size, 768 px), decode 43.5 s / 3226 B per
pixel against 51.3 s / 3914 B contiguous (0.85x time, 0.82x memory), encode 20.3 s / 2576 B
against 27.2 s / 3090 B (0.75x, 0.83x). The UNet and ControlNet were within noise, so they stay
contiguous. There ``auto`` also computes the VAE decoder's nearest-2x-then-3x3-conv upsampling on the
small grid (``vae_subpixel``, :mod:`addsr_core.models.subpixel`: the same function, 4/9 of that conv's
work, fp32-rounding-level differences; a decode 0.90x the time capped at AVX2, 0.92x with AVX-512; in
bf16 on AMX it was 1.12x, so not there); an explicit dtype keeps the official op order. What
stays fp32 regardless: the scheduler arithmetic and the
latent between steps (the denoisers return float32), the colour fix, and the reductions inside GroupNorm and softmax,
which PyTorch accumulates in fp32 for bf16/fp16 inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from .errors import OptionsError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CHOICES = ("auto",) + tuple(DTYPES)
_NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class Precision:
    dtype: torch.dtype
    channels_last: bool  # every network's convs NHWC
    vae_channels_last: bool = False  # the VAE's convs NHWC (implied by channels_last)
    vae_subpixel: bool = False  # the VAE decoder's upsampling convs on the small grid (models/subpixel.py)

    @property
    def name(self) -> str:
        layout = "+channels_last" if self.channels_last else "+vae_channels_last" if self.vae_channels_last else ""
        return next(k for k, v in DTYPES.items() if v == self.dtype) + layout + ("+vae_subpixel" if self.vae_subpixel else "")

    def nhwc(self, module: nn.Module) -> bool:
        """Whether ``module``'s convs run NHWC under this precision."""
        from .models.vae import AutoencoderKL

        return self.channels_last or (self.vae_channels_last and isinstance(module, AutoencoderKL))


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports (empty elsewhere: then no fast bf16 is assumed)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    if not any(flag in cpu_flags() for flag in _NATIVE_BF16_FLAGS):
        return False
    is_supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(is_supported()) if is_supported is not None else False


def fast_low_precision(device: torch.device) -> torch.dtype | None:
    """The low-precision dtype this device runs fast, or None when fp32 is the fast path."""
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        major, _ = torch.cuda.get_device_capability(device)
        return torch.float16 if major >= 7 else None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_fast_bf16() else None
    return None


def auto_precision(device: torch.device) -> Precision:
    cpu = torch.device(device).type == "cpu"
    dtype = fast_low_precision(device)
    if dtype is not None:
        return Precision(dtype, channels_last=True)
    return Precision(torch.float32, channels_last=False, vae_channels_last=cpu, vae_subpixel=cpu)


def resolve_precision(choice: str, device: torch.device) -> Precision:
    """``auto`` (the policy above), or an explicit fp32/fp16/bf16 (channels_last with low precision)."""
    if choice == "auto":
        return auto_precision(device)
    if choice not in DTYPES:
        raise OptionsError(f"unknown precision {choice!r}: use one of {', '.join(CHOICES)}")
    dtype = DTYPES[choice]
    return Precision(dtype, channels_last=dtype != torch.float32)


def host_layout(dtype: torch.dtype, device: torch.device) -> Precision:
    """The memory-format half of the policy, for weights whose dtype a host chose (ComfyUI picks it
    from its own flags): NHWC with a low precision, and the VAE NHWC on a CPU in fp32, as ``auto``."""
    return Precision(dtype, channels_last=dtype != torch.float32, vae_channels_last=torch.device(device).type == "cpu")


def apply_layout(module: nn.Module, precision: Precision) -> nn.Module:
    """Make ``module``'s convs NHWC where ``precision.nhwc(module)``, and a VAE's upsampling
    sub-pixel where ``precision.vae_subpixel``; the dtype stays as it is."""
    from .models.layers import Upsample2D
    from .models.vae import AutoencoderKL

    if precision.nhwc(module):
        module.to(memory_format=torch.channels_last)
    if isinstance(module, AutoencoderKL):
        for layer in module.modules():
            if isinstance(layer, Upsample2D):
                layer.subpixel = precision.vae_subpixel
    return module


def apply_precision(module: nn.Module, precision: Precision) -> nn.Module:
    """Cast in place; 4-D weights (convs) go NHWC where ``precision.nhwc(module)``."""
    module.to(dtype=precision.dtype)
    return apply_layout(module, precision)


def unit_float(image: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An image in [0,1] as ``dtype`` (the network's). A uint8 one (0-255: the condition image as the
    pipeline holds it, a quarter of a float's memory) is divided by 255 in float32 first, the bits the
    float condition always had; a float one is only cast (no copy when it already is ``dtype``)."""
    if image.dtype == torch.uint8:
        return image.float().div_(255).to(dtype)
    return image.to(dtype)
