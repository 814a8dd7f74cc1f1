"""Colour correction of the super-resolved image against a reference (the official AddSR/StableSR recipes).

Tensors are float [B,C,H,W] in [0,1]. ``target`` is the SR output to correct, ``source`` the
reference: the official script passes the upscaled LR condition image. A batch-1 source is
broadcast over the target batch.

Extension (not official): the reference may have a different size. AdaIN only uses per-channel
statistics, so it needs nothing special. For the wavelet fix the official code requires equal
sizes; we resize the source to the target size (bicubic, antialiased) and take the low band of
that. The blur radii are in target pixels, so this is the band the official code would see if the
reference had been upscaled first, which is what the official script does (its reference is the
upscaled LR). With equal sizes nothing is resized and the result is exactly the official one.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, OptionsError

ADAIN_EPS = 1e-5
WAVELET_LEVELS = 5
_BLUR = ((1.0, 2.0, 1.0), (2.0, 4.0, 2.0), (1.0, 2.0, 1.0))  # /16


def _check_pair(target: torch.Tensor, source: torch.Tensor) -> None:
    for name, x in (("target", target), ("source", source)):
        if not torch.is_tensor(x) or x.ndim != 4:
            raise InputError(f"colour fix: {name} must be a [B,C,H,W] tensor, got {type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
        if x.shape[-1] == 0 or x.shape[-2] == 0:
            raise InputError(f"colour fix: {name} is empty ({tuple(x.shape)}); use an image with pixels")
    if target.shape[1] != source.shape[1]:
        raise InputError(f"colour fix: target has {target.shape[1]} channels but source has {source.shape[1]}; give both RGB images")
    if source.shape[0] not in (1, target.shape[0]):
        raise InputError(f"colour fix: source batch ({source.shape[0]}) must be 1 or match the target batch ({target.shape[0]})")


def _working_dtype(x: torch.Tensor) -> torch.dtype:
    # Statistics of half-precision images lose too much; float64 stays float64 (used for checks).
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def channel_mean_std(x: torch.Tensor, eps: float = ADAIN_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and channel: mean and sqrt(unbiased variance + eps), shaped [B,C,1,1]."""
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    if flat.shape[-1] < 2:
        raise InputError("colour fix: AdaIN needs at least 2 pixels per image (unbiased variance); use wavelet or none for a 1-pixel image")
    std = (flat.var(dim=2) + eps).sqrt().view(b, c, 1, 1)
    return flat.mean(dim=2).view(b, c, 1, 1), std


def adain_color_fix(target: torch.Tensor, source: torch.Tensor, eps: float = ADAIN_EPS, *,
                     in_place: bool = False) -> torch.Tensor:
    """Match each channel's mean and std to the source's (official ``adaptive_instance_normalization``).

    Returns the unclamped result in the target's dtype. Any source size works. ``in_place``: a
    float32/64 target is overwritten (the same bits, no full-size temporary).
    """
    _check_pair(target, source)
    wd = _working_dtype(target)
    t, s = target.to(wd), source.to(target.device, wd)
    t_mean, t_std = channel_mean_std(t, eps)
    s_mean, s_std = channel_mean_std(s, eps)
    # The official ((t - mean) / std * s_std + s_mean), same operations in the same order, in place on
    # one new tensor (or on the target): at most one full-size temporary instead of four (an 8K float
    # image is 400 MB each).
    shifted = t.sub_(t_mean) if in_place and t is target else t - t_mean
    return shifted.div_(t_std).mul_(s_std).add_(s_mean).to(target.dtype)


def wavelet_blur(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Depthwise 3x3 binomial blur at dilation ``radius`` after replicate-padding by ``radius``."""
    c = x.shape[1]
    kernel = torch.tensor(_BLUR, dtype=x.dtype, device=x.device) / 16.0
    kernel = kernel[None, None].repeat(c, 1, 1, 1)
    padded = F.pad(x, (radius,) * 4, mode="replicate")
    return F.conv2d(padded, kernel, groups=c, dilation=radius)


def wavelet_decomposition(x: torch.Tensor, levels: int = WAVELET_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the ``levels`` high bands, final low band); high + low == x up to rounding."""
    high = torch.zeros_like(x)
    low = x
    for i in range(levels):
        blurred = wavelet_blur(low, 2**i)
        high += low - blurred
        low = blurred
    return high, low


def wavelet_color_fix(target: torch.Tensor, source: torch.Tensor, levels: int = WAVELET_LEVELS, *,
                      in_place: bool = False) -> torch.Tensor:
    """Keep the target's high bands, take the source's low band (official ``wavelet_reconstruction``).

    A source of a different size is allowed (our extension, see the module docstring).
    Returns the unclamped result in the target's dtype. ``in_place`` is accepted as for
    :func:`adain_color_fix`; the bands are new tensors either way (the target is never written).
    """
    _check_pair(target, source)
    wd = _working_dtype(target)
    t, s = target.to(wd), source.to(target.device, wd)
    if s.shape[-2:] != t.shape[-2:]:
        s = F.interpolate(s, size=t.shape[-2:], mode="bicubic", align_corners=False, antialias=True)
    high, _ = wavelet_decomposition(t, levels)
    _, low = wavelet_decomposition(s, levels)
    return high.add_(low).to(target.dtype)  # high + low, written into the high band (its own tensor)


_FIXES = {"adain": adain_color_fix, "wavelet": wavelet_color_fix}
COLOR_FIXES = ("adain", "wavelet", "none")  # what every node and command offers; adain: the official default


def apply_color_fix(method: str, target: torch.Tensor, source: torch.Tensor, *, in_place: bool = False) -> torch.Tensor:
    """``method`` in {"adain", "wavelet", "none"}; returns the unclamped result. ``in_place``: the
    target may be overwritten (adain then writes into it)."""
    if method == "none":
        return target
    if method not in _FIXES:
        raise OptionsError(f"unknown colour fix {method!r}; choose one of {list(COLOR_FIXES)}")
    return _FIXES[method](target, source, in_place=in_place)


# --- The official PIL-in / PIL-out wrappers -----------------------------------------------------


def uint8_hwc_to_tensor(image) -> torch.Tensor:
    """torchvision ``ToTensor`` of an RGB uint8 image (HWC array or PIL) -> [1,3,H,W] float32."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3:
        raise InputError(f"expected an RGB uint8 image (HWC array or PIL), got {arr.dtype} {arr.shape}")
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float().div(255)


def tensor_to_uint8_truncate(x: torch.Tensor) -> torch.Tensor:
    """torchvision ``ToPILImage`` of a float image: clamp to [0,1], then TRUNCATE x*255 (not round).

    [B,C,H,W] or [C,H,W] -> HWC uint8 ([B,H,W,C] for a batch).
    """
    out = x.detach().clamp(0.0, 1.0).mul(255).to(torch.uint8)
    return out.permute(0, 2, 3, 1) if out.ndim == 4 else out.permute(1, 2, 0)


def color_fix_uint8(target, source, method: str = "adain") -> np.ndarray:
    """The official ``adain_color_fix`` / ``wavelet_color_fix`` on PIL images: HWC uint8 in and out."""
    out = apply_color_fix(method, uint8_hwc_to_tensor(target), uint8_hwc_to_tensor(source))
    return tensor_to_uint8_truncate(out[0]).numpy()
