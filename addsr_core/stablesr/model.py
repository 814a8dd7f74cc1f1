"""The StableSR diffusion model: an SD2 UNet with SFT layers plus the time-aware encoder."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import OptionsError
from ..models import UNet2DConditionModel, UNetConfig
from ..models.operations import resolve_operations
from .encoder import TimeAwareEncoder, TimeAwareEncoderConfig
from .spade import attach_spade

PREDICTION_TYPES = ("epsilon", "v_prediction")


def sd2_unet_config(**overrides) -> UNetConfig:
    """The plain SD2 UNet (no AddSR image cross-attention): SD 2.x base / 768-v, SD-Turbo, StableSR."""
    return UNetConfig(use_image_cross_attention=False, **overrides)


@dataclass(frozen=True)
class StableSRConfig:
    unet: UNetConfig = field(default_factory=sd2_unet_config)
    encoder: TimeAwareEncoderConfig = field(default_factory=TimeAwareEncoderConfig)
    prediction_type: str = "epsilon"  # "v_prediction" for the 768-v model
    scaling_factor: float = 0.18215

    def __post_init__(self):
        if self.unet.use_image_cross_attention:
            raise ValueError("StableSR uses the plain SD2 UNet: use_image_cross_attention must be False")
        if self.prediction_type not in PREDICTION_TYPES:
            raise OptionsError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")

    @property
    def semb_channels(self) -> int:
        return self.encoder.out_channels


class StableSRModel(nn.Module):
    """``unet`` (diffusers layout, ``.spade`` in every resnet) + ``struct_encoder`` (LDM layout).

    ``operations``: the layer classes (default torch.nn; see :mod:`addsr_core.models.operations`)."""

    def __init__(self, config: StableSRConfig = StableSRConfig(), operations=None):
        super().__init__()
        ops = resolve_operations(operations)
        self.config = config
        self.unet = UNet2DConditionModel(config.unet, ops)
        attach_spade(self.unet, config.semb_channels, ops)
        self.struct_encoder = TimeAwareEncoder(config.encoder, ops)

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def forward(self, z_t: torch.Tensor, timestep, lr_latent: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Model output (eps or v) for ``z_t`` at ``timestep`` (the ORIGINAL 0..999 timestep),
        conditioned on the scaled LR latent of the same size and the text embedding ``context``."""
        if lr_latent.shape[-2:] != z_t.shape[-2:]:
            raise ValueError(f"LR latent {tuple(lr_latent.shape[-2:])} must match the latent {tuple(z_t.shape[-2:])}")
        struct_cond = self.struct_encoder(lr_latent, timestep)
        return self.unet(z_t, timestep, context, struct_cond=struct_cond)
