"""AddSR's sample stage: its few-step PSR sampler (:mod:`.sampler`) on the networks, one image of a
batch at a time, tiled when large. The stages around it are the shared ones of
:mod:`addsr_core.pipeline`; ``addsr_core.seesr.pipeline.sample`` has the same signature."""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch

from ..pipeline import AddSRModels, DecodeOptions, LatentTiling, LRCondition, per_image, vae_decode
from ..sampling.denoisers import ControlNetDenoiser
from ..sampling.noise import NoiseSource, SeededNoise
from ..text.conditioning import check_prompt_widths
from .sampler import AddSRSampling, sample_addsr


def count_network_calls(sampling: AddSRSampling, tiling: LatentTiling, latent_hw, batch: int = 1) -> int:
    return tiling.calls_per_step(latent_hw) * len(sampling.timesteps) * batch



def sample(
    models: AddSRModels,
    cond: LRCondition,
    prompt_embeds: torch.Tensor,
    negative_embeds: Optional[torch.Tensor],
    sampling: AddSRSampling,
    tiling: LatentTiling = LatentTiling(),
    *,
    seed: int = 0,
    psr_decode: DecodeOptions = DecodeOptions(),
    noise: Optional[NoiseSource] = None,
    on_tile: Optional[Callable[[], None]] = None,
    on_step: Optional[Callable] = None,
    trace=None,
) -> torch.Tensor:
    """Run the refining sampler; returns the scaled clean latent z0.

    A batch is sampled one image at a time, each from ``seed``: an image gets the same draws alone
    or in a batch, and memory is that of one image. ``noise`` (replayed draws) replaces the seed.
    """
    sampling.validate()
    tiling.validate()
    unet = models.unet
    check_prompt_widths(prompt_embeds, negative_embeds, unet.config.cross_attention_dim)
    device = models.device_of(unet)
    vae_dtype = next(models.vae.parameters()).dtype
    sampling = dataclasses.replace(sampling, scaling_factor=models.vae.scaling_factor)
    denoise = ControlNetDenoiser(unet, models.controlnet, sampling.conditioning_scale)
    denoise = tiling.wrap(denoise, cond.moments.shape[-2:], on_tile)

    def decode_psr(latent):
        return vae_decode(models.vae, latent.to(vae_dtype), psr_decode.tile_px, psr_decode.overlap_px)

    def represent(image01):
        return models.ram.represent(image01, resize="bicubic")

    z0 = []
    with torch.no_grad():
        for one, positive, negative in per_image(cond, prompt_embeds, negative_embeds, device):
            result = sample_addsr(
                denoise=denoise,
                encode=lambda _, moments=one.moments: moments,
                decode=decode_psr,
                represent=represent,
                control_image=one.control_image,
                lr_tokens=one.lr_tokens,
                prompt_embeds=positive,
                negative_embeds=negative,
                options=sampling,
                noise=noise or SeededNoise(seed),
                trace=trace,
                on_step=on_step,
                owns_decodes=trace is None,  # decode_psr's result is its own (a trace may keep it)
            )
            z0.append(result.z0)
    return torch.cat(z0)
