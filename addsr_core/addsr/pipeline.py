"""The AddSR family (the protocol of :class:`addsr_core.stages.Family`): its options and its sample
stage, the few-step PSR sampler (:mod:`.sampler`) on the networks, one image of a batch at a time,
tiled when large. Condition, decode and finish are the ControlNet stages of :mod:`addsr_core.stages`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..sampling.denoisers import ControlNetDenoiser
from ..sampling.noise import NoiseSource, SeededNoise
from ..stages import AddSRModels, ControlNetOptions, LRCondition, per_image, vae_decode
from ..stages import controlnet_condition as condition  # noqa: F401 (the family protocol: stages.Family)
from ..stages import controlnet_decode as decode  # noqa: F401
from ..stages import controlnet_finish as finish  # noqa: F401
from ..stages import controlnet_resolve as resolve  # noqa: F401
from ..text.conditioning import check_prompt_widths
from .sampler import AddSRSampling, sample_addsr


@dataclass
class AddSROptions(ControlNetOptions):
    """The official release's defaults (4 steps, PSR 0.4, adain), with tiles for big images."""

    psr_weight: float = 0.4
    recompute_tokens: bool = True

    def sampling(self, **extra) -> AddSRSampling:
        return AddSRSampling.with_steps(
            self.steps, psr_weight=self.psr_weight, recompute_tokens=self.recompute_tokens,
            guidance_scale=self.guidance_scale, **extra,
        )

    def check(self) -> None:
        super().check()
        self.sampling().validate()


def count_network_calls(options: AddSROptions, processing_hw, batch: int = 1) -> int:
    h, w = processing_hw
    return options.tiling.calls_per_step((h // 8, w // 8)) * len(options.sampling().timesteps) * batch


def sample(
    models: AddSRModels,
    cond: LRCondition,
    prompt_embeds: torch.Tensor,
    negative_embeds: Optional[torch.Tensor],
    options: AddSROptions,
    *,
    noise: Optional[NoiseSource] = None,
    on_tile: Optional[Callable[[], None]] = None,
    on_step: Optional[Callable] = None,
    trace=None,
) -> torch.Tensor:
    """Run the refining sampler; returns the scaled clean latent z0.

    A batch is sampled one image at a time, each from ``options.seed``: an image gets the same draws
    alone or in a batch, and memory is that of one image. ``noise`` (replayed draws) replaces the seed.
    The PSR decodes between steps use ``options.decoding`` (the VAE decode tile).
    """
    sampling, tiling, psr_decode = options.sampling(), options.tiling, options.decoding
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
                noise=noise or SeededNoise(options.seed),
                trace=trace,
                on_step=on_step,
                owns_decodes=trace is None,  # decode_psr's result is its own (a trace may keep it)
            )
            z0.append(result.z0)
    return torch.cat(z0)

