"""Batched JPEG round trip in PyTorch, the way BasicSR's ``DiffJPEG(differentiable=False)`` does it.

Real-ESRGAN simulates JPEG with this (not libjpeg): RGB -> YCbCr, 2x2 average chroma subsampling,
8x8 DCT, quantisation by the standard tables scaled by a *continuous* quality factor (no rounding or
clamping of the table), round, then the inverse. Quality is a float per image. The tables are used
transposed, exactly as the official module stores them.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

_Y_TABLE = np.array(
    [[16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
     [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
     [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]],
    dtype=np.float32,
).T
_C_TABLE = np.full((8, 8), 99, dtype=np.float32)
_C_TABLE[:4, :4] = np.array([[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]).T

_RGB_TO_YCBCR = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=np.float32
).T
_YCBCR_TO_RGB = np.array([[1.0, 0.0, 1.402], [1, -0.344136, -0.714136], [1, 1.772, 0]], dtype=np.float32).T


def _dct_tensors():
    fwd = np.zeros((8, 8, 8, 8), dtype=np.float32)
    inv = np.zeros((8, 8, 8, 8), dtype=np.float32)
    for x, y, u, v in itertools.product(range(8), repeat=4):
        fwd[x, y, u, v] = np.cos((2 * x + 1) * u * np.pi / 16) * np.cos((2 * y + 1) * v * np.pi / 16)
        inv[x, y, u, v] = np.cos((2 * u + 1) * x * np.pi / 16) * np.cos((2 * v + 1) * y * np.pi / 16)
    alpha = np.array([1.0 / np.sqrt(2)] + [1] * 7)
    return (
        torch.from_numpy(fwd),
        torch.from_numpy(np.outer(alpha, alpha) * 0.25).float(),
        torch.from_numpy(inv),
        torch.from_numpy(np.outer(alpha, alpha)).float(),
    )


_DCT, _DCT_SCALE, _IDCT, _IDCT_ALPHA = _dct_tensors()


def quality_to_factor(quality: torch.Tensor) -> torch.Tensor:
    """libjpeg's quality scaling, on a float quality: q<50 -> 50/q, else (200-2q)/100."""
    quality = quality.to(torch.float32)
    return torch.where(quality < 50, 5000.0 / quality, 200.0 - quality * 2) / 100.0


def _blocks(channel: torch.Tensor) -> torch.Tensor:
    b, h, w = channel.shape
    return channel.view(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4).reshape(b, -1, 8, 8)


def _merge(blocks: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b = blocks.shape[0]
    return blocks.view(b, h // 8, w // 8, 8, 8).permute(0, 1, 3, 2, 4).reshape(b, h, w)


def _quantise_roundtrip(channel: torch.Tensor, table: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    dev = channel.device
    h, w = channel.shape[1:]
    coeffs = _DCT_SCALE.to(dev) * torch.tensordot(_blocks(channel) - 128, _DCT.to(dev), dims=2)
    q = table.to(dev).expand(factor.shape[0], 1, 8, 8) * factor.view(-1, 1, 1, 1)
    coeffs = torch.round(coeffs / q) * q
    pixels = 0.25 * torch.tensordot(coeffs * _IDCT_ALPHA.to(dev), _IDCT.to(dev), dims=2) + 128
    return _merge(pixels, h, w)


@torch.no_grad()
def jpeg_roundtrip(images: torch.Tensor, quality: torch.Tensor | float) -> torch.Tensor:
    """Compress and decompress ``images`` ([B,3,H,W] RGB in [0,1]) at per-image float ``quality``."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"jpeg_roundtrip expects [B,3,H,W] RGB images, got {tuple(images.shape)}.")
    b, _, h, w = images.shape
    quality = torch.as_tensor(quality, dtype=torch.float32, device=images.device).reshape(-1).expand(b)
    factor = quality_to_factor(quality)
    x = images.float()
    # Pad to a multiple of 16 (8x8 blocks after 2x chroma subsampling) with zeros, as the official.
    ph, pw = (16 - h % 16) % 16, (16 - w % 16) % 16
    x = F.pad(x, (0, pw, 0, ph), mode="constant", value=0)
    ycc = torch.tensordot((x * 255).permute(0, 2, 3, 1), torch.from_numpy(_RGB_TO_YCBCR).to(x.device), dims=1)
    ycc = ycc + torch.tensor([0.0, 128.0, 128.0], device=x.device)
    y = ycc[..., 0]
    chroma = F.avg_pool2d(ycc[..., 1:].permute(0, 3, 1, 2), kernel_size=2, stride=2, count_include_pad=False)
    y = _quantise_roundtrip(y, torch.from_numpy(_Y_TABLE), factor)
    cb = _quantise_roundtrip(chroma[:, 0], torch.from_numpy(_C_TABLE), factor)
    cr = _quantise_roundtrip(chroma[:, 1], torch.from_numpy(_C_TABLE), factor)
    cb = cb.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    cr = cr.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    ycc = torch.stack([y, cb, cr], dim=-1) + torch.tensor([0.0, -128.0, -128.0], device=x.device)
    rgb = torch.tensordot(ycc, torch.from_numpy(_YCBCR_TO_RGB).to(x.device), dims=1).permute(0, 3, 1, 2)
    rgb = rgb.clamp(0, 255) / 255
    return rgb[:, :, :h, :w].to(images.dtype)

