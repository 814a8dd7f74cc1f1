"""The whole SeeSR upscale, from the same stages as AddSR's (:mod:`.pipeline`).

SeeSR shares AddSR's networks, LR preparation, RAM tokens, VAE, decode and colour fix; only the
sampler and its defaults differ (50 DDPM steps, CFG 5.5, 96-latent tiles). ``sample`` and
``count_network_calls`` have the AddSR pipeline's signatures so the nodes and the CLI drive either.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .. import pipeline
from ..pipeline import AddSRModels, DecodeOptions, LatentTiling, LRCondition, UpscaleOptions, per_image
from ..sampling.denoisers import ControlNetDenoiser
from ..sampling.noise import NoiseSource
from .sampler import DEFAULT_GUIDANCE, DEFAULT_STEPS, START_POINTS, SeeSRSampling, sample_seesr, seesr_noise  # noqa: F401 (re-exported)
from ..text.conditioning import check_prompt_widths

SEESR_ADDED_PROMPT = "clean, high-resolution, 8k"  # test_seesr.py --added_prompt
OFFICIAL_TILE, OFFICIAL_OVERLAP = 96, 4  # test_seesr.py --latent_tiled_size / --latent_tiled_overlap (latents)
TURBO_OVERLAP = 32  # test_seesr_turbo.py


@dataclass
class SeeSROptions(UpscaleOptions):
    """``test_seesr.py``'s defaults. ``psr_weight`` and ``recompute_tokens`` do not apply to SeeSR.

    ``official_tiles`` (on): tile only when the latent's AREA exceeds tile², with square tiles
    ``min(tile, h, w)``, as the official pipeline; off: tile when a side exceeds the tile, clamped
    per axis (fewer calls on long, thin images).
    """

    steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE
    latent_tile_px: int = OFFICIAL_TILE * 8
    latent_overlap_px: int = OFFICIAL_OVERLAP * 8
    added_prompt: str = SEESR_ADDED_PROMPT
    conditioning_scale: float = 1.0
    start_point: str = "lr"
    start_steps: int = 999
    timestep_spacing: str = "leading"
    official_tiles: bool = True

    def validate(self) -> None:
        super().validate()
        self.sampling().validate()

    def sampling(self, **extra) -> SeeSRSampling:
        return SeeSRSampling(steps=self.steps, guidance_scale=self.guidance_scale, start_point=self.start_point,
                             start_steps=self.start_steps, timestep_spacing=self.timestep_spacing,
                             conditioning_scale=self.conditioning_scale, **extra)

    @property
    def tiling(self) -> LatentTiling:
        return LatentTiling(self.latent_tile_px, self.latent_overlap_px, area_rule=self.official_tiles)

    @classmethod
    def turbo(cls, **kwargs) -> "SeeSROptions":
        """``test_seesr_turbo.py``: 2 trailing steps, no CFG, overlap 32 (needs the SD-Turbo UNet)."""
        defaults = dict(steps=2, guidance_scale=1.0, timestep_spacing="trailing", latent_overlap_px=TURBO_OVERLAP * 8)
        return cls(**{**defaults, **kwargs})


def count_network_calls(sampling: SeeSRSampling, tiling: LatentTiling, latent_hw, batch: int = 1) -> int:
    return tiling.calls_per_step(latent_hw) * len(sampling.timesteps()) * batch


def sample(
    models: AddSRModels,
    cond: LRCondition,
    prompt_embeds: torch.Tensor,
    negative_embeds: Optional[torch.Tensor],
    sampling: SeeSRSampling,
    tiling: LatentTiling = LatentTiling(OFFICIAL_TILE * 8, OFFICIAL_OVERLAP * 8, area_rule=True),
    *,
    seed: int = 0,
    psr_decode: DecodeOptions | None = None,  # SeeSR has no PSR decode; the AddSR signature
    noise: Optional[NoiseSource] = None,
    on_tile: Optional[Callable[[], None]] = None,
    on_step: Optional[Callable] = None,
    trace=None,
) -> torch.Tensor:
    """Run SeeSR's sampler; returns the scaled latent (like :func:`addsr_core.addsr.pipeline.sample`),
    one image of a batch at a time, each from ``seed``."""
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
                noise=noise or seesr_noise(seed),
                scaling_factor=models.vae.scaling_factor,
                trace=trace,
                on_step=on_step,
            ))
    return torch.cat(z0)


def upscale(models: AddSRModels, lr: torch.Tensor, options: SeeSROptions | None = None, *, on_tile=None,
            on_step=None) -> torch.Tensor:
    """[B,3,h,w] RGB in [0,1] -> [B,3,h*scale,w*scale] in [0,1], SeeSR's way (the AddSR stages
    with this sampler)."""
    return pipeline.upscale(models, lr, options or SeeSROptions(), method=sys.modules[__name__],
                            on_tile=on_tile, on_step=on_step)
