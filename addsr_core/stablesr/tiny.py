"""Tiny StableSR networks with seeded weights: the real code paths at toy size, for tests and self-checks.

Channel counts are multiples of 32 because the official code hard-codes GroupNorm(32). The
weights are a pure function of the seed (CPU generator, parameters in registration order), so
outputs recorded from the official code for the same weights stay valid.
"""
from __future__ import annotations

import torch
from torch import nn

from ..models import VAEConfig
from .cfw import CFWAutoencoder
from .encoder import TimeAwareEncoderConfig
from .model import StableSRConfig, StableSRModel, sd2_unet_config

TINY_CONTEXT_DIM = 16
TINY_STABLESR = StableSRConfig(
    unet=sd2_unet_config(block_out_channels=(32, 64, 64, 64), attention_heads=(4, 8, 8, 8), cross_attention_dim=TINY_CONTEXT_DIM),
    encoder=TimeAwareEncoderConfig(model_channels=64, out_channels=32),
)
TINY_CFW = VAEConfig(block_out_channels=(32, 32, 64, 64), layers_per_block=2, norm_num_groups=32)


def seeded_weights(module: nn.Module, seed: int, std: float = 0.1) -> nn.Module:
    """Every parameter ~ N(0, std^2) from one CPU generator; nothing left at zero (no zero-init convs)."""
    generator = torch.Generator("cpu").manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    return module


def tiny_stablesr(seed: int = 0, prediction_type: str = "epsilon") -> StableSRModel:
    from dataclasses import replace

    return seeded_weights(StableSRModel(replace(TINY_STABLESR, prediction_type=prediction_type)), seed).eval()


def tiny_cfw(seed: int = 0) -> CFWAutoencoder:
    return seeded_weights(CFWAutoencoder(TINY_CFW), seed).eval()
