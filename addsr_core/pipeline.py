"""The whole upscale, as stages that each take only their own options (shared by AddSR and SeeSR).

    condition_from_lr(models, lr, ConditionOptions)          -> LRCondition
    tag_images(models, lr) + build_prompts(tags, PromptOptions) -> prompts (text: embeddings)
    <family>.sample(models, cond, embeds, negative, sampling, LatentTiling, seed=, psr_decode=)
                                                             -> z0 (addsr_core.addsr.pipeline, .seesr.pipeline)
    decode(models, latent, DecodeOptions)                     -> image in [0,1]
    finish(image, cond, FinishOptions)                        -> colour fixed, exact output size

``upscale`` runs them in this order for the CLI and the all-in-one node; the modular ComfyUI nodes
call the same functions in the same order (Encode LR, Tagger + Prompt, Sampler, Tiled VAE Decode,
Finish), so both give the same image. :class:`UpscaleOptions` is the all-in-one's flat set of
knobs; its properties split it into the stage options.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from .errors import AddSRError, OptionsError
from .memory import AUTO
from .imaging.colorfix import COLOR_FIXES  # the one list of colour-fix names (nodes import it from here)
from .models import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from .addsr.sampler import AddSRSampling
from .sampling.denoisers import TiledDenoiser, counting
from .text.prompt import DEFAULT_ADDED_PROMPT
from .text.prompt import DEFAULT_NEGATIVE_PROMPT as DEFAULT_NEGATIVE

# How the decoded image becomes 8 bits. "float" (ours, default): colour fix in float, one rounding at
# save time. "official": test_addsr.py's route: the pipeline's 'pil' output rounds the decode to 8
# bits, the colour fix runs on that and the 8-bit LR, and ToPILImage truncates; it reproduces the
# official PNG. The two differ by up to 2 levels (ours ~0.4 levels brighter on average).
ROUNDINGS = ("float", "official")
# Default tiles, in output pixels, chosen from bench/bench_tiles.py and bench/bench_scaling.py
# (docs/performance.md): images up to 1024 px run untiled as the official code runs them; beyond, balanced
# diffusion tiles of at most 1024 px overlapping by 64 px (official SeeSR overlaps by 32) keep the
# seconds per output pixel flat, and 1024 px VAE tiles bound the decoder's memory by the tile.
DEFAULT_LATENT_TILE_PX = 1024
DEFAULT_LATENT_OVERLAP_PX = 64
DEFAULT_VAE_TILE_PX = 1024
# A tile option set to AUTO (0) is left to the device (resolve_tiles): these defaults on a CPU, on a GPU
# the largest tiles that fit its free memory (addsr_core.memory; docs/gpu.md).
TILE_FIELDS = ("latent_tile_px", "vae_encode_tile_px", "vae_decode_tile_px")


@dataclass
class AddSRModels:
    unet: UNet2DConditionModel
    controlnet: ControlNetModel
    vae: AutoencoderKL
    ram: torch.nn.Module  # has .represent(images01, resize) -> [B,145,512]
    tagger: Optional[object] = None  # has .tags(images01) -> list[str]
    text: Optional[Callable[[list], torch.Tensor]] = None  # prompts -> [B,77,1024]
    # Where to compute. None: where the weights are. A host that part-loads weights (ComfyUI under
    # --lowvram keeps some on the offload device and casts them per call) says where.
    device: Optional[torch.device] = None

    def device_of(self, module: torch.nn.Module) -> torch.device:
        from .models.operations import compute_device

        return self.device if self.device is not None else compute_device(module)


# ---------------------------------------------------------------------------------------------
# Stage options


@dataclass(frozen=True)
class ConditionOptions:
    """How the LR becomes the condition: the official upscale (``scale``, short side enlarged to
    ``process_size`` first when smaller) and the tiled VAE encode of the result."""

    scale: int = 4
    process_size: int = 512
    vae_tile_px: int = DEFAULT_VAE_TILE_PX
    vae_overlap_px: int = 64

    def validate(self) -> None:
        if self.scale < 1:
            raise OptionsError(f"scale must be >= 1, got {self.scale}")
        if self.process_size < 8:
            raise OptionsError(f"process_size must be >= 8, got {self.process_size}")


@dataclass(frozen=True)
class PromptOptions:
    """The official prompt ``f"{tags}, {prompt}," + added_prompt``; tags when ``use_tags``."""

    prompt: str = ""
    negative_prompt: str = DEFAULT_NEGATIVE
    use_tags: bool = True
    added_prompt: str = DEFAULT_ADDED_PROMPT


def tile_overlap_px(tile_px: int, overlap_px: int = DEFAULT_LATENT_OVERLAP_PX) -> int:
    """The diffusion tile overlap actually used for a ``tile_px`` tile (output pixels): the wanted
    ``overlap_px``, at most a third of the tile (a multiple of 8), so tiles step by at least two
    thirds of their size. The one rule of the AddSR Upscale and AddSR Sampler nodes and the CLI:
    the same tile gives the same overlap everywhere (the default 1024 tile: 64)."""
    return max(0, min(int(overlap_px), int(tile_px) // 3 // 8 * 8))


@dataclass(frozen=True)
class LatentTiling:
    """Diffusion tiles, in output pixels. By default a latent is tiled when a side exceeds the tile,
    and ``balanced`` (on) makes the tiles of each axis equal and as small as covers it with the
    count the tile needs (:func:`~addsr_core.sampling.tiling.balanced_tile`; off: fixed stride, last
    tile flush with the edge, as the official tiled branch lays them out). Images that fit one
    tile run untiled either way. ``area_rule`` is SeeSR's official rule: tile when the AREA
    exceeds tile², with square tiles ``min(tile, h, w)`` (``balanced`` does not apply)."""

    tile_px: int = DEFAULT_LATENT_TILE_PX  # 128 latents
    overlap_px: int = DEFAULT_LATENT_OVERLAP_PX  # see tile_overlap_px
    area_rule: bool = False
    balanced: bool = True

    def validate(self) -> None:
        if self.tile_px < 64 or self.tile_px % 8:
            raise OptionsError(f"latent_tile_px must be a multiple of 8 and >= 64, got {self.tile_px}")
        if not 0 <= self.overlap_px < self.tile_px:
            raise OptionsError("latent_overlap_px must be >= 0 and smaller than latent_tile_px")

    def plan(self, latent_hw) -> Optional[tuple]:
        """(tile, overlap) in latents when the latent needs tiles, else None; the tile is an int
        (``area_rule``: the official square clamp) or a (height, width) pair."""
        h, w = (int(v) for v in latent_hw)
        tile, overlap = self.tile_px // 8, self.overlap_px // 8
        needs = h * w > tile * tile if self.area_rule else max(h, w) > tile
        if not needs:
            return None
        if self.area_rule:
            return tile, overlap
        if self.balanced:
            from .sampling.tiling import balanced_tile

            return (balanced_tile(h, tile, overlap), balanced_tile(w, tile, overlap)), overlap
        return (tile, tile), overlap

    def calls_per_step(self, latent_hw) -> int:
        from .sampling.tiling import tile_count

        plan = self.plan(latent_hw)
        if plan is None:
            return 1
        return tile_count(*latent_hw, *plan)

    def wrap(self, denoise, latent_hw, on_tile=None):
        """``denoise`` run on these tiles (or once, counted by ``on_tile``)."""
        plan = self.plan(latent_hw)
        if plan is None:
            return counting(denoise, on_tile)
        return TiledDenoiser(denoise, *plan, on_tile=on_tile, square=self.area_rule)


@dataclass(frozen=True)
class DecodeOptions:
    """The tiled VAE decode (final image and PSR steps). The official decoder tile is 1792 px; 1024
    px bounds each full-resolution 128-channel fp32 feature map at ~0.55 GB (1.7 GB at 1792 px), so
    decoder memory stops growing with the image past one tile's area (larger images are tiled)."""

    tile_px: int = DEFAULT_VAE_TILE_PX
    overlap_px: int = 64


@dataclass(frozen=True)
class FinishOptions:
    """Colour fix against the upscaled LR, then the resize to LR size x scale (official order)."""

    color_fix: str = "adain"
    rounding: str = "float"  # see ROUNDINGS

    def validate(self) -> None:
        if self.rounding not in ROUNDINGS:
            raise OptionsError(f"rounding must be one of {ROUNDINGS}, got {self.rounding!r}")
        if self.color_fix not in COLOR_FIXES:
            raise OptionsError(f"color_fix must be one of {COLOR_FIXES}, got {self.color_fix!r}")


@dataclass
class UpscaleOptions:
    """Every knob of a whole upscale (the CLI's flags, the all-in-one node's widgets), split into
    the stage options by its properties. Defaults follow the official release (4 steps, PSR 0.4,
    adain), with tiles for big images."""

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
    latent_tile_px: int = DEFAULT_LATENT_TILE_PX
    latent_overlap_px: int = DEFAULT_LATENT_OVERLAP_PX
    vae_encode_tile_px: int = DEFAULT_VAE_TILE_PX
    vae_decode_tile_px: int = DEFAULT_VAE_TILE_PX
    vae_overlap_px: int = 64
    rounding: str = "float"
    added_prompt: str = DEFAULT_ADDED_PROMPT

    def validate(self) -> None:
        resolved = resolve_tiles(self, torch.device("cpu"))  # AUTO tiles are valid; the rest as given
        resolved.condition.validate()
        resolved.tiling.validate()
        self.finishing.validate()

    @property
    def condition(self) -> ConditionOptions:
        return ConditionOptions(self.scale, self.process_size, self.vae_encode_tile_px, self.vae_overlap_px)

    @property
    def prompts(self) -> PromptOptions:
        return PromptOptions(self.prompt, self.negative_prompt, self.use_tags, self.added_prompt)

    def sampling(self, **extra) -> AddSRSampling:
        return AddSRSampling.with_steps(
            self.steps, psr_weight=self.psr_weight, recompute_tokens=self.recompute_tokens,
            guidance_scale=self.guidance_scale, **extra,
        )

    @property
    def tiling(self) -> LatentTiling:
        return LatentTiling(self.latent_tile_px, self.latent_overlap_px)

    @property
    def decoding(self) -> DecodeOptions:
        return DecodeOptions(self.vae_decode_tile_px, self.vae_overlap_px)

    @property
    def finishing(self) -> FinishOptions:
        return FinishOptions(self.color_fix, self.rounding)


def resolve_tiles(options: UpscaleOptions, device, dtype: torch.dtype = torch.float32, lr_hw=None,
                  free_bytes: Optional[int] = None) -> UpscaleOptions:
    """``options`` with its :data:`AUTO` tiles chosen for ``device`` (explicit tiles are kept): on a
    CUDA device the largest that fit its free memory (``free_bytes``, default: what the device reports
    now, networks loaded) for an ``lr_hw`` LR computed in ``dtype`` (:func:`addsr_core.memory.gpu_tiles`;
    the diffusion tile at most the options' own default); elsewhere the options' own defaults, the
    measured CPU tiles. An AUTO diffusion tile takes the overlap rule of :func:`tile_overlap_px`."""
    from .memory import device_free_bytes, gpu_tiles

    auto = [name for name in TILE_FIELDS if getattr(options, name) == AUTO]
    if not auto:
        return options
    defaults = type(options)()
    free = free_bytes if free_bytes is not None else device_free_bytes(torch.device(device))
    if free is None or lr_hw is None:
        chosen = {name: getattr(defaults, name) for name in TILE_FIELDS}
    else:
        from .imaging.prepare import condition_sizes

        h, w = condition_sizes(lr_hw, options.scale, options.process_size)[-1]
        chosen = dataclasses.asdict(gpu_tiles(free, dtype, h * w, max_latent_tile_px=defaults.latent_tile_px,
                                              cfg_batch=2 if options.guidance_scale > 1 else 1))
    changes = {name: chosen[name] for name in auto}
    if "latent_tile_px" in changes:
        changes["latent_overlap_px"] = tile_overlap_px(changes["latent_tile_px"], options.latent_overlap_px)
    return dataclasses.replace(options, **changes)


@dataclass
class LRCondition:
    """What the sampler needs about the LR image (ComfyUI's ``ADDSR_COND`` carries one)."""

    # [B,3,H,W] upscaled LR, H and W multiples of 8: uint8 (0-255, the official 8-bit image, a
    # quarter of the float's memory) or float in [0,1]; ``unit_float`` reads either
    control_image: torch.Tensor
    lr_tokens: torch.Tensor  # [B,145,512] RAM tokens of the original LR
    moments: torch.Tensor  # [B,8,H/8,W/8] VAE posterior of the control image
    lr_size: tuple  # (h, w) of the original LR
    scale: int

    @property
    def output_size(self) -> tuple:
        return self.lr_size[0] * self.scale, self.lr_size[1] * self.scale

    @property
    def batch(self) -> int:
        return self.control_image.shape[0]

    def item(self, i: int) -> "LRCondition":
        return dataclasses.replace(self, control_image=self.control_image[i : i + 1],
                                   lr_tokens=self.lr_tokens[i : i + 1], moments=self.moments[i : i + 1])


# ---------------------------------------------------------------------------------------------
# Stages


def vae_encode(vae: AutoencoderKL, image_pm1: torch.Tensor, tile_px: int, overlap_px: int) -> torch.Tensor:
    from .imaging.tiled_vae import tiled_encode

    return tiled_encode(vae, image_pm1, tile_px, overlap_px)


def vae_decode(vae: AutoencoderKL, latent: torch.Tensor, tile_px: int, overlap_px: int) -> torch.Tensor:
    """The raw decoder output in float32 (tiled: the blend's own buffer, no full-size copy)."""
    from .imaging.tiled_vae import tiled_decode

    return tiled_decode(vae, latent, tile_px, overlap_px, out_dtype=torch.float32)


def condition_from_lr(models: AddSRModels, lr: torch.Tensor, options: ConditionOptions) -> LRCondition:
    """Upscale the LR as the official script does, then its RAM tokens and VAE posterior.

    ``lr`` is [B,3,h,w] RGB in [0,1] (alpha already split off).
    """
    from .imaging.prepare import official_condition_uint8, unit_float

    options.validate()
    vae = models.vae
    device, dtype = models.device_of(vae), next(vae.parameters()).dtype
    control = official_condition_uint8(lr, options.scale, options.process_size).to(device)
    lr_tokens = models.ram.represent(lr.to(device), resize=LR_TOKEN_RESIZE)
    with torch.no_grad():  # the [-1, 1] image written into its own float copy: the same bits, one copy
        image_pm1 = unit_float(control).mul_(2).sub_(1).to(dtype)
        moments = vae_encode(vae, image_pm1, options.vae_tile_px, options.vae_overlap_px)
    return LRCondition(control, lr_tokens, moments.float(), tuple(lr.shape[-2:]), options.scale)


LR_TOKEN_RESIZE = "bilinear"  # the official step 1: the LR's RAM tokens (and its tags) from a bilinear 384


def tag_images(models: AddSRModels, lr: torch.Tensor, cond: Optional[LRCondition] = None) -> list[str]:
    """RAM tags of each LR image (``models.tagger``), one comma-separated string per image.

    With ``cond`` (the condition of this ``lr``), a tagger over the same RAM reads the tags off the
    LR tokens the condition already holds: the same numbers as a second Swin pass, without it."""
    tagger = models.tagger
    if tagger is None:
        raise AddSRError("tagging needs a tagger (RAM loaded with its tag list)")
    with torch.no_grad():
        if cond is not None and getattr(tagger, "model", None) is models.ram and \
                getattr(tagger, "resize", None) == LR_TOKEN_RESIZE:
            return list(tagger.tags_from_tokens(cond.lr_tokens))
        return list(tagger.tags(lr.to(models.device_of(models.ram))))


def build_prompts(tags: Optional[Sequence[str]], options: PromptOptions, batch: int = 1) -> list[str]:
    """One official prompt per image (``tags`` one string per image, or None for no tags)."""
    from .text.prompt import build_prompt

    tags = list(tags) if tags else [""] * batch
    return [build_prompt(tag, options.prompt, added_prompt=options.added_prompt) for tag in tags]


def upscale_calls(options: UpscaleOptions, lr_hw, batch: int = 1, method=None) -> int:
    """Network calls a whole :func:`upscale` of a ``lr_hw`` LR makes (for progress bars)."""
    from .imaging.prepare import condition_sizes

    h, w = condition_sizes(lr_hw, options.scale, options.process_size)[-1]
    method = method or _addsr()
    return method.count_network_calls(options.sampling(), options.tiling, (h // 8, w // 8), batch)


def per_image(cond: LRCondition, prompt_embeds: torch.Tensor, negative_embeds: Optional[torch.Tensor], device):
    """The samplers' batch loop: each image's condition, prompt and negative (None stays None) on
    ``device`` in float32, the control image as it is held (uint8 stays uint8: the denoisers read
    it per tile); one sampled at a time: the same draws alone or batched, memory of one."""
    positives = batch_rows(prompt_embeds, cond.batch, "prompt_embeds")
    negatives = batch_rows(negative_embeds, cond.batch, "negative_embeds")
    for i in range(cond.batch):
        one = cond.item(i)
        control = one.control_image.to(device)
        one = dataclasses.replace(one, control_image=control if control.dtype == torch.uint8 else control.float(),
                                  lr_tokens=one.lr_tokens.to(device).float(), moments=one.moments.to(device).float())
        yield one, positives[i].to(device).float(), None if negatives[i] is None else negatives[i].to(device).float()


def batch_rows(embeds: Optional[torch.Tensor], batch: int, what: str) -> list:
    """Per-image rows of a [1 or B, ...] tensor (None stays None)."""
    if embeds is None:
        return [None] * batch
    if embeds.shape[0] not in (1, batch):
        raise OptionsError(f"{what} has {embeds.shape[0]} rows; give 1 (shared) or one per image ({batch})")
    return [embeds if embeds.shape[0] == 1 else embeds[i : i + 1] for i in range(batch)]


def decode(models: AddSRModels, latent: torch.Tensor, options: DecodeOptions = DecodeOptions()) -> torch.Tensor:
    """Unscaled latent (``z0 / scaling_factor``, ComfyUI's LATENT) -> image in [0,1], tiled when large."""
    vae = models.vae
    with torch.no_grad():
        raw = vae_decode(vae, latent.to(models.device_of(vae), next(vae.parameters()).dtype),
                         options.tile_px, options.overlap_px)
    # raw is this call's own float32 tensor: the same operations in place, no full-size copy
    return raw.div_(2).add_(0.5).clamp_(0, 1)


def unscaled(vae: AutoencoderKL, z0: torch.Tensor) -> torch.Tensor:
    """The sampler's scaled z0 as the VAE's (and ComfyUI's LATENT) unscaled latent."""
    return z0 / vae.scaling_factor


def finish(images: torch.Tensor, cond: LRCondition, options: FinishOptions = FinishOptions(), *,
           in_place: bool = False) -> torch.Tensor:
    """Colour fix against the upscaled LR, then resize to exactly LR size x scale (official order).
    ``in_place``: ``images`` are the caller's own to overwrite (the same bits, no full-size copy)."""
    from .imaging.colorfix import apply_color_fix
    from .imaging.prepare import resize_to, unit_float

    options.validate()
    # One memory layout: the reductions of the colour fix round differently on NHWC (a decode's
    # output) and NCHW (an IMAGE converted back) tensors, and the node graph must match upscale().
    contiguous = images.contiguous()
    owned = in_place or contiguous is not images
    images = contiguous
    # contiguous before the float conversion: one float copy of the source, not two
    source = unit_float(cond.control_image.to(images.device).contiguous(), images.dtype)
    if source.shape[0] not in (1, images.shape[0]):
        raise OptionsError(f"{images.shape[0]} images but the condition has {source.shape[0]}")
    official = options.rounding == "official"
    if official:  # the 8-bit images test_addsr.py hands to the colour fix
        images, source, owned = to_8bit_grid(images, torch.round), to_8bit_grid(source, torch.round), True
    fixed = apply_color_fix(options.color_fix, images, source.expand_as(images), in_place=owned)
    images = fixed.clamp_(0, 1) if owned or fixed is not images else fixed.clamp(0, 1)  # never the caller's tensor
    if official and options.color_fix != "none":
        images = to_8bit_grid(images, torch.floor)  # ToPILImage truncates
    if tuple(images.shape[-2:]) != cond.output_size:
        images = resize_to(images, cond.output_size)
    return images


def to_8bit_grid(images: torch.Tensor, quantize) -> torch.Tensor:
    """[0,1] float -> the nearest (round) or lower (floor) of the 256 8-bit levels, still as float."""
    return quantize(images.clamp(0, 1) * 255) / 255


def run_sampling(models: AddSRModels, cond: LRCondition, prompt_embeds, negative_embeds, options: UpscaleOptions, *,
                 method=None, **hooks) -> torch.Tensor:
    """``method.sample`` (this module's by default) with the sampling, tiling, seed and PSR decode of
    ``options``; ``hooks``: noise, on_tile, on_step, trace."""
    method = method or _addsr()
    return method.sample(models, cond, prompt_embeds, negative_embeds, options.sampling(), options.tiling,
                         seed=options.seed, psr_decode=options.decoding, **hooks)


def _addsr():
    from .addsr import pipeline as addsr_pipeline  # the family modules import these shared stages

    return addsr_pipeline


def upscale(models: AddSRModels, lr: torch.Tensor, options: UpscaleOptions, *, method=None, on_tile=None,
            on_step=None) -> torch.Tensor:
    """[B,3,h,w] RGB in [0,1] -> [B,3,h*scale,w*scale] in [0,1]: every stage, in order.

    ``method``: the family module whose ``sample`` runs (:mod:`addsr_core.addsr.pipeline` by
    default; :mod:`addsr_core.seesr.pipeline` for SeeSR). :data:`AUTO` tiles are chosen here
    (:func:`resolve_tiles`), once the networks are on their device."""
    method = method or _addsr()
    if models.text is None:
        raise AddSRError("the standalone pipeline needs a text encoder (models.text) to turn prompts into embeddings")
    options.validate()
    options = resolve_tiles(options, models.device_of(models.unet), next(models.unet.parameters()).dtype, lr.shape[-2:])
    prompts = options.prompts
    cond = condition_from_lr(models, lr, options.condition)
    tags = tag_images(models, lr, cond) if (prompts.use_tags and models.tagger is not None) else None
    prompt_embeds = models.text(build_prompts(tags, prompts, lr.shape[0]))
    negative = models.text([prompts.negative_prompt]) if options.guidance_scale > 1 else None
    z0 = run_sampling(models, cond, prompt_embeds, negative, options, method=method, on_tile=on_tile, on_step=on_step)
    return finish(decode(models, unscaled(models.vae, z0), options.decoding), cond, options.finishing, in_place=True)
