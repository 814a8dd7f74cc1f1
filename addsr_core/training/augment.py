"""DiffAugment (Zhao et al. 2020) translation and cutout, as the official discriminator applies them.

Same maths as ``ADD/models/DiffAugment.py`` (translation by up to 1/8 of the size with zero fill,
one cutout square of 1/5 of the size per image), with an optional ``torch.Generator`` so a step can
be replayed exactly. Both ops are differentiable in the image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import TrainConfigError


def _randint(low: int, high: int, size, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        return torch.randint(low, high, size, device=x.device)
    return torch.randint(low, high, size, generator=generator, device=generator.device).to(x.device)


def rand_translation(x: torch.Tensor, ratio: float = 0.125, generator: torch.Generator | None = None) -> torch.Tensor:
    b, _, h, w = x.shape
    shift_h, shift_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = _randint(-shift_h, shift_h + 1, (b, 1, 1), x, generator)
    tx = _randint(-shift_w, shift_w + 1, (b, 1, 1), x, generator)
    gb, gy, gx = torch.meshgrid(
        torch.arange(b, device=x.device), torch.arange(h, device=x.device), torch.arange(w, device=x.device),
        indexing="ij",
    )
    gy = torch.clamp(gy + ty + 1, 0, h + 1)
    gx = torch.clamp(gx + tx + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])
    return padded.permute(0, 2, 3, 1)[gb, gy, gx].permute(0, 3, 1, 2)


def rand_cutout(x: torch.Tensor, ratio: float = 0.2, generator: torch.Generator | None = None) -> torch.Tensor:
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = _randint(0, h + (1 - ch % 2), (b, 1, 1), x, generator)
    ox = _randint(0, w + (1 - cw % 2), (b, 1, 1), x, generator)
    gb, gy, gx = torch.meshgrid(
        torch.arange(b, device=x.device), torch.arange(ch, device=x.device), torch.arange(cw, device=x.device),
        indexing="ij",
    )
    gy = torch.clamp(gy + oy - ch // 2, min=0, max=h - 1)
    gx = torch.clamp(gx + ox - cw // 2, min=0, max=w - 1)
    mask = torch.ones(b, h, w, dtype=x.dtype, device=x.device)
    mask[gb, gy, gx] = 0
    return x * mask.unsqueeze(1)


AUGMENTATIONS = {"translation": rand_translation, "cutout": rand_cutout}


def diff_augment(x: torch.Tensor, policy: str = "translation,cutout", generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply the comma-separated ``policy`` in order (only translation and cutout are used by AddSR)."""
    if not policy:
        return x
    for name in policy.split(","):
        name = name.strip()
        if name not in AUGMENTATIONS:
            raise TrainConfigError(f"Unknown DiffAugment op {name!r} (discriminator.diffaug_policy); supported: {sorted(AUGMENTATIONS)}.")
        x = AUGMENTATIONS[name](x, generator=generator)
    return x.contiguous()
