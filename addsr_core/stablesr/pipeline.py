"""The StableSR family (the protocol of :class:`addsr_core.stages.Family`) on the shared stages,
following the official ``sr_val_ddpm_text_T_vqganfin_oldcanvas_tile.py``.

1. ``condition``: bicubic-upscale the LR (in [-1,1], no antialias) by ``max(min_size / short side,
   scale)``, clamp; unless both sides are multiples of 32, reflect-pad bottom/right to the next
   multiple of 32 ABOVE each side (the official rule: a side that already is a multiple gets 32 more).
2. ``sample``, by ``procedure``:
   - ``official`` (default): the padded image is cut into the official pixel tiles (1280 px, stride
     1000); each tile is upscaled on its own, the seed drawn afresh for each as the script reseeds:
     encode with the CFW VAE (a posterior sample x 0.18215 is the LR latent), then
     ``sample_stablesr`` with the canvas sampler's square latent tiles (the model's native 512 px,
     768 px for 768-v, overlapping by 32 latents). The result is one latent per pixel tile
     (:class:`TileLatents`).
   - ``whole_latent`` (faster on large images): one encode of the whole image, the canvas sampler
     over its whole latent; the result is that latent.
3. ``decode``: the same pixel tiles, each CFW-decoded with fidelity ``w`` (the encoder features of its
   crop of the upscaled LR) and colour-fixed against that crop, blended with Gaussian weights.
4. ``finish``: to [0,1], the padding cropped, resized to ``scale x`` the LR where the upscale factor
   was raised to reach ``min_size``.

Deviation: when the upscale factor was raised to reach ``min_size``, the official script resizes
the PADDED result by ``scale / factor`` and then crops it to the unpadded size of the larger,
pre-resize image: its output is the top-left corner of the resized padded image, padding included,
of ``min(int(h*factor), int(Hp*scale/factor))`` rows (a 12x13 LR at scale 4 with min_size 64 gives
64x69 instead of 48x52). We crop first and return exactly ``int(h*scale) x int(w*scale)``;
``official_finish=True`` reproduces the official image (tested against the official script in
tests/test_stablesr_parity.py). A pixel tile is clamped to the image (the official weights crash when
only one side exceeds the tile), and a side too short to reflect its padding is padded by
replication (the official pad raises).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Optional

import torch
import torch.nn.functional as F

from ..errors import OptionsError
from ..imaging.colorfix import apply_color_fix
from ..models.operations import compute_device
from ..models.vae import sample_posterior
from ..sampling.noise import NoiseSource, SeededNoise
from ..sampling.tiling import TilePlan, blend_tiles, pixel_tile_plan, tile_count
from ..stages import AUTO, DEFAULT_NEGATIVE, LRCondition, SharedOptions, tile_overlap_px
from ..text.conditioning import check_prompt_widths
from .cfw import DEFAULT_FIDELITY, CFWAutoencoder
from .model import StableSRModel
from .sampling import DEFAULT_STEPS, StableSRDenoiser, StableSRSampling, native_size, sample_stablesr

PAD_MULTIPLE = 32
PROCEDURES = ("official", "whole_latent")
START_POINTS = ("lr", "noise")  # the sampler's "lr_noised" (official) and "noise"
OFFICIAL_OVERLAP_PX = 32 * 8  # --tile_overlap 32 (latents)
OFFICIAL_PIXEL_TILE_PX, OFFICIAL_PIXEL_OVERLAP_PX = 1280, 280  # --vqgantile_size 1280, --vqgantile_stride 1000


@dataclass
class StableSROptions(SharedOptions):
    """Defaults: the official 512 model run (200 steps, w = 0.5, adain as in the paper), in its
    official procedure. ``min_size`` 0 is the model's native size, and so is an :data:`AUTO`
    diffusion tile off the GPU (on one, at most that): ``native_size`` (0: the model's, 512; 768 for
    the 768-v model, filled in by the family's ``resolve``)."""

    scale: float = 4.0
    steps: int = DEFAULT_STEPS  # 4 for StableSR-Turbo
    guidance_scale: float = 1.0
    negative_prompt: str = DEFAULT_NEGATIVE
    min_size: int = 0
    latent_tile_px: int = AUTO
    latent_overlap_px: int = OFFICIAL_OVERLAP_PX
    fidelity: float = DEFAULT_FIDELITY
    start_point: str = "lr"
    procedure: str = "official"
    pixel_tile_px: int = OFFICIAL_PIXEL_TILE_PX
    pixel_overlap_px: int = OFFICIAL_PIXEL_OVERLAP_PX
    official_finish: bool = False  # True: the script's resize-then-crop (padding kept, see the module docstring)
    native_size: int = 0

    TILE_KINDS: ClassVar[dict] = {"latent_tile_px": "latent", "pixel_tile_px": "pixel"}
    TILE_RULE: ClassVar[str] = "square"

    def check(self) -> None:
        super().check()
        if self.scale <= 0:
            raise OptionsError(f"scale must be positive, got {self.scale}")
        if self.min_size < 0 or self.min_size % 8:
            raise OptionsError(f"min_size must be a multiple of 8 (0: the model's size), got {self.min_size}")
        if self.procedure not in PROCEDURES:
            raise OptionsError(f"procedure must be one of {PROCEDURES}, got {self.procedure!r}")
        if self.start_point not in START_POINTS:
            raise OptionsError(f"start_point must be one of {START_POINTS}, got {self.start_point!r}")
        if self.pixel_tile_px < 64 or self.pixel_tile_px % 8:
            raise OptionsError(f"pixel_tile_px must be a multiple of 8 and >= 64, got {self.pixel_tile_px}")
        if not 0.0 <= self.fidelity <= 1.0:
            raise OptionsError(f"fidelity (CFW w) must be in [0, 1], got {self.fidelity}")
        self.sampling("epsilon").validate()

    def tile_defaults(self) -> dict:
        return {"latent_tile_px": self.model_size, "pixel_tile_px": OFFICIAL_PIXEL_TILE_PX}

    @property
    def model_size(self) -> int:
        """The model's native size (before ``resolve``: the 512 and Turbo models')."""
        return self.native_size or native_size("epsilon")

    def processing_hw(self, lr_hw) -> tuple:
        h, w = (int(v) for v in lr_hw)
        factor = max((self.min_size or self.model_size) / min(h, w), self.scale)
        uh, uw = int(h * factor), int(w * factor)
        pad_h, pad_w = official_padding(uh, uw)
        return uh + pad_h, uw + pad_w

    def sampling(self, prediction_type: str) -> StableSRSampling:
        return StableSRSampling(steps=self.steps, prediction_type=prediction_type,
                                start="lr_noised" if self.start_point == "lr" else self.start_point,
                                guidance_scale=self.guidance_scale)

    def pixel_plan(self, height: int, width: int) -> TilePlan:
        """The official pixel tiles over the padded image (``ImageSpliterTh``), stepping by the tile
        less its overlap (1280 - 280: the official stride 1000). The stride is whole latent pixels
        (the overlap rounded up to 8 px): a tile of a whole latent is that latent's crop."""
        overlap = tile_overlap_px(self.pixel_tile_px, self.pixel_overlap_px)
        return pixel_tile_plan(height, width, self.pixel_tile_px, (self.pixel_tile_px - overlap) // 8 * 8)

    @property
    def prompts(self):
        from ..stages import PromptOptions

        return PromptOptions(self.prompt, self.negative_prompt, use_tags=False, added_prompt="", plain=True)


@dataclass
class StableSRModels:
    model: StableSRModel
    vae: CFWAutoencoder
    text: Optional[Callable[[list], torch.Tensor]] = None  # prompts -> [B,77,1024]
    device: Optional[torch.device] = None  # where to compute; None: where the weights are

    def device_of(self, module: torch.nn.Module) -> torch.device:
        return self.device if self.device is not None else compute_device(module)

    def placement(self) -> tuple:
        return self.device_of(self.model), self.model.dtype


@dataclass(frozen=True)
class TileLatents:
    """The official procedure's result: one scaled latent [B,4,th/8,tw/8] per pixel tile of ``plan``."""

    plan: TilePlan
    latents: tuple

    def to(self, device) -> "TileLatents":
        return TileLatents(self.plan, tuple(z.to(device) for z in self.latents))


def official_padding(h: int, w: int) -> tuple[int, int]:
    """(bottom, right) padding of the official tile script: none when both sides are multiples of 32,
    else each side to the next multiple of 32 above it, so a side that already is one gets 32 more."""
    if h % PAD_MULTIPLE == 0 and w % PAD_MULTIPLE == 0:
        return 0, 0
    return (h // PAD_MULTIPLE + 1) * PAD_MULTIPLE - h, (w // PAD_MULTIPLE + 1) * PAD_MULTIPLE - w


def resolve(options: StableSROptions, models) -> StableSROptions:
    """``native_size`` from the model (512, or 768 for the 768-v model), and ``min_size`` 0 as it."""
    from dataclasses import replace

    native = options.native_size or native_size(models.model.config.prediction_type)
    return replace(options, native_size=native, min_size=options.min_size or native)


def prepare_lr(lr: torch.Tensor, options: StableSROptions) -> LRCondition:
    """``lr`` [B,3,h,w] in [0,1] -> the official upscaled, padded network input (``control_image``)."""
    options.validate()
    if not options.min_size:
        raise OptionsError("min_size is 0 (the model's size): resolve the options against the model first")
    h, w = lr.shape[-2:]
    factor = max(options.min_size / min(h, w), options.scale)
    size = (int(h * factor), int(w * factor))
    image = F.interpolate(lr.float() * 2 - 1, size=size, mode="bicubic").clamp(-1, 1)
    pad_h, pad_w = official_padding(*size)
    if pad_h or pad_w:
        mode = "reflect" if pad_h < size[0] and pad_w < size[1] else "replicate"
        image = F.pad(image, (0, pad_w, 0, pad_h), mode=mode)
    padded = image.shape[-2:]
    official_hw = tuple(int(n * options.scale / factor) for n in padded) if factor > options.scale else ()
    return LRCondition(image, None, None, (int(h), int(w)), options.scale, upscaled_hw=size, official_hw=official_hw)


def encode_moments(vae: CFWAutoencoder, image: torch.Tensor, device=None) -> torch.Tensor:
    """The CFW VAE's posterior moments (float32) of ``image`` [B,3,H,W] in [-1,1]."""
    device = device if device is not None else compute_device(vae)
    with torch.no_grad():
        return vae.encode_moments(image.to(device, vae.dtype)).float()


def lr_latent(moments: torch.Tensor, noise: NoiseSource, scaling_factor: float) -> torch.Tensor:
    """The scaled LR latent: a posterior sample of ``moments`` (the official first draw) x 0.18215."""
    eps = noise.draw("posterior_eps", (moments.shape[0], moments.shape[1] // 2, *moments.shape[2:]),
                     device=moments.device, dtype=moments.dtype)
    return sample_posterior(moments, eps) * scaling_factor


def encode_lr(vae: CFWAutoencoder, image: torch.Tensor, noise: NoiseSource) -> torch.Tensor:
    """The scaled LR latent (float32) of ``image`` [B,3,H,W] in [-1,1]."""
    return lr_latent(encode_moments(vae, image), noise, vae.scaling_factor)


def condition(models: StableSRModels, lr: torch.Tensor, options: StableSROptions) -> LRCondition:
    """The padded upscaled LR; for ``whole_latent`` also its whole-image CFW posterior."""
    cond = prepare_lr(lr, options)
    if options.procedure == "whole_latent":
        from dataclasses import replace

        cond = replace(cond, moments=encode_moments(models.vae, cond.control_image, models.device))
    return cond


def sample_latent(model: StableSRModel, lr_latent: torch.Tensor, context: torch.Tensor, options: StableSROptions, *,
                  noise: NoiseSource, negative_context: Optional[torch.Tensor] = None, device=None,
                  on_tile: Optional[Callable[[], None]] = None, on_step: Optional[Callable] = None,
                  trace=None) -> torch.Tensor:
    """The scaled x0 latent of the official canvas sampler: square latent tiles of ``options.tiling``."""
    check_prompt_widths(context, negative_context, model.config.unet.cross_attention_dim)
    device = device if device is not None else compute_device(model)
    denoise = options.tiling.wrap(StableSRDenoiser(model), lr_latent.shape[-2:], on_tile, scale=1)
    with torch.no_grad():
        return sample_stablesr(
            denoise=denoise, lr_latent=lr_latent.to(device), context=context.to(device),
            negative_context=None if negative_context is None else negative_context.to(device),
            options=options.sampling(model.config.prediction_type), noise=noise, on_step=on_step, trace=trace,
        )


def sample(models: StableSRModels, cond: LRCondition, prompt_embeds: torch.Tensor,
           negative_embeds: Optional[torch.Tensor], options: StableSROptions, *, noise: Optional[NoiseSource] = None,
           on_tile: Optional[Callable[[], None]] = None, on_step: Optional[Callable] = None, trace=None):
    """The scaled latent: :class:`TileLatents` (``official``: each pixel tile encoded and sampled on
    its own, the seed drawn afresh per tile) or one tensor (``whole_latent``). The batch runs as one
    (its items share the draws' tensors, as in the official scripts). ``noise`` (replayed draws)
    replaces the seed's (for every tile)."""
    options.tiling.validate()
    options.sampling(models.model.config.prediction_type).validate()
    sf = models.vae.scaling_factor
    run = dict(negative_context=negative_embeds, device=models.device, on_tile=on_tile, on_step=on_step, trace=trace)
    if options.procedure == "whole_latent":
        draws = noise or SeededNoise(options.seed)
        moments = cond.moments if cond.moments is not None else encode_moments(models.vae, cond.control_image, models.device)
        return sample_latent(models.model, lr_latent(moments, draws, sf), prompt_embeds, options, noise=draws, **run)
    image = cond.control_image
    plan = options.pixel_plan(*image.shape[-2:])
    latents = []
    for y0, x0 in plan.origins:
        draws = noise or SeededNoise(options.seed)  # the official script reseeds for every pixel tile
        crop = image[..., y0 : y0 + plan.tile_h, x0 : x0 + plan.tile_w]
        z = lr_latent(encode_moments(models.vae, crop, models.device), draws, sf)
        latents.append(sample_latent(models.model, z, prompt_embeds, options, noise=draws, **run))
    return TileLatents(plan, tuple(latents))


def decode_cfw(vae: CFWAutoencoder, z0: torch.Tensor, image: torch.Tensor, fidelity: float, color_fix: str,
               device=None) -> torch.Tensor:
    """Scaled latent -> CFW-decoded, colour-fixed image in [-1,1] (unclamped); ``image`` is the
    upscaled LR in [-1,1] at 8x the latent size (its encoder features feed the fusion layers)."""
    device = device if device is not None else compute_device(vae)
    dtype = vae.dtype
    with torch.no_grad():
        feats = vae.lr_features(image.to(device, dtype)) if fidelity != 0 else None
        decoded = vae.decode((z0 / vae.scaling_factor).to(device, dtype), feats, fidelity).float()
    return apply_color_fix(color_fix, decoded, image.to(decoded.device, decoded.dtype), in_place=True)


def decode_tiles(vae: CFWAutoencoder, latent, cond: LRCondition, options: StableSROptions, *, device=None,
                 plan: Optional[TilePlan] = None, on_tile: Optional[Callable[[], None]] = None) -> torch.Tensor:
    """The pixel tiles, each CFW-decoded and colour-fixed against its crop of the upscaled LR, blended:
    [-1,1] (unclamped). ``latent``: :class:`TileLatents` (each tile its own latent) or one scaled
    latent (cropped per tile; ``plan`` default: ``options.pixel_plan``)."""
    image = cond.control_image
    if isinstance(latent, TileLatents):
        plan, by_origin = latent.plan, dict(zip(latent.plan.origins, latent.latents))
    else:
        plan = plan or options.pixel_plan(*image.shape[-2:])
        by_origin = None

    def one(y0, x0, th, tw):
        crop = image[..., y0 : y0 + th, x0 : x0 + tw]
        if by_origin is not None:
            z = by_origin[(y0, x0)]
        else:
            z = latent[..., y0 // 8 : (y0 + th) // 8, x0 // 8 : (x0 + tw) // 8]
        return decode_cfw(vae, z, crop, options.fidelity, options.color_fix, device)

    return blend_tiles(one, plan, device=image.device, on_tile=on_tile)


def finish(result: torch.Tensor, cond: LRCondition, options: Optional[StableSROptions] = None) -> torch.Tensor:
    """[-1,1] network output -> [0,1], padding removed, at exactly the output size. ``result`` is
    the caller's own blend: in float32 it is overwritten (the same bits, no full-size copies).

    ``options.official_finish``: the script's order instead, resize the padded result then crop
    (see the module docstring)."""
    official = options is not None and options.official_finish
    images = result.float().add_(1).div_(2).clamp_(0, 1)
    if official and cond.official_hw:
        images = F.interpolate(images, size=cond.official_hw, mode="bicubic").clamp(0, 1)
    images = images[..., : cond.upscaled_hw[0], : cond.upscaled_hw[1]]
    if official:
        return images
    if tuple(images.shape[-2:]) != tuple(cond.output_size):
        images = F.interpolate(images, size=cond.output_size, mode="bicubic").clamp(0, 1)
    return images


def count_network_calls(options: StableSROptions, processing_hw, batch: int = 1) -> int:
    """Denoiser calls of ``sample`` for the padded upscaled LR ``processing_hw`` (a batch runs as one):
    canvas tiles x steps, per pixel tile."""
    height, width = processing_hw
    tiling = options.tiling
    if options.procedure == "whole_latent":
        return tiling.calls_per_step((height // 8, width // 8)) * options.steps
    plan = options.pixel_plan(height, width)
    return plan.count * tiling.calls_per_step((plan.tile_h // 8, plan.tile_w // 8)) * options.steps


def latent_preview(latent, cond: LRCondition) -> torch.Tensor:
    """One whole scaled latent for ``latent``: itself, or the pixel tiles' latents blended (what a
    preview or another node sees; the decode uses the tiles themselves)."""
    if not isinstance(latent, TileLatents):
        return latent
    plan = latent.plan
    latent_plan = TilePlan(plan.height // 8, plan.width // 8, plan.tile_h // 8, plan.tile_w // 8,
                           tuple((y0 // 8, x0 // 8) for y0, x0 in plan.origins))
    by_origin = dict(zip(latent_plan.origins, latent.latents))
    return blend_tiles(lambda y0, x0, th, tw: by_origin[(y0, x0)], latent_plan)


def decode(models: StableSRModels, latent, cond: LRCondition, options: StableSROptions) -> torch.Tensor:
    return decode_tiles(models.vae, latent, cond, options, device=models.device)
