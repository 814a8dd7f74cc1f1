"""The whole AddSR upscale, composed from the library's pieces.

Stages, each usable on its own (the ComfyUI nodes call them one by one):
``condition_from_lr`` -> ``sample`` -> ``decode`` -> ``finish``; ``upscale`` runs them all.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .models import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from .sampling.addsr import AddSRSampling, sample_addsr
from .sampling.denoisers import ControlNetDenoiser, TiledDenoiser, counting
from .sampling.noise import NoiseSource, SeededNoise
from .text.conditioning import check_prompt_widths

from .text.prompt import DEFAULT_NEGATIVE_PROMPT as DEFAULT_NEGATIVE
COLOR_FIXES = ("adain", "wavelet", "none")
# How the decoded image becomes 8 bits. "float" (ours, default): colour fix in float, one rounding at
# save time. "official": test_addsr.py's route: the pipeline's 'pil' output rounds the decode to 8
# bits, the colour fix runs on that and the 8-bit LR, and ToPILImage truncates; it reproduces the
# official PNG. The two differ by up to 2 levels (ours ~0.4 levels brighter on average).
ROUNDINGS = ("float", "official")


@dataclass
class AddSRModels:
    unet: UNet2DConditionModel
    controlnet: ControlNetModel
    vae: AutoencoderKL
    ram: torch.nn.Module  # has .represent(images01, resize) -> [B,145,512]
    tagger: Optional[object] = None  # has .tags(images01) -> list[str]
    text: Optional[Callable[[list], torch.Tensor]] = None  # prompts -> [B,77,1024]


DEFAULT_LATENT_OVERLAP_PX = 256


def tile_overlap_px(tile_px: int, overlap_px: int = DEFAULT_LATENT_OVERLAP_PX) -> int:
    """The diffusion tile overlap actually used for a ``tile_px`` tile (output pixels): the wanted
    ``overlap_px``, at most a third of the tile (a multiple of 8), so tiles step by at least two
    thirds of their size. The one rule of the AddSR Upscale and AddSR Sampler nodes and the CLI:
    the same tile gives the same overlap everywhere (the default 1024 tile: 256)."""
    return max(0, min(int(overlap_px), int(tile_px) // 3 // 8 * 8))


@dataclass
class UpscaleOptions:
    """Defaults follow the official release (4 steps, PSR 0.4, adain), with tiles for big images."""

    scale: int = 4
    steps: int = 4
    psr_weight: float = 0.4
    seed: int = 0
    guidance_scale: float = 0.0
    prompt: str = ""
    negative_prompt: str = DEFAULT_NEGATIVE
    use_tags: bool = True
    color_fix: str = "adain"
    process_size: int = 512
    recompute_tokens: bool = True
    latent_tile_px: int = 1024  # diffusion tile in output pixels (128 latents)
    latent_overlap_px: int = DEFAULT_LATENT_OVERLAP_PX  # see tile_overlap_px
    vae_encode_tile_px: int = 1024
    vae_decode_tile_px: int = 1792  # the official decoder tile (224 latents)
    vae_overlap_px: int = 64
    rounding: str = "float"  # see ROUNDINGS

    def validate(self) -> None:
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {self.rounding!r}")
        if self.scale < 1:
            raise ValueError(f"scale must be >= 1, got {self.scale}")
        if self.color_fix not in COLOR_FIXES:
            raise ValueError(f"color_fix must be one of {COLOR_FIXES}, got {self.color_fix!r}")
        if self.latent_tile_px < 64 or self.latent_tile_px % 8:
            raise ValueError(f"latent_tile_px must be a multiple of 8 and >= 64, got {self.latent_tile_px}")
        if not 0 <= self.latent_overlap_px < self.latent_tile_px:
            raise ValueError("latent_overlap_px must be >= 0 and smaller than latent_tile_px")

    def sampling(self, **extra) -> AddSRSampling:
        return AddSRSampling.with_steps(
            self.steps, psr_weight=self.psr_weight, recompute_tokens=self.recompute_tokens,
            guidance_scale=self.guidance_scale, **extra,
        )


@dataclass
class LRCondition:
    """What the sampler needs about the LR image (ComfyUI's ``ADDSR_COND``)."""

    control_image: torch.Tensor  # [B,3,H,W] upscaled LR in [0,1], H and W multiples of 8
    lr_tokens: torch.Tensor  # [B,145,512] RAM tokens of the original LR
    moments: torch.Tensor  # [B,8,H/8,W/8] VAE posterior of the control image
    lr_size: tuple  # (h, w) of the original LR
    scale: int
    tags: list = field(default_factory=list)

    @property
    def output_size(self) -> tuple:
        return self.lr_size[0] * self.scale, self.lr_size[1] * self.scale


# ---------------------------------------------------------------------------------------------


def vae_encode(vae: AutoencoderKL, image_pm1: torch.Tensor, tile_px: int, overlap_px: int) -> torch.Tensor:
    from .imaging.tiled_vae import tiled_encode

    return tiled_encode(vae, image_pm1, tile_px, overlap_px)


def vae_decode(vae: AutoencoderKL, latent: torch.Tensor, tile_px: int, overlap_px: int) -> torch.Tensor:
    from .imaging.tiled_vae import tiled_decode

    return tiled_decode(vae, latent, tile_px, overlap_px)


def condition_from_lr(models: AddSRModels, lr: torch.Tensor, options: UpscaleOptions) -> LRCondition:
    """Upscale the LR as the official script does, then its RAM tokens and VAE posterior.

    ``lr`` is [B,3,h,w] RGB in [0,1] (alpha already split off).
    """
    from .imaging.prepare import official_condition_image

    options.validate()
    vae = models.vae
    device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
    control = official_condition_image(lr, options.scale, options.process_size).to(device)
    lr_tokens = models.ram.represent(lr.to(device), resize="bilinear")
    with torch.no_grad():
        moments = vae_encode(vae, (control * 2 - 1).to(dtype), options.vae_encode_tile_px, options.vae_overlap_px)
    tags = models.tagger.tags(lr.to(device)) if (options.use_tags and models.tagger is not None) else []
    return LRCondition(control, lr_tokens, moments.float(), tuple(lr.shape[-2:]), options.scale, tags)


def latent_tiling(options: UpscaleOptions, latent_hw) -> Optional[tuple]:
    """(tile, overlap) in latents when the latent is bigger than one tile, else None."""
    tile, overlap = options.latent_tile_px // 8, options.latent_overlap_px // 8
    return (tile, overlap) if max(latent_hw) > tile else None


def count_network_calls(options: UpscaleOptions, latent_hw) -> int:
    from .sampling.tiling import tile_count

    tiling = latent_tiling(options, latent_hw)
    per_step = tile_count(*latent_hw, (tiling[0], tiling[0]), tiling[1]) if tiling else 1
    return per_step * options.steps


def sample(
    models: AddSRModels,
    cond: LRCondition,
    prompt_embeds: torch.Tensor,
    negative_embeds: Optional[torch.Tensor],
    options: UpscaleOptions,
    *,
    noise: Optional[NoiseSource] = None,
    on_tile: Optional[Callable[[], None]] = None,
    on_step: Optional[Callable] = None,
    trace=None,
) -> torch.Tensor:
    """Run the refining sampler; returns the scaled clean latent z0."""
    options.validate()
    unet = models.unet
    check_prompt_widths(prompt_embeds, negative_embeds, unet.config.cross_attention_dim)
    device = next(unet.parameters()).device
    vae_dtype = next(models.vae.parameters()).dtype
    denoise = ControlNetDenoiser(unet, models.controlnet)
    latent_hw = cond.moments.shape[-2:]
    tiling = latent_tiling(options, latent_hw)
    denoise = TiledDenoiser(denoise, *tiling, on_tile=on_tile) if tiling else counting(denoise, on_tile)

    def decode(latent):
        return vae_decode(models.vae, latent.to(vae_dtype), options.vae_decode_tile_px, options.vae_overlap_px).float()

    def represent(image01):
        return models.ram.represent(image01, resize="bicubic")

    with torch.no_grad():
        result = sample_addsr(
            denoise=denoise,
            encode=lambda _: cond.moments.to(device),
            decode=decode,
            represent=represent,
            control_image=cond.control_image.to(device).float(),
            lr_tokens=cond.lr_tokens.to(device).float(),
            prompt_embeds=prompt_embeds.to(device).float(),
            negative_embeds=None if negative_embeds is None else negative_embeds.to(device).float(),
            options=options.sampling(scaling_factor=models.vae.scaling_factor),
            noise=noise or SeededNoise(options.seed),
            trace=trace,
            on_step=on_step,
        )
    return result.z0


def decode(models: AddSRModels, z0: torch.Tensor, options: UpscaleOptions) -> torch.Tensor:
    """Scaled latent -> image in [0,1] (the official final decode, tiled when large)."""
    vae = models.vae
    with torch.no_grad():
        raw = vae_decode(vae, (z0 / vae.scaling_factor).to(next(vae.parameters()).dtype), options.vae_decode_tile_px, options.vae_overlap_px)
    return (raw.float() / 2 + 0.5).clamp(0, 1)


def finish(images: torch.Tensor, cond: LRCondition, options: UpscaleOptions) -> torch.Tensor:
    """Colour fix against the upscaled LR, then resize to exactly LR size x scale (official order)."""
    from .imaging.colorfix import adain_color_fix, wavelet_color_fix
    from .imaging.prepare import resize_to

    source = cond.control_image.to(images.device, images.dtype)
    official = options.rounding == "official"
    if official:  # the 8-bit images test_addsr.py hands to the colour fix
        images, source = to_8bit_grid(images, torch.round), to_8bit_grid(source, torch.round)
    if options.color_fix == "adain":
        images = adain_color_fix(images, source)
    elif options.color_fix == "wavelet":
        images = wavelet_color_fix(images, source)
    images = images.clamp(0, 1)
    if official and options.color_fix != "none":
        images = to_8bit_grid(images, torch.floor)  # ToPILImage truncates
    if tuple(images.shape[-2:]) != cond.output_size:
        images = resize_to(images, cond.output_size)
    return images


def to_8bit_grid(images: torch.Tensor, quantize) -> torch.Tensor:
    """[0,1] float -> the nearest (round) or lower (floor) of the 256 8-bit levels, still as float."""
    return quantize(images.clamp(0, 1) * 255) / 255


def build_prompts(cond: LRCondition, options: UpscaleOptions) -> list[str]:
    from .text.prompt import build_prompt

    tags = cond.tags or [""] * cond.control_image.shape[0]
    return [build_prompt(tag, options.prompt) for tag in tags]


def upscale(models: AddSRModels, lr: torch.Tensor, options: UpscaleOptions, *, on_tile=None, on_step=None) -> torch.Tensor:
    """[B,3,h,w] RGB in [0,1] -> [B,3,h*scale,w*scale] in [0,1]."""
    if models.text is None:
        raise ValueError("the standalone pipeline needs a text encoder (models.text) to turn prompts into embeddings")
    cond = condition_from_lr(models, lr, options)
    prompt_embeds = models.text(build_prompts(cond, options))
    negative = models.text([options.negative_prompt] * lr.shape[0]) if options.guidance_scale > 1 else None
    z0 = sample(models, cond, prompt_embeds, negative, options, on_tile=on_tile, on_step=on_step)
    return finish(decode(models, z0, options), cond, options)
