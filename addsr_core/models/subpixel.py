"""A 3x3 conv after a 2x nearest upsampling, computed on the small grid (a speed path).

``conv3x3(nearest_2x(x))`` gives each output pixel of phase (a, b) (its row and column parity) a
sum over only 2x2 pixels of ``x``, because the 3x3 taps fall on repeated pixels: for even rows
the kernel rows (0, 1+2) reach the rows (i-1, i), for odd rows (0+1, 2) reach (i, i+1), and the
same for columns. So the four phases are one 2x2 conv of ``x`` padded by one, with 4x the output
channels, interleaved: 16 taps where the upsampled conv does 36 per 2x2 output pixels, 4/9 of its
work. The sums of kernel taps round differently from summing the products (fp32: ~1e-6 relative
per layer), so this is a speed option of the precision policy, not the reference path
(``addsr_core.precision``: ``auto`` on a CPU that stays fp32). Measured in docs/performance.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Where the 2x2 kernel of phase 0 / 1 (along one axis) takes the 3x3 kernel's taps: (first, second).
_TAPS = (((0,), (1, 2)), ((0, 1), (2,)))
_PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))


def phase_weights(weight: torch.Tensor) -> torch.Tensor:
    """[O, I, 3, 3] -> [4*O, I, 2, 2]: the 2x2 kernels of the phases (0,0), (0,1), (1,0), (1,1).

    The taps are summed in float32 (a bf16/fp16 weight is rounded once, as the weight itself was)."""
    w = weight.float()
    rows = [torch.stack([w[:, :, list(taps)].sum(2) for taps in row_taps], 2) for row_taps in _TAPS]  # [O, I, 2, 3] per a
    kernels = [torch.stack([rows[a][..., list(taps)].sum(-1) for taps in _TAPS[b]], -1) for a, b in _PHASES]  # [O, I, 2, 2]
    return torch.cat(kernels).to(weight.dtype)


def upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)`` for a
    3x3 ``weight``, in ``x``'s memory format."""
    b, _, h, w = x.shape
    out_channels = weight.shape[0]
    nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    fmt = torch.channels_last if nhwc else torch.contiguous_format
    kernels = phase_weights(weight).contiguous(memory_format=fmt)
    phases = F.conv2d(F.pad(x, (1, 1, 1, 1)), kernels, None if bias is None else bias.repeat(4))  # [B, 4O, h+1, w+1]
    out = torch.empty((b, out_channels, 2 * h, 2 * w), dtype=phases.dtype, device=x.device, memory_format=fmt)
    for k, (pa, pb) in enumerate(_PHASES):
        # phase (pa, pb) of output pixel (i, j) sits at (i + pa, j + pb) of the padded conv's output
        out[:, :, pa::2, pb::2] = phases[:, k * out_channels:(k + 1) * out_channels, pa:pa + h, pb:pb + w]
    return out
