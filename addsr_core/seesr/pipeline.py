"""The SeeSR family (the protocol of :class:`addsr_core.stages.Family`): its options and its sample
stage (the 50-step DDPM teacher of :mod:`.sampler`).

SeeSR shares AddSR's networks, LR condition, RAM tokens, VAE decode and colour fix (the ControlNet
stages of :mod:`addsr_core.stages`); only the sampler and its defaults differ (50 DDPM steps, CFG 5.5,
768 px tiles by the official area rule).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..sampling.denoisers import ControlNetDenoiser
from ..sampling.noise import NoiseSource
from ..stages import AddSRModels, ControlNetOptions, LatentTiling, LRCondition, per_image, tile_overlap_px
from ..stages import controlnet_condition as condition  # noqa: F401 (the family protocol: stages.Family)
from ..stages import controlnet_decode as decode  # noqa: F401
from ..stages import controlnet_finish as finish  # noqa: F401
from ..stages import controlnet_resolve as resolve  # noqa: F401
from ..text.conditioning import check_prompt_widths
from .sampler import DEFAULT_GUIDANCE, DEFAULT_STEPS, START_POINTS, SeeSRSampling, sample_seesr, seesr_noise  # noqa: F401 (re-exported)

SEESR_ADDED_PROMPT = "clean, high-resolution, 8k"  # test_seesr.py --added_prompt
OFFICIAL_TILE_PX, OFFICIAL_OVERLAP_PX = 96 * 8, 4 * 8  # test_seesr.py --latent_tiled_size / --latent_tiled_overlap (96, 4 latents)
TURBO_OVERLAP_PX = 32 * 8  # test_seesr_turbo.py


@dataclass
class SeeSROptions(ControlNetOptions):
    """``test_seesr.py``'s defaults.

    ``official_tiles`` (on): tile only when the latent's AREA exceeds tile², with square tiles
    ``min(tile, h, w)``, as the official pipeline; off: tile when a side exceeds the tile, balanced
    per axis (fewer calls on long, thin images).
    """

    steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE
    latent_tile_px: int = OFFICIAL_TILE_PX
    latent_overlap_px: int = OFFICIAL_OVERLAP_PX
    added_prompt: str = SEESR_ADDED_PROMPT
    conditioning_scale: float = 1.0
    start_point: str = "lr"
    start_steps: int = 999
    timestep_spacing: str = "leading"
    official_tiles: bool = True

    def check(self) -> None:
        super().check()
        self.sampling().validate()

    def sampling(self, **extra) -> SeeSRSampling:
        return SeeSRSampling(steps=self.steps, guidance_scale=self.guidance_scale, start_point=self.start_point,
                             start_steps=self.start_steps, timestep_spacing=self.timestep_spacing,
                             conditioning_scale=self.conditioning_scale, **extra)

    @property
    def tiling(self) -> LatentTiling:
        tile = self.latent_tile_px
        return LatentTiling(tile, tile_overlap_px(tile, self.latent_overlap_px),
                            rule="area" if self.official_tiles else "balanced")

    @classmethod
    def turbo(cls, **kwargs) -> "SeeSROptions":
        """``test_seesr_turbo.py``: 2 trailing steps, no CFG, overlap 32 latents (needs the SD-Turbo UNet)."""
        defaults = dict(steps=2, guidance_scale=1.0, timestep_spacing="trailing", latent_overlap_px=TURBO_OVERLAP_PX)
        return cls(**{**defaults, **kwargs})


def count_network_calls(options: SeeSROptions, processing_hw, batch: int = 1) -> int:
    h, w = processing_hw
    return options.tiling.calls_per_step((h // 8, w // 8)) * len(options.sampling().timesteps()) * batch


def sample(
    models: AddSRModels,
    cond: LRCondition,
    prompt_embeds: torch.Tensor,
    negative_embeds: Optional[torch.Tensor],
    options: SeeSROptions,
    *,
    noise: Optional[NoiseSource] = None,
    on_tile: Optional[Callable[[], None]] = None,
    on_step: Optional[Callable] = None,
    trace=None,
) -> torch.Tensor:
    """Run SeeSR's sampler; returns the scaled latent, one image of a batch at a time, each from
    ``options.seed``."""
    sampling, tiling = options.sampling(), options.tiling
    sampling.validate()
    tiling.validate()
    # The AddSR sampler's check, before any work; the negative only matters when CFG uses it.
    used_negative = negative_embeds if sampling.guidance_scale > 1 else None
    check_prompt_widths(prompt_embeds, used_negative, models.unet.config.cross_attention_dim)
    device = models.device_of(models.unet)
    denoise = ControlNetDenoiser(models.unet, models.controlnet, sampling.conditioning_scale)
    denoise = tiling.wrap(denoise, cond.moments.shape[-2:], on_tile)
    z0 = []
    with torch.no_grad():
        for one, positive, negative in per_image(cond, prompt_embeds, negative_embeds, device):
            z0.append(sample_seesr(
                denoise=denoise,
                control_image=one.control_image,
                lr_tokens=one.lr_tokens,
                prompt_embeds=positive,
                negative_embeds=negative,
                moments=one.moments,
                options=sampling,
                noise=noise or seesr_noise(options.seed),
                scaling_factor=models.vae.scaling_factor,
                trace=trace,
                on_step=on_step,
            ))
    return torch.cat(z0)

