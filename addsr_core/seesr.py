"""The whole SeeSR upscale, from the same stages as AddSR's (:mod:`.pipeline`).

SeeSR shares AddSR's networks, LR preparation, RAM tokens, VAE, decode and colour fix; only the
sampler and its defaults differ (50 DDPM steps, CFG 5.5, 96-latent tiles). ``sample`` and
``count_network_calls`` have the AddSR pipeline's signatures so the nodes and the CLI drive either.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .pipeline import AddSRModels, LRCondition, UpscaleOptions, condition_from_lr, decode, finish
from .sampling.denoisers import ControlNetDenoiser, TiledDenoiser, counting
from .sampling.noise import NoiseSource
from .sampling.seesr import DEFAULT_GUIDANCE, DEFAULT_STEPS, START_POINTS, SeeSRSampling, sample_seesr, seesr_noise
from .sampling.tiling import tile_count
from .text.conditioning import check_prompt_widths
from .text.prompt import build_prompt

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
                             start_steps=self.start_steps, timestep_spacing=self.timestep_spacing, **extra)

    @classmethod
    def turbo(cls, **kwargs) -> "SeeSROptions":
        """``test_seesr_turbo.py``: 2 trailing steps, no CFG, overlap 32 (needs the SD-Turbo UNet)."""
        defaults = dict(steps=2, guidance_scale=1.0, timestep_spacing="trailing", latent_overlap_px=TURBO_OVERLAP * 8)
        return cls(**{**defaults, **kwargs})


def latent_tiling(options: SeeSROptions, latent_hw) -> Optional[tuple]:
    """(tile, overlap) in latents when the latent needs tiles, else None (see ``official_tiles``)."""
    h, w = (int(v) for v in latent_hw)
    tile, overlap = options.latent_tile_px // 8, options.latent_overlap_px // 8
    needs = h * w > tile * tile if options.official_tiles else max(h, w) > tile
    return (tile, overlap) if needs else None


def count_network_calls(options: SeeSROptions, latent_hw) -> int:
    tiling = latent_tiling(options, latent_hw)
    if tiling is None:
        per_step = 1
    else:
        tile = tiling[0] if options.official_tiles else (tiling[0], tiling[0])
        per_step = tile_count(*latent_hw, tile, tiling[1])
    return per_step * len(options.sampling().timesteps())


def make_denoiser(models: AddSRModels, options: SeeSROptions, latent_hw, on_tile=None):
    denoise = ControlNetDenoiser(models.unet, models.controlnet, options.conditioning_scale)
    tiling = latent_tiling(options, latent_hw)
    if tiling is None:
        return counting(denoise, on_tile)
    return TiledDenoiser(denoise, *tiling, on_tile=on_tile, square=options.official_tiles)


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
    """Run SeeSR's sampler; returns the scaled latent (like :func:`addsr_core.pipeline.sample`)."""
    options.validate()
    # The AddSR sampler's check, before any work; the negative only matters when CFG uses it.
    used_negative = negative_embeds if options.guidance_scale > 1 else None
    check_prompt_widths(prompt_embeds, used_negative, models.unet.config.cross_attention_dim)
    device = next(models.unet.parameters()).device
    denoise = make_denoiser(models, options, cond.moments.shape[-2:], on_tile)
    with torch.no_grad():
        return sample_seesr(
            denoise=denoise,
            control_image=cond.control_image.to(device).float(),
            lr_tokens=cond.lr_tokens.to(device).float(),
            prompt_embeds=prompt_embeds.to(device).float(),
            negative_embeds=None if negative_embeds is None else negative_embeds.to(device).float(),
            moments=cond.moments.to(device).float(),
            options=options.sampling(),
            noise=noise or seesr_noise(options.seed),
            scaling_factor=models.vae.scaling_factor,
            trace=trace,
            on_step=on_step,
        )


def build_prompts(cond: LRCondition, options: SeeSROptions) -> list[str]:
    """``f"{tags}, {user prompt}," + "clean, high-resolution, 8k"`` (test_seesr.py, string for string)."""
    tags = cond.tags or [""] * cond.control_image.shape[0]
    return [build_prompt(tag, options.prompt, added_prompt=options.added_prompt) for tag in tags]


def upscale(models: AddSRModels, lr: torch.Tensor, options: SeeSROptions | None = None, *, on_tile=None,
            on_step=None) -> torch.Tensor:
    """[B,3,h,w] RGB in [0,1] -> [B,3,h*scale,w*scale] in [0,1], SeeSR's way."""
    options = options or SeeSROptions()
    if models.text is None:
        raise ValueError("the standalone pipeline needs a text encoder (models.text) to turn prompts into embeddings")
    cond = condition_from_lr(models, lr, options)
    prompt_embeds = models.text(build_prompts(cond, options))
    negative = models.text([options.negative_prompt] * lr.shape[0]) if options.guidance_scale > 1 else None
    z0 = sample(models, cond, prompt_embeds, negative, options, on_tile=on_tile, on_step=on_step)
    return finish(decode(models, z0, options), cond, options)
