"""Tile geometry: the VAE's receptive fields and trim margins, the tiles' spans and their feathered blend weights."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ...sampling.tiling import axis_origins, balanced_tile


def _latent_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def decoder_receptive_px(vae) -> int:
    """Reach of the decoder, in output pixels, from one latent: every 3x3 conv at its scale."""
    levels, per_block = len(vae.config.block_out_channels), vae.config.layers_per_block + 1
    scale = 2 ** (levels - 1)
    reach = scale * (1 + 4 + 2 * per_block)  # conv_in, mid-block resnets, first up block
    for _ in range(levels - 1):
        scale //= 2
        reach += scale * (1 + 2 * per_block)  # upsample conv, resnets
    return reach + 1  # conv_out


def decoder_trim_margins(vae) -> list[tuple[int, int]]:
    """Per up block of the decoder: (output px per feature px after it, the reach of everything
    after it in output px). A tile needs only that much context past its core once the block has
    run; the rest of the halo is spent (same count as :func:`decoder_receptive_px`)."""
    levels, per_block = len(vae.config.block_out_channels), vae.config.layers_per_block + 1
    scales = [2 ** (levels - 1 - i) for i in range(levels)]  # each block's resnets
    margins = []
    for i in range(levels):
        after = scales[i + 1] if i + 1 < levels else scales[i]  # its upsampler (and conv) ran: one level up
        reach = 1  # conv_out
        for j in range(i + 1, levels):
            # block j's resnets, and the conv of block j-1's upsampler (block i's own already ran)
            reach += scales[j] * 2 * per_block + (scales[j] if j > i + 1 else 0)
        margins.append((after, reach))
    return margins


def decoder_attention_reach(vae) -> int:
    """Latents from a cut edge whose mid-block attention input is affected: conv_in + one resnet."""
    return 3


def encoder_receptive_px(vae) -> int:
    """Reach of the encoder, in input pixels: convs per level (stride-2 convs reach 2 px), mid block, conv_out."""
    return _encoder_reach_px(vae, to_attention=False)


def encoder_attention_reach(vae) -> int:
    """Latents from a cut edge whose mid-block attention input is affected."""
    return math.ceil(_encoder_reach_px(vae, to_attention=True) / _latent_factor(vae))


def _encoder_reach_px(vae, to_attention: bool) -> int:
    levels, per_block = len(vae.config.block_out_channels), vae.config.layers_per_block
    reach, scale = 1, 1  # conv_in
    for _ in range(levels - 1):
        reach += scale * (2 * per_block + 2)
        scale *= 2
    mid = 2 if to_attention else 4 + 1  # first mid resnet, or both plus conv_out
    return reach + scale * (2 * per_block + mid)


@dataclass(frozen=True)
class Span:
    """One tile along one axis, in latent units: the core [start, end) and its context [ctx_start, ctx_end)."""

    start: int
    end: int
    ctx_start: int
    ctx_end: int
    ramp_before: int  # overlap with the previous tile (0 at the border)
    ramp_after: int


def plan_spans(size: int, tile: int, overlap: int, halo: int, balanced: bool = True) -> list[Span]:
    """Cores as in the latent tiling (last one flush with the edge), each with a halo of context.

    ``balanced``: equal cores, the smallest that cover ``size`` with as many tiles as ``tile``
    needs (:func:`~addsr_core.sampling.tiling.balanced_tile`), instead of a last core that mostly
    repeats its neighbour; the work is what the pixels need, whatever the image size."""
    tile = min(tile, size)
    overlap = min(overlap, tile // 2)
    if balanced:
        tile = balanced_tile(size, tile, overlap)
    starts = axis_origins(size, tile, overlap)
    spans = []
    for i, s in enumerate(starts):
        before = (starts[i - 1] + tile - s) if i > 0 else 0
        after = (s + tile - starts[i + 1]) if i + 1 < len(starts) else 0
        spans.append(Span(s, s + tile, max(0, s - halo), min(size, s + tile + halo), before, after))
    return spans


def feather(length: int, ramp_before: int, ramp_after: int) -> torch.Tensor:
    """1 inside, a linear ramp across each overlap (sums to 1 with the neighbour's ramp), never 0."""
    i = torch.arange(length, dtype=torch.float32) + 0.5
    w = torch.ones(length)
    if ramp_before > 0:
        w = torch.minimum(w, i / ramp_before)
    if ramp_after > 0:
        w = torch.minimum(w, (length - i) / ramp_after)
    return w


def _span_feather(span: Span, scale: int) -> torch.Tensor:
    """One tile's blend weight along one axis (``feather`` over its core, ``scale`` px per latent)."""
    return feather((span.end - span.start) * scale, span.ramp_before * scale, span.ramp_after * scale)


def _feather_sum(spans: Sequence[Span], scale: int) -> torch.Tensor:
    """Along one axis, the sum of the tiles' feathers at each output pixel."""
    total = torch.zeros(spans[-1].end * scale)
    for s in spans:
        total[s.start * scale : s.end * scale] += _span_feather(s, scale)
    return total
