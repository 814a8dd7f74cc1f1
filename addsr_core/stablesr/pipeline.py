"""The whole StableSR upscale, following the official ``sr_val_ddpm_text_T_vqganfin_oldcanvas_tile.py``.

1. ``prepare_lr``: bicubic-upscale the LR (in [-1,1], no antialias) by ``max(input_size / short
   side, scale)``, clamp; unless both sides are multiples of 32, reflect-pad bottom/right to the
   next multiple of 32 ABOVE each side (the official rule: a side that already is a multiple gets 32 more).
2. Images larger than ``image_tile_px`` are cut into official pixel tiles (1280 px, stride 1000,
   Gaussian-blended, the same seed for every tile); each tile is upscaled on its own by
   ``upscale_tile``:
   - encode with the CFW VAE: a posterior sample x 0.18215 is the LR latent, and the encoder's
     level-1/2 features are kept for CFW;
   - ``sample_stablesr`` with latent tiles of ``input_size / 8`` (the official canvas sampler);
   - CFW decode with fidelity ``w``, then the colour fix against the (padded) upscaled LR.
3. ``finish``: to [0,1], crop the padding, and resize to ``scale x`` the LR when the upscale
   factor was raised to reach ``input_size``.

Deviation: when the upscale factor was raised to reach ``input_size``, the official script resizes
the PADDED result by ``scale / factor`` and then crops it to the unpadded size of the larger,
pre-resize image: its output is the top-left corner of the resized padded image, padding included,
of ``min(int(h*factor), int(Hp*scale/factor))`` rows (a 12x13 LR at scale 4 with input_size 64 gives
64x69 instead of 48x52). We crop first and return exactly ``int(h*scale) x int(w*scale)``;
``official_finish=True`` reproduces the official image (tested against the official script in
tests/test_stablesr_parity.py). A pixel tile is clamped to the image (the official weights crash when only one side exceeds the tile), and
a side too short to reflect its padding is padded by replication (the official pad raises).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..errors import OptionsError
from ..imaging.colorfix import COLOR_FIXES, apply_color_fix
from ..models.operations import compute_device
from ..models.vae import sample_posterior
from ..sampling.noise import NoiseSource, SeededNoise
from ..sampling.tiling import blend_tiles, pixel_tile_plan
from ..text.conditioning import check_prompt_widths
from .cfw import DEFAULT_FIDELITY, CFWAutoencoder
from .model import StableSRModel
from .sampling import DEFAULT_STEPS, StableSRDenoiser, StableSRSampling, native_input_size, sample_stablesr, tiled_denoiser

PAD_MULTIPLE = 32


@dataclass
class StableSROptions:
    """Defaults: the official 512 model run (200 steps, w=0.5, AdaIN as in the paper)."""

    scale: float = 4.0
    steps: int = DEFAULT_STEPS  # 4 for StableSR-Turbo
    seed: int = 0
    fidelity: float = DEFAULT_FIDELITY
    color_fix: str = "adain"
    input_size: int = 512  # 768 for the 768-v model; the latent tile is input_size / 8
    tile_overlap: int = 32  # latent pixels
    latent_tile: int = 0  # latent pixels; 0: the official input_size / 8
    start: str = "lr_noised"
    guidance_scale: float = 1.0
    image_tile_px: int = 1280  # official --vqgantile_size
    image_tile_stride_px: int = 1000  # official --vqgantile_stride
    official_finish: bool = False  # True: the script's resize-then-crop (padding kept, see the module docstring)

    def validate(self) -> None:
        if self.scale <= 0:
            raise OptionsError(f"scale must be positive, got {self.scale}")
        if self.color_fix not in COLOR_FIXES:
            raise OptionsError(f"color_fix must be one of {COLOR_FIXES}, got {self.color_fix!r}")
        if self.input_size < 8 or self.input_size % 8:
            raise OptionsError(f"input_size must be a positive multiple of 8, got {self.input_size}")
        if self.latent_tile < 0:
            raise OptionsError(f"latent_tile must be >= 0 (0: input_size / 8), got {self.latent_tile}")
        if not 0 <= self.tile_overlap < self.tile:
            raise OptionsError(f"tile_overlap must be >= 0 and below the latent tile ({self.tile}), got {self.tile_overlap}")
        if not 0 < self.image_tile_stride_px <= self.image_tile_px:
            raise OptionsError("image_tile_stride_px must be positive and at most image_tile_px")
        if not 0.0 <= self.fidelity <= 1.0:
            raise OptionsError(f"fidelity (CFW w) must be in [0, 1], got {self.fidelity}")

    @property
    def tile(self) -> int:
        """The latent tile of the canvas sampler: ``latent_tile``, or the official ``input_size / 8``."""
        return self.latent_tile or self.input_size // 8

    @classmethod
    def for_model(cls, model: StableSRModel, **kwargs) -> "StableSROptions":
        """Options with the model's native ``input_size``: 512 (512 and Turbo models) or 768 (768-v,
        giving the official 96-latent tiles)."""
        kwargs.setdefault("input_size", native_input_size(model.config.prediction_type))
        return cls(**kwargs)

    def sampling(self, prediction_type: str) -> StableSRSampling:
        return StableSRSampling(steps=self.steps, prediction_type=prediction_type, start=self.start, guidance_scale=self.guidance_scale)


@dataclass
class StableSRModels:
    model: StableSRModel
    vae: CFWAutoencoder


@dataclass
class PreparedLR:
    image: torch.Tensor  # [B,3,Hp,Wp] upscaled LR in [-1,1], padded as the official script (see prepare_lr)
    upscaled_hw: tuple  # size before padding
    output_hw: tuple  # int(h * scale), int(w * scale)
    official_hw: tuple = ()  # the official script's resize of the PADDED image (when factor > scale), else ()


def official_padding(h: int, w: int) -> tuple[int, int]:
    """(bottom, right) padding of the official tile script: none when both sides are multiples of 32,
    else each side to the next multiple of 32 above it, so a side that already is one gets 32 more."""
    if h % PAD_MULTIPLE == 0 and w % PAD_MULTIPLE == 0:
        return 0, 0
    return (h // PAD_MULTIPLE + 1) * PAD_MULTIPLE - h, (w // PAD_MULTIPLE + 1) * PAD_MULTIPLE - w


def prepare_lr(lr: torch.Tensor, options: StableSROptions) -> PreparedLR:
    """``lr`` [B,3,h,w] in [0,1] -> the official upscaled, padded network input."""
    options.validate()
    h, w = lr.shape[-2:]
    factor = max(options.input_size / min(h, w), options.scale)
    size = (int(h * factor), int(w * factor))
    image = F.interpolate(lr.float() * 2 - 1, size=size, mode="bicubic").clamp(-1, 1)
    pad_h, pad_w = official_padding(*size)
    if pad_h or pad_w:
        mode = "reflect" if pad_h < size[0] and pad_w < size[1] else "replicate"
        image = F.pad(image, (0, pad_w, 0, pad_h), mode=mode)
    padded = image.shape[-2:]
    official_hw = tuple(int(n * options.scale / factor) for n in padded) if factor > options.scale else ()
    return PreparedLR(image, size, (int(h * options.scale), int(w * options.scale)), official_hw)


def encode_lr(vae: CFWAutoencoder, image: torch.Tensor, noise: NoiseSource) -> torch.Tensor:
    """The scaled LR latent (a posterior sample x 0.18215, float32) of ``image`` [B,3,H,W] in [-1,1]."""
    device, dtype = compute_device(vae), vae.dtype
    with torch.no_grad():
        moments = vae.encode_moments(image.to(device, dtype)).float()
    eps = noise.draw("posterior_eps", (moments.shape[0], moments.shape[1] // 2, *moments.shape[2:]), device=moments.device, dtype=moments.dtype)
    return sample_posterior(moments, eps) * vae.scaling_factor


def sample_latent(
    model: StableSRModel,
    lr_latent: torch.Tensor,
    context: torch.Tensor,
    options: StableSROptions,
    *,
    noise: NoiseSource,
    negative_context: Optional[torch.Tensor] = None,
    on_tile: Optional[Callable[[], None]] = None,
    on_step: Optional[Callable] = None,
) -> torch.Tensor:
    """The scaled x0 latent: the official canvas sampler, latent tiles of ``options.tile``
    (official: ``input_size / 8``) overlapping by ``options.tile_overlap``."""
    check_prompt_widths(context, negative_context, model.config.unet.cross_attention_dim)
    device = compute_device(model)
    denoise = tiled_denoiser(StableSRDenoiser(model), options.tile, options.tile_overlap, on_tile=on_tile)
    with torch.no_grad():
        return sample_stablesr(
            denoise=denoise, lr_latent=lr_latent.to(device), context=context.to(device),
            negative_context=None if negative_context is None else negative_context.to(device),
            options=options.sampling(model.config.prediction_type), noise=noise, on_step=on_step,
        )


def decode_cfw(vae: CFWAutoencoder, z0: torch.Tensor, image: torch.Tensor, fidelity: float, color_fix: str) -> torch.Tensor:
    """Scaled latent -> CFW-decoded, colour-fixed image in [-1,1] (unclamped); ``image`` is the
    upscaled LR in [-1,1] at 8x the latent size (its encoder features feed the fusion layers)."""
    device, dtype = compute_device(vae), vae.dtype
    with torch.no_grad():
        feats = vae.lr_features(image.to(device, dtype)) if fidelity != 0 else None
        decoded = vae.decode((z0 / vae.scaling_factor).to(device, dtype), feats, fidelity).float()
    return apply_color_fix(color_fix, decoded, image.to(decoded.device, decoded.dtype), in_place=True)


def upscale_tile(
    models: StableSRModels,
    image: torch.Tensor,
    context: torch.Tensor,
    options: StableSROptions,
    *,
    noise: Optional[NoiseSource] = None,
    negative_context: Optional[torch.Tensor] = None,
    on_tile: Optional[Callable[[], None]] = None,
    on_step: Optional[Callable] = None,
) -> torch.Tensor:
    """One official pass on ``image`` [B,3,H,W] in [-1,1] (H, W multiples of 8): colour-fixed, unclamped, [-1,1]."""
    noise = noise or SeededNoise(options.seed)
    lr_latent = encode_lr(models.vae, image, noise)
    z0 = sample_latent(models.model, lr_latent, context, options, noise=noise, negative_context=negative_context,
                       on_tile=on_tile, on_step=on_step)
    return decode_cfw(models.vae, z0, image, options.fidelity, options.color_fix)


def upscale(
    models: StableSRModels,
    lr: torch.Tensor,
    context: torch.Tensor,
    options: Optional[StableSROptions] = None,
    *,
    negative_context: Optional[torch.Tensor] = None,
    on_tile: Optional[Callable[[], None]] = None,
    on_step: Optional[Callable] = None,
) -> torch.Tensor:
    """[B,3,h,w] RGB in [0,1] -> [B,3,int(h*scale),int(w*scale)] in [0,1].

    ``context``: the text embedding [1 or B, 77, 1024]; the official prompt is empty ("").
    """
    options = options or StableSROptions()
    prepared = prepare_lr(lr, options)
    image = prepared.image
    _, _, height, width = image.shape
    run = lambda crop: upscale_tile(  # noqa: E731 - the official script reseeds for every pixel tile
        models, crop, context, options, noise=SeededNoise(options.seed), negative_context=negative_context, on_tile=on_tile, on_step=on_step
    )
    plan = pixel_tile_plan(height, width, options.image_tile_px, options.image_tile_stride_px)
    crop = lambda y0, x0, th, tw: run(image[..., y0 : y0 + th, x0 : x0 + tw])  # noqa: E731
    result = blend_tiles(crop, plan, device=image.device)
    return finish(result, prepared, official=options.official_finish)


def finish(result: torch.Tensor, prepared: PreparedLR, *, official: bool = False) -> torch.Tensor:
    """[-1,1] network output -> [0,1], padding removed, at exactly the output size. ``result`` is
    the caller's own blend: in float32 it is overwritten (the same bits, no full-size copies).

    ``official``: the script's order instead, resize the padded result then crop (see the module docstring)."""
    images = result.float().add_(1).div_(2).clamp_(0, 1)
    if official and prepared.official_hw:
        images = F.interpolate(images, size=prepared.official_hw, mode="bicubic").clamp(0, 1)
    images = images[..., : prepared.upscaled_hw[0], : prepared.upscaled_hw[1]]
    if official:
        return images
    if tuple(images.shape[-2:]) != tuple(prepared.output_hw):
        images = F.interpolate(images, size=prepared.output_hw, mode="bicubic").clamp(0, 1)
    return images
