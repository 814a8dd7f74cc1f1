"""Real-ESRGAN second-order degradation (blur, resize, noise, JPEG, twice; then sinc + JPEG).

Follows SeeSR's ``make_paired_data.realesrgan_degradation`` step for step, for one image at a time
(the official script's default batch size is 1, so every random choice is per image). Scalar choices
come from a ``numpy.random.Generator`` and noise fields from a ``torch.Generator``: one seed makes
one sample, in any process.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .config import DegradationConfig, TrainConfigError
from .jpeg import jpeg_roundtrip
from .kernels import random_blur_kernel, random_final_sinc_kernel

RESIZE_MODES = ("area", "bilinear", "bicubic")


def filter2d(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise 2-D filtering with reflect padding (BasicSR ``filter2D``, one kernel for the batch)."""
    k = kernel.shape[-1]
    if k % 2 != 1:
        raise ValueError(f"filter2d needs an odd kernel size, got {k}.")
    b, c, h, w = images.shape
    if min(h, w) <= k // 2:
        raise TrainConfigError(f"image {h}x{w} is too small for a {k}x{k} reflect-padded blur; use larger crops (data.resolution).")
    x = F.pad(images.reshape(b * c, 1, h, w), (k // 2,) * 4, mode="reflect")
    return F.conv2d(x, kernel.to(images).view(1, 1, k, k)).view(b, c, h, w)


def _gaussian_1d(size: int) -> torch.Tensor:
    # cv2.getGaussianKernel(size, 0): sigma from the size, in float64, normalised.
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _separable_blur(images: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    k = g.numel()
    b, c, h, w = images.shape
    x = F.pad(images.reshape(b * c, 1, h, w), (k // 2,) * 4, mode="reflect")
    g = g.to(images)
    x = F.conv2d(x, g.view(1, 1, k, 1))
    x = F.conv2d(x, g.view(1, 1, 1, k))
    return x.view(b, c, h, w)


def usm_sharpen(images: torch.Tensor, weight: float = 0.5, radius: int = 50, threshold: float = 10.0) -> torch.Tensor:
    """BasicSR ``USMSharp``: sharpen where the high-pass exceeds ``threshold``/255, softly masked.

    The official 2-D Gaussian is the outer product of cv2's 1-D kernel, so it is applied as two 1-D
    passes (same result up to float rounding, ~50x cheaper at radius 50).
    """
    size = radius + 1 if radius % 2 == 0 else radius
    g = _gaussian_1d(size)
    blur = _separable_blur(images, g)
    residual = images - blur
    mask = (residual.abs() * 255 > threshold).to(images.dtype)
    soft = _separable_blur(mask, g)
    sharp = (images + weight * residual).clamp(0, 1)
    return soft * sharp + (1 - soft) * images


def rgb_to_gray(images: torch.Tensor) -> torch.Tensor:
    # torchvision rgb_to_grayscale weights
    r, g, b = images.unbind(dim=1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def gaussian_noise(images: torch.Tensor, sigma: float, gray: bool, generator: torch.Generator | None) -> torch.Tensor:
    """Noise with std ``sigma``/255; ``gray`` shares one field across the three channels."""
    b, c, h, w = images.shape
    shape = (b, 1, h, w) if gray else (b, c, h, w)
    noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(images) * (sigma / 255.0)
    return noise.expand(b, c, h, w)


def _poisson(levels_img: torch.Tensor, generator) -> torch.Tensor:
    # Shot noise at the image's own number of 8-bit levels, rounded up to a power of two.
    vals = torch.tensor(
        [2.0 ** np.ceil(np.log2(len(torch.unique(levels_img[i])))) for i in range(levels_img.shape[0])],
        dtype=levels_img.dtype,
        device=levels_img.device,
    ).view(-1, 1, 1, 1)
    rate = (levels_img * vals).float().cpu()
    return torch.poisson(rate, generator=generator).to(levels_img) / vals - levels_img


def poisson_noise(images: torch.Tensor, scale: float, gray: bool, generator: torch.Generator | None) -> torch.Tensor:
    b, c, h, w = images.shape
    src = rgb_to_gray(images) if gray else images
    src = torch.clamp((src * 255.0).round(), 0, 255) / 255.0
    noise = _poisson(src, generator)
    return noise.expand(b, c, h, w) * scale


@dataclass
class _Stage:
    resize_prob: tuple
    resize_range: tuple
    gaussian_noise_prob: float
    noise_range: tuple
    poisson_scale_range: tuple
    gray_noise_prob: float


def _stage(cfg: DegradationConfig, second: bool) -> _Stage:
    s = "2" if second else ""
    return _Stage(*(getattr(cfg, name + s) for name in (
        "resize_prob", "resize_range", "gaussian_noise_prob", "noise_range", "poisson_scale_range", "gray_noise_prob"
    )))


def _resize_scale(rng: np.random.Generator, stage: _Stage) -> float:
    p = np.asarray(stage.resize_prob, dtype=np.float64)
    kind = int(rng.choice(3, p=p / p.sum()))  # up, down, keep
    if kind == 0:
        return float(rng.uniform(1, stage.resize_range[1]))
    if kind == 1:
        return float(rng.uniform(stage.resize_range[0], 1))
    return 1.0


def _mode(rng: np.random.Generator) -> str:
    return RESIZE_MODES[int(rng.integers(len(RESIZE_MODES)))]


def _noise(images, stage: _Stage, rng, generator):
    if rng.uniform() < stage.gaussian_noise_prob:
        sigma = float(rng.uniform(*stage.noise_range))
        gray = bool(rng.uniform() < stage.gray_noise_prob)
        out = images + gaussian_noise(images, sigma, gray, generator)
    else:
        scale = float(rng.uniform(*stage.poisson_scale_range))
        gray = bool(rng.uniform() < stage.gray_noise_prob)
        out = images + poisson_noise(images, scale, gray, generator)
    return out.clamp(0, 1)


def _jpeg(images, jpeg_range, rng):
    quality = float(rng.uniform(*jpeg_range))
    return jpeg_roundtrip(images.clamp(0, 1), quality)


def quantize_uint8(images: torch.Tensor) -> torch.Tensor:
    """What writing to, then reading from, an 8-bit PNG does (round half to even, like cv2)."""
    return torch.clamp((images * 255.0).round(), 0, 255) / 255.0


@torch.no_grad()
def degrade(
    gt: torch.Tensor,
    cfg: DegradationConfig,
    rng: np.random.Generator,
    generator: torch.Generator | None = None,
    quantize: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Degrade an HR crop ``gt`` ([1,3,H,W] or [3,H,W], RGB in [0,1]) into ``(gt_out, lr)``.

    ``gt_out`` is the training target (USM-sharpened when ``cfg.usm_sharpen_gt``, as the official
    pairs are); ``lr`` is [.., 3, H/scale, W/scale] in [0,1]. Both are 8-bit quantised when
    ``quantize`` (default ``cfg.quantize_uint8``); pass False to upsample the float LR into the
    condition first, as make_paired_data does before writing its PNGs.
    """
    squeeze = gt.dim() == 3
    x = gt.unsqueeze(0) if squeeze else gt
    if x.dim() != 4 or x.shape[:2] != (1, 3):
        raise ValueError(f"degrade expects one RGB image [3,H,W] or [1,3,H,W], got {tuple(gt.shape)}.")
    x = x.float()
    h, w = x.shape[-2:]
    sf = cfg.scale
    if h % sf or w % sf:
        raise ValueError(f"HR size {h}x{w} must be divisible by the scale {sf}.")
    kernel1 = random_blur_kernel(rng, cfg, stage=1)
    kernel2 = random_blur_kernel(rng, cfg, stage=2)
    sinc = random_final_sinc_kernel(rng, cfg)
    if cfg.usm_sharpen_gt:
        x = usm_sharpen(x, cfg.usm_weight, cfg.usm_radius, cfg.usm_threshold)

    # first degradation
    out = filter2d(x, kernel1)
    stage1 = _stage(cfg, second=False)
    out = F.interpolate(out, scale_factor=_resize_scale(rng, stage1), mode=_mode(rng))
    out = _noise(out, stage1, rng, generator)
    out = _jpeg(out, cfg.jpeg_range, rng)

    # second degradation
    if rng.uniform() < cfg.second_blur_prob:
        out = filter2d(out, kernel2)
    stage2 = _stage(cfg, second=True)
    scale2 = _resize_scale(rng, stage2)
    out = F.interpolate(out, size=(int(h / sf * scale2), int(w / sf * scale2)), mode=_mode(rng))
    out = _noise(out, stage2, rng, generator)

    # [resize back + sinc] and JPEG, in either order
    if rng.uniform() < 0.5:
        out = F.interpolate(out, size=(h // sf, w // sf), mode=_mode(rng))
        out = filter2d(out, sinc)
        out = _jpeg(out, cfg.jpeg_range2, rng)
    else:
        out = _jpeg(out, cfg.jpeg_range2, rng)
        out = F.interpolate(out, size=(h // sf, w // sf), mode=_mode(rng))
        out = filter2d(out, sinc)
    lr = out.clamp(0, 1)
    gt_out = x.clamp(0, 1)
    if cfg.quantize_uint8 if quantize is None else quantize:
        lr, gt_out = quantize_uint8(lr), quantize_uint8(gt_out)
    if squeeze:
        return gt_out[0], lr[0]
    return gt_out, lr


def upsample_condition(lr: torch.Tensor, size: tuple[int, int], quantize: bool = True) -> torch.Tensor:
    """The ControlNet condition: bicubic upsampling of the LR to HR size (official ``sr_bicubic``).

    The official pairs store it as an 8-bit PNG (``quantize``); the float bicubic can overshoot, so
    it is clamped to [0,1] like the PNG writer does.
    """
    squeeze = lr.dim() == 3
    x = lr.unsqueeze(0) if squeeze else lr
    up = F.interpolate(x.float(), size=size, mode="bicubic")
    up = quantize_uint8(up) if quantize else up.clamp(0, 1)
    return up[0] if squeeze else up
