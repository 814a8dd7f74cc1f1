"""The stages every family's upscale is made of, and the one conditioning bundle between them.

    condition     LR -> :class:`LRCondition` (the upscaled LR, its RAM tokens and VAE posterior)
    prompts       tags + :class:`PromptOptions` -> prompt strings (the text encoder makes the embeddings)
    <sample>      the family's own stage: ``sample(models, cond, prompt_embeds, negative_embeds, options,
                  *, noise, on_tile, on_step, trace) -> latent`` (addsr/, seesr/, stablesr/ pipeline.py)
    decode        latent -> image
    finish        colour fix, exact output size

A family is a module with the stage functions of :class:`Family` and an options class (a
:class:`SharedOptions`). AddSR and SeeSR use the ControlNet stages here (:func:`condition_from_lr`,
:func:`decode`, :func:`finish`) and differ only in ``sample``; StableSR brings its own condition,
decode and finish (the official padded resize, the CFW decode in pixel tiles) built from the same
pieces (:class:`LatentTiling`, the blend, the colour fix, the prompt). The orchestrator,
:mod:`addsr_core.pipeline`, picks the family from the options' type. This module imports no family.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, ClassVar, Optional, Protocol, Sequence

import torch

from .errors import AddSRError, OptionsError
from .imaging.colorfix import COLOR_FIXES  # the one list of colour-fix names (nodes import it from here)
from .imaging.tiled_vae import DEFAULT_VAE_OVERLAP_PX, DEFAULT_VAE_TILE_PX
from .memory import AUTO
from .models import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from .models.operations import compute_device
from .sampling.denoisers import TiledDenoiser, counting, match_batch
from .text.prompt import DEFAULT_ADDED_PROMPT
from .text.prompt import DEFAULT_NEGATIVE_PROMPT as DEFAULT_NEGATIVE

__all__ = ["AUTO", "COLOR_FIXES", "DEFAULT_NEGATIVE", "DEFAULT_VAE_TILE_PX", "DEFAULT_VAE_OVERLAP_PX"]

# How the decoded image becomes 8 bits. "float" (ours, default): colour fix in float, one rounding at
# save time. "official": test_addsr.py's route: the pipeline's 'pil' output rounds the decode to 8
# bits, the colour fix runs on that and the 8-bit LR, and ToPILImage truncates; it reproduces the
# official PNG. The two differ by up to 2 levels (ours ~0.4 levels brighter on average).
ROUNDINGS = ("float", "official")
# Default diffusion tiles, in output pixels, chosen from bench/bench_tiles.py and bench/bench_scaling.py
# (docs/performance.md): images up to 1024 px run untiled as the official code runs them; beyond, balanced
# diffusion tiles of at most 1024 px overlapping by 64 px (official SeeSR overlaps by 32) keep the
# seconds per output pixel flat.
DEFAULT_LATENT_TILE_PX = 1024
DEFAULT_LATENT_OVERLAP_PX = 64
LR_TOKEN_RESIZE = "bilinear"  # the official step 1: the LR's RAM tokens (and its tags) from a bilinear 384


def tile_overlap_px(tile_px: int, overlap_px: int) -> int:
    """THE overlap rule of every tile (diffusion, VAE, StableSR's pixel tiles), in pixels, on every
    node, flag and option: the wanted ``overlap_px``, at most half the tile, a multiple of 8 (a latent
    pixel), so a tile always steps forward. Half is what the official StableSR canvas uses (32 of 64
    latents); AddSR's 64 of 1024 and SeeSR's 32 of 768 are well inside it."""
    return max(0, min(int(overlap_px), int(tile_px) // 2 // 8 * 8))


@dataclass
class AddSRModels:
    """The networks of the ControlNet families (AddSR, SeeSR)."""

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
        return self.device if self.device is not None else compute_device(module)

    def placement(self) -> tuple:
        """(device, dtype) of the diffusion network: where the tiles are computed, and in what."""
        return self.device_of(self.unet), next(self.unet.parameters()).dtype


# ---------------------------------------------------------------------------------------------
# Stage options


@dataclass(frozen=True)
class ConditionOptions:
    """How the LR becomes the condition: the official upscale (``scale``, the short side enlarged to
    ``min_size`` first when smaller) and the tiled VAE encode of the result."""

    scale: int = 4
    min_size: int = 512
    vae_tile_px: int = DEFAULT_VAE_TILE_PX
    vae_overlap_px: int = DEFAULT_VAE_OVERLAP_PX

    def validate(self) -> None:
        if self.scale < 1:
            raise OptionsError(f"scale must be >= 1, got {self.scale}")
        if self.min_size < 8:
            raise OptionsError(f"min_size must be >= 8, got {self.min_size}")


@dataclass(frozen=True)
class PromptOptions:
    """The prompt: AddSR's official ``f"{tags}, {prompt}," + added_prompt`` (tags when ``use_tags``),
    or with ``plain`` the prompt as written (StableSR: official empty)."""

    prompt: str = ""
    negative_prompt: str = DEFAULT_NEGATIVE
    use_tags: bool = True
    added_prompt: str = DEFAULT_ADDED_PROMPT
    plain: bool = False


TILE_RULES = ("balanced", "stride", "area", "square")


@dataclass(frozen=True)
class LatentTiling:
    """Diffusion tiles, in output pixels, and when and how a latent is cut (``rule``):

    - ``balanced`` (ours, default): tiled when a side exceeds the tile; the tiles of each axis equal
      and as small as covers it with the count the tile needs (:func:`~addsr_core.sampling.tiling.balanced_tile`);
    - ``stride``: tiled when a side exceeds the tile; fixed stride, the last tile flush with the edge
      (the official AddSR tiled branch's layout), clamped per axis;
    - ``area``: SeeSR's official rule: tiled when the AREA exceeds tile², square tiles ``min(tile, h, w)``;
    - ``square``: StableSR's official canvas: always the square tile ``min(tile, h, w)`` (a non-square
      latent smaller than the tile is still covered by several square tiles).

    Images that fit one tile run untiled under the first three rules."""

    tile_px: int = DEFAULT_LATENT_TILE_PX  # 128 latents
    overlap_px: int = DEFAULT_LATENT_OVERLAP_PX  # see tile_overlap_px
    rule: str = "balanced"

    def validate(self) -> None:
        if self.tile_px < 64 or self.tile_px % 8:
            raise OptionsError(f"latent_tile_px must be a multiple of 8 and >= 64, got {self.tile_px}")
        if not 0 <= self.overlap_px < self.tile_px:
            raise OptionsError("latent_overlap_px must be >= 0 and smaller than latent_tile_px")
        if self.rule not in TILE_RULES:
            raise OptionsError(f"tile rule must be one of {TILE_RULES}, got {self.rule!r}")

    @property
    def square(self) -> bool:
        return self.rule in ("area", "square")

    def plan(self, latent_hw) -> Optional[tuple]:
        """(tile, overlap) in latents when the latent needs tiles, else None; the tile is an int
        (the official square clamp) or a (height, width) pair."""
        h, w = (int(v) for v in latent_hw)
        tile, overlap = self.tile_px // 8, self.overlap_px // 8
        if self.rule == "square":
            return tile, overlap
        needs = h * w > tile * tile if self.rule == "area" else max(h, w) > tile
        if not needs:
            return None
        if self.rule == "area":
            return tile, overlap
        if self.rule == "balanced":
            from .sampling.tiling import balanced_tile

            return (balanced_tile(h, tile, overlap), balanced_tile(w, tile, overlap)), overlap
        return (tile, tile), overlap

    def calls_per_step(self, latent_hw) -> int:
        from .sampling.tiling import tile_count

        plan = self.plan(latent_hw)
        if plan is None:
            return 1
        return tile_count(*latent_hw, *plan)

    def wrap(self, denoise, latent_hw, on_tile=None, *, scale: int = 8):
        """``denoise`` run on these tiles (or once, counted by ``on_tile``); its spatial condition is
        ``scale`` x the latent (8: a control image; 1: StableSR's LR latent)."""
        plan = self.plan(latent_hw)
        if plan is None:
            return counting(denoise, on_tile)
        return TiledDenoiser(denoise, *plan, scale=scale, on_tile=on_tile, square=self.square)


@dataclass(frozen=True)
class DecodeOptions:
    """The tiled VAE decode (the final image and AddSR's PSR steps), memory bounded by the tile."""

    tile_px: int = DEFAULT_VAE_TILE_PX
    overlap_px: int = DEFAULT_VAE_OVERLAP_PX


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


# ---------------------------------------------------------------------------------------------
# A whole upscale's options: one shared base, a class per family


@dataclass
class SharedOptions:
    """What every family's whole upscale has (the CLI's flags, the all-in-one node's widgets). Each
    family's options class adds only its own fields and its official defaults; the orchestrator
    picks the family from the class. Tile fields set to :data:`AUTO` are left to the device
    (:func:`resolve_tiles`)."""

    scale: int = 4
    steps: int = 4
    seed: int = 0
    guidance_scale: float = 0.0
    prompt: str = ""
    negative_prompt: str = DEFAULT_NEGATIVE
    color_fix: str = "adain"
    min_size: int = 512  # the short side small inputs are first enlarged to
    latent_tile_px: int = DEFAULT_LATENT_TILE_PX
    latent_overlap_px: int = DEFAULT_LATENT_OVERLAP_PX

    # field -> what one tile of it costs (memory.gpu_tiles): "latent", "vae_encode", "vae_decode", "pixel"
    TILE_KINDS: ClassVar[dict] = {"latent_tile_px": "latent"}
    TILE_RULE: ClassVar[str] = "balanced"

    def validate(self) -> None:
        resolve_tiles(self, torch.device("cpu")).check()  # AUTO tiles are valid; the rest as given

    def check(self) -> None:
        """:meth:`validate` on options whose tiles are resolved (subclasses add their own checks)."""
        if self.color_fix not in COLOR_FIXES:
            raise OptionsError(f"color_fix must be one of {COLOR_FIXES}, got {self.color_fix!r}")
        self.tiling.validate()

    def tile_defaults(self) -> dict:
        """The measured CPU tiles an :data:`AUTO` tile field becomes off the GPU (and the most a GPU's
        diffusion tile takes)."""
        defaults = type(self)()
        return {name: getattr(defaults, name) for name in self.TILE_KINDS}

    def processing_hw(self, lr_hw) -> tuple:
        """The size the networks see for an ``lr_hw`` LR (the upscaled, maybe enlarged, LR)."""
        from .imaging.prepare import condition_sizes

        return condition_sizes(lr_hw, self.scale, self.min_size)[-1]

    @property
    def tiling(self) -> LatentTiling:
        tile = self.latent_tile_px
        return LatentTiling(tile, tile_overlap_px(tile, self.latent_overlap_px), rule=self.TILE_RULE)


@dataclass
class ControlNetOptions(SharedOptions):
    """What AddSR and SeeSR share besides: the RAM-tag prompt, the SD VAE's tiles and the rounding."""

    use_tags: bool = True
    added_prompt: str = DEFAULT_ADDED_PROMPT
    vae_encode_tile_px: int = DEFAULT_VAE_TILE_PX
    vae_decode_tile_px: int = DEFAULT_VAE_TILE_PX
    vae_overlap_px: int = DEFAULT_VAE_OVERLAP_PX
    rounding: str = "float"

    TILE_KINDS: ClassVar[dict] = {"latent_tile_px": "latent", "vae_encode_tile_px": "vae_encode",
                                  "vae_decode_tile_px": "vae_decode"}

    def check(self) -> None:
        super().check()
        self.condition.validate()
        self.finishing.validate()

    @property
    def condition(self) -> ConditionOptions:
        return ConditionOptions(self.scale, self.min_size, self.vae_encode_tile_px,
                                tile_overlap_px(self.vae_encode_tile_px, self.vae_overlap_px))

    @property
    def prompts(self) -> PromptOptions:
        return PromptOptions(self.prompt, self.negative_prompt, self.use_tags, self.added_prompt)

    @property
    def decoding(self) -> DecodeOptions:
        return DecodeOptions(self.vae_decode_tile_px, tile_overlap_px(self.vae_decode_tile_px, self.vae_overlap_px))

    @property
    def finishing(self) -> FinishOptions:
        return FinishOptions(self.color_fix, self.rounding)


def resolve_tiles(options: SharedOptions, device, dtype: torch.dtype = torch.float32, lr_hw=None,
                  free_bytes: Optional[int] = None, *, processing_hw=None) -> SharedOptions:
    """``options`` with its :data:`AUTO` tiles chosen for ``device`` (explicit tiles are kept): on a
    CUDA device the largest that fit its free memory (``free_bytes``, default: what the device reports
    now, networks loaded) for an ``lr_hw`` LR computed in ``dtype`` (:func:`addsr_core.memory.gpu_tiles`;
    the diffusion tile and StableSR's pixel tile at most their CPU defaults); elsewhere the measured CPU
    defaults (:meth:`SharedOptions.tile_defaults`). ``processing_hw``: the upscaled LR's size where it
    is known (a node holding the condition), else ``options.processing_hw(lr_hw)``. Overlaps follow
    :func:`tile_overlap_px` wherever they are used."""
    from .memory import device_free_bytes, gpu_tiles

    auto = [name for name in options.TILE_KINDS if getattr(options, name) == AUTO]
    if not auto:
        return options
    defaults = options.tile_defaults()
    free = free_bytes if free_bytes is not None else device_free_bytes(torch.device(device))
    if processing_hw is None and lr_hw is not None:
        processing_hw = options.processing_hw(lr_hw)
    if free is None or processing_hw is None:
        chosen = defaults
    else:
        h, w = processing_hw
        gpu = gpu_tiles(free, dtype, h * w, max_latent_tile_px=defaults["latent_tile_px"],
                        cfg_batch=2 if options.guidance_scale > 1 else 1)
        by_kind = {"latent": gpu.latent_tile_px, "vae_encode": gpu.vae_encode_tile_px, "vae_decode": gpu.vae_decode_tile_px}
        by_kind["pixel"] = min(gpu.vae_encode_tile_px, gpu.vae_decode_tile_px)
        chosen = {name: min(by_kind[kind], defaults[name]) if kind == "pixel" else by_kind[kind]
                  for name, kind in options.TILE_KINDS.items()}
    return dataclasses.replace(options, **{name: chosen[name] for name in auto})


# ---------------------------------------------------------------------------------------------
# The conditioning bundle


@dataclass
class LRCondition:
    """What a family's sampler needs about the LR image (ComfyUI's ``ADDSR_COND`` carries one).

    ``control_image`` is the upscaled LR as the family's networks read it: AddSR and SeeSR, [B,3,H,W]
    with H and W multiples of 8, uint8 (0-255, the official 8-bit image, a quarter of the float's
    memory) or float in [0,1] (``unit_float`` reads either); StableSR, float in [-1,1], padded as its
    official script pads it (``upscaled_hw`` is the size before the padding)."""

    control_image: torch.Tensor
    lr_tokens: Optional[torch.Tensor]  # [B,145,512] RAM tokens of the original LR (AddSR, SeeSR)
    moments: Optional[torch.Tensor]  # [B,8,H/8,W/8] VAE posterior of the control image, where computed whole
    lr_size: tuple  # (h, w) of the original LR
    scale: float
    upscaled_hw: tuple = ()  # StableSR: the upscaled LR before its padding
    official_hw: tuple = ()  # StableSR: the official script's resize of the padded result (see its finish)

    @property
    def output_size(self) -> tuple:
        return int(self.lr_size[0] * self.scale), int(self.lr_size[1] * self.scale)

    @property
    def batch(self) -> int:
        return self.control_image.shape[0]

    @property
    def latent_hw(self) -> tuple:
        return self.control_image.shape[-2] // 8, self.control_image.shape[-1] // 8

    def item(self, i: int) -> "LRCondition":
        rows = lambda x: None if x is None else x[i : i + 1]  # noqa: E731
        return dataclasses.replace(self, control_image=self.control_image[i : i + 1], lr_tokens=rows(self.lr_tokens),
                                   moments=rows(self.moments))


# ---------------------------------------------------------------------------------------------
# Stages


def vae_encode(vae: AutoencoderKL, image_pm1: torch.Tensor, tile_px: int, overlap_px: int) -> torch.Tensor:
    from .imaging.tiled_vae import tiled_encode

    return tiled_encode(vae, image_pm1, tile_px, overlap_px)


def vae_decode(vae: AutoencoderKL, latent: torch.Tensor, tile_px: int, overlap_px: int) -> torch.Tensor:
    """The raw decoder output in float32 (tiled: the blend's own buffer, no full-size copy)."""
    from .imaging.tiled_vae import tiled_decode

    return tiled_decode(vae, latent, tile_px, overlap_px, out_dtype=torch.float32)


def condition_from_lr(vae: AutoencoderKL, ram, lr: torch.Tensor, options: ConditionOptions, *,
                      device: Optional[torch.device] = None) -> LRCondition:
    """Upscale the LR as the official script does, then its RAM tokens and VAE posterior (on ``device``,
    default: the VAE's).

    ``lr`` is [B,3,h,w] RGB in [0,1] (alpha already split off).
    """
    from .imaging.prepare import official_condition_uint8, unit_float

    options.validate()
    device = device if device is not None else compute_device(vae)
    dtype = next(vae.parameters()).dtype
    control = official_condition_uint8(lr, options.scale, options.min_size).to(device)
    lr_tokens = ram.represent(lr.to(device), resize=LR_TOKEN_RESIZE)
    with torch.no_grad():  # the [-1, 1] image written into its own float copy: the same bits, one copy
        image_pm1 = unit_float(control).mul_(2).sub_(1).to(dtype)
        moments = vae_encode(vae, image_pm1, options.vae_tile_px, options.vae_overlap_px)
    return LRCondition(control, lr_tokens, moments.float(), tuple(lr.shape[-2:]), options.scale)


def tag_images(tagger, lr: torch.Tensor, cond: Optional[LRCondition] = None, *, ram=None,
               device: Optional[torch.device] = None) -> list[str]:
    """RAM tags of each LR image, one comma-separated string per image.

    With ``cond`` and the ``ram`` that made it, a tagger over that same RAM reads the tags off the
    LR tokens the condition already holds: the same numbers as a second Swin pass, without it."""
    if tagger is None:
        raise AddSRError("tagging needs a tagger (RAM loaded with its tag list)")
    model = getattr(tagger, "model", None)
    with torch.no_grad():
        if cond is not None and ram is not None and model is ram and getattr(tagger, "resize", None) == LR_TOKEN_RESIZE:
            return list(tagger.tags_from_tokens(cond.lr_tokens))
        source = ram if ram is not None else model
        return list(tagger.tags(lr.to(device if device is not None else compute_device(source))))


def build_prompts(tags: Optional[Sequence[str]], options: PromptOptions, batch: int = 1) -> list[str]:
    """One prompt per image (``tags`` one string per image, or None for no tags); a plain prompt is
    one row for the whole batch."""
    from .text.prompt import build_prompt

    if options.plain:
        return [options.prompt]
    tags = list(tags) if tags else [""] * batch
    return [build_prompt(tag, options.prompt, added_prompt=options.added_prompt) for tag in tags]


def batch_rows(embeds: Optional[torch.Tensor], batch: int, what: str) -> list:
    """Per-image rows of a [1 or B, ...] tensor (None stays None): :func:`match_batch`'s rule."""
    if embeds is None:
        return [None] * batch
    match_batch(embeds, batch, what)
    return [embeds if embeds.shape[0] == 1 else embeds[i : i + 1] for i in range(batch)]


def per_image(cond: LRCondition, prompt_embeds: torch.Tensor, negative_embeds: Optional[torch.Tensor], device):
    """The samplers' batch loop: each image's condition, prompt and negative (None stays None) on
    ``device`` in float32, the control image as it is held (uint8 stays uint8: the denoisers read
    it per tile); one sampled at a time: the same draws alone or batched, memory of one."""
    positives = batch_rows(prompt_embeds, cond.batch, "prompt_embeds")
    negatives = batch_rows(negative_embeds, cond.batch, "negative_embeds")
    on_device = lambda x: None if x is None else x.to(device).float()  # noqa: E731
    for i in range(cond.batch):
        one = cond.item(i)
        control = one.control_image.to(device)
        one = dataclasses.replace(one, control_image=control if control.dtype == torch.uint8 else control.float(),
                                  lr_tokens=on_device(one.lr_tokens), moments=on_device(one.moments))
        yield one, positives[i].to(device).float(), on_device(negatives[i])


def decode(vae: AutoencoderKL, latent: torch.Tensor, options: DecodeOptions = DecodeOptions(), *,
           device: Optional[torch.device] = None) -> torch.Tensor:
    """Unscaled latent (``z0 / scaling_factor``, ComfyUI's LATENT) -> image in [0,1], tiled when large."""
    device = device if device is not None else compute_device(vae)
    with torch.no_grad():
        raw = vae_decode(vae, latent.to(device, next(vae.parameters()).dtype), options.tile_px, options.overlap_px)
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


# ---------------------------------------------------------------------------------------------
# The family protocol


class Family(Protocol):
    """What a family module (``addsr_core.<family>.pipeline``) defines, with these signatures; the
    orchestrator maps each options class to its module and calls them by name (so a test or a
    profiler can wrap any of them on the module).

    - ``condition(models, lr, options) -> LRCondition``
    - ``sample(models, cond, prompt_embeds, negative_embeds, options, *, noise=None, on_tile=None,
      on_step=None, trace=None) -> latent`` (scaled: the diffusion model's space); a sampler inside
      is a function of a denoiser and a latent plus extra arguments (k-diffusion style)
    - ``decode(models, latent, cond, options) -> image`` (the caller's own tensor)
    - ``finish(image, cond, options) -> image`` in [0,1], exactly LR size x scale
    - ``count_network_calls(options, processing_hw, batch) -> int``: the denoiser calls of ``sample``
      for an upscaled LR of ``processing_hw`` (``options.processing_hw(lr_hw)``)
    - ``resolve(options, models) -> options``: the model's own defaults filled in (before the tiles)
    """

    def condition(self, models, lr: torch.Tensor, options) -> LRCondition: ...

    def sample(self, models, cond: LRCondition, prompt_embeds, negative_embeds, options, *, noise=None,
               on_tile=None, on_step=None, trace=None): ...

    def decode(self, models, latent, cond: LRCondition, options) -> torch.Tensor: ...

    def finish(self, image: torch.Tensor, cond: LRCondition, options) -> torch.Tensor: ...

    def count_network_calls(self, options, processing_hw, batch: int = 1) -> int: ...

    def resolve(self, options, models): ...


# The ControlNet families' (AddSR, SeeSR) condition, decode, finish and resolve over their models and options.


def controlnet_condition(models: AddSRModels, lr: torch.Tensor, options: ControlNetOptions) -> LRCondition:
    return condition_from_lr(models.vae, models.ram, lr, options.condition, device=models.device)


def controlnet_decode(models: AddSRModels, z0: torch.Tensor, cond: LRCondition, options: ControlNetOptions) -> torch.Tensor:
    return decode(models.vae, unscaled(models.vae, z0), options.decoding, device=models.device)


def controlnet_finish(image: torch.Tensor, cond: LRCondition, options: ControlNetOptions) -> torch.Tensor:
    return finish(image, cond, options.finishing, in_place=True)


def controlnet_resolve(options: ControlNetOptions, models: AddSRModels) -> ControlNetOptions:
    return options  # nothing depends on the weights
