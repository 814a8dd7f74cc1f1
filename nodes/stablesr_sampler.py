"""StableSR Sampler and CFW Decode: the StableSR family's stages (``addsr_core.stablesr.pipeline``)
as two nodes, the same image as the library's ``upscale`` and the CLI.

StableSR Sampler runs condition + sample, by ``procedure``: ``official`` (each official 1280 px pixel
tile encoded and sampled on its own, the seed drawn afresh per tile) or ``whole_latent`` (one encode
and one canvas sampling of the whole image: faster on large images). Its LATENT carries what CFW
Decode needs (the upscaled LR, the latent of each pixel tile, the options), and CFW Decode decodes
and blends the pixel tiles exactly as the library does, then finishes (crop, exact size).

``StableSRSamplerV2`` / ``StableSRCFWDecodeV2`` take their tiles in output pixels, as every other
node. ``StableSRSampler`` / ``StableSRCFWDecode`` are the nodes before that (latent-pixel tiles, the
whole-latent procedure, the decode tiles on the decode node), kept registered as deprecated so that
saved workflows load and run with their values and meaning; they convert them and run the same code."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from addsr_core.memory import AUTO
from addsr_core.stablesr import pipeline as stablesr
from addsr_core.stablesr.pipeline import (OFFICIAL_OVERLAP_PX, OFFICIAL_PIXEL_OVERLAP_PX, OFFICIAL_PIXEL_TILE_PX,
                                          PROCEDURES, StableSRModels, StableSROptions, TileLatents)
from addsr_core.stablesr.sampling import native_latent_tile
from addsr_core.stages import COLOR_FIXES, LRCondition

from . import comfy_bridge
from .common import AUTO_TILE_TOOLTIP, AddSRInputError, bchw_to_image, conditioning_tensor, image_to_bchw, resolve_tiles_for, warn_if_overlap_clamped
from .stablesr_loaders import STABLESR_CATEGORY, CFWHandle, StableSRHandle

MIN_LATENT_TILE_PX = 128
MIN_DECODE_TILE_PX = 256
LATENT_KEY = "stablesr"  # what CFW Decode needs, carried in the LATENT dict next to "samples"
STABLESR_BASES = "v2-1_512-ema-pruned.safetensors, or the SD-Turbo / 768-v base your StableSR model was made for"


@dataclass
class StableSRLatent:
    """The LATENT's ``stablesr`` entry: the condition (the padded upscaled LR), the sampled latent
    exactly as the library's ``sample`` returns it (scaled; :class:`TileLatents` for the official
    procedure), and the options it was sampled with."""

    cond: LRCondition
    latent: object
    options: StableSROptions


def _check_handles(stablesr_model=None, cfw_vae=None):
    if stablesr_model is not None and not isinstance(stablesr_model, StableSRHandle):
        raise AddSRInputError("stablesr_model must come from StableSR Model Loader")
    if cfw_vae is not None and not isinstance(cfw_vae, CFWHandle):
        raise AddSRInputError("cfw_vae must come from StableSR CFW VAE Loader")


def _context(conditioning, what: str, width: int) -> torch.Tensor:
    return conditioning_tensor(conditioning, what, width=width, base=STABLESR_BASES)


MODELS = {
    "stablesr_model": ("ADDSR_STABLESR_MODEL", {"tooltip": "From StableSR Model Loader."}),
    "cfw_vae": ("ADDSR_STABLESR_VAE", {"tooltip": "From StableSR CFW VAE Loader; encodes the LR image."}),
    "image": ("IMAGE", {"tooltip": "The low-resolution image(s) to upscale."}),
    "positive": ("CONDITIONING", {"tooltip": "Prompt from CLIP Text Encode with the SD 2.x / SD-Turbo CLIP. "
                                  "The official runs use an empty prompt."}),
    "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "Random seed."}),
    "steps": ("INT", {"default": 200, "min": 1, "max": 1000,
        "tooltip": "DDPM steps (respaced from 1000). 200: the official StableSR runs; 4: StableSR-Turbo."}),
    "scale": ("FLOAT", {"default": 4.0, "min": 1.0, "max": 16.0, "step": 0.5,
        "tooltip": "Upscale factor (official 4). Small images are first enlarged to min_size (the model's size, "
                   "512, or 768 for the 768-v model) and resized back at the end."}),
}
GUIDANCE = {
    "negative": ("CONDITIONING", {"tooltip": "Negative prompt; only used when cfg > 1."}),
    "cfg": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 20.0, "step": 0.1,
        "tooltip": "Classifier-free guidance. 1 (official): off. Above 1 needs negative and doubles the cost."}),
}


class StableSRSamplerV2:
    DESCRIPTION = ("Upscales an image with StableSR: the LR latent noised to t=999, then DDPM respaced to `steps` "
                   "(200 official, 4 for StableSR-Turbo) with the time-aware encoder re-run on every latent tile; "
                   "official procedure: each 1280 px pixel tile on its own.")
    CATEGORY = STABLESR_CATEGORY
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The upscaled latent (it also carries what StableSR CFW Decode needs: the upscaled LR and "
                       "each pixel tile's latent).",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **MODELS,
                "procedure": (list(PROCEDURES), {"default": "official",
                    "tooltip": "official: each pixel tile upscaled on its own (the official script). whole_latent: one "
                               "encode and one sampling of the whole image's latent, decoded in the pixel tiles: "
                               "faster on images larger than one pixel tile; the same image when it fits one."}),
                "tile_size": ("INT", {"default": AUTO, "min": 0, "max": 4096, "step": 64,
                    "tooltip": "Diffusion (canvas) tile in output pixels; official: the model's size, 512 (768 for "
                               "768-v). " + AUTO_TILE_TOOLTIP}),
                "tile_overlap": ("INT", {"default": OFFICIAL_OVERLAP_PX, "min": 0, "max": 2048, "step": 8,
                    "tooltip": "Overlap between diffusion tiles in output pixels (official 256 = 32 latents), at most "
                               "half the tile."}),
                "pixel_tile_size": ("INT", {"default": AUTO, "min": 0, "max": 8192, "step": 64,
                    "tooltip": f"The official pixel tile ({OFFICIAL_PIXEL_TILE_PX}): official procedure, each is "
                               "upscaled on its own; both, the CFW decode's tiles. 0: auto, the official tile where "
                               "it fits the GPU's free memory (on a CPU: the official tile)."}),
                "pixel_tile_overlap": ("INT", {"default": OFFICIAL_PIXEL_OVERLAP_PX, "min": 0, "max": 4096, "step": 8,
                    "tooltip": "Overlap between pixel tiles (official 280: stride 1000), at most half the tile."}),
            },
            "optional": {
                **GUIDANCE,
                "start_point": (["lr", "noise"], {"default": "lr",
                    "tooltip": "lr (official): start from the LR latent noised to t=999. noise: pure noise (the older "
                               "script); follows the LR less."}),
                "min_size": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 8,
                    "tooltip": "Inputs whose upscaled short side is below this are enlarged to it first, then resized "
                               "back. 0: the model's size, 512 (768 for 768-v), as the official scripts do."}),
            },
        }

    def sample(self, stablesr_model, cfw_vae, image, positive, seed=0, steps=200, scale=4.0, procedure="official",
               tile_size=AUTO, tile_overlap=OFFICIAL_OVERLAP_PX, pixel_tile_size=AUTO,
               pixel_tile_overlap=OFFICIAL_PIXEL_OVERLAP_PX, negative=None, cfg=1.0, start_point="lr", min_size=0):
        options = StableSROptions(scale=float(scale), steps=int(steps), seed=int(seed), guidance_scale=float(cfg),
                                  start_point=start_point, min_size=int(min_size), procedure=procedure,
                                  latent_tile_px=int(tile_size), latent_overlap_px=int(tile_overlap),
                                  pixel_tile_px=int(pixel_tile_size), pixel_overlap_px=int(pixel_tile_overlap))
        return (run_sampler(stablesr_model, cfw_vae, image, positive, negative, options),)


def run_sampler(handle: StableSRHandle, cfw: CFWHandle, image, positive, negative, options: StableSROptions) -> dict:
    """The family's condition + sample on the node's inputs (AUTO tiles chosen for the device), the
    diffusion tile halved on out-of-memory down to MIN_LATENT_TILE_PX, then a clear error. Returns the
    LATENT."""
    _check_handles(handle, cfw)
    model = handle.model
    lr = image_to_bchw(image)
    width = model.config.unet.cross_attention_dim
    context = _context(positive, "positive", width)
    negative_context = None
    if options.guidance_scale > 1.0:
        if negative is None:
            raise AddSRInputError("cfg > 1 needs a negative prompt: connect negative (CLIP Text Encode)")
        negative_context = _context(negative, "negative", width)
    options.validate()
    managed = [handle.managed, cfw.managed]
    device = comfy_bridge.load_to_device(managed)
    models = StableSRModels(model, cfw.vae, device=device)
    options = stablesr.resolve(options, models)
    options = resolve_tiles_for(options, device, model.dtype, lr_hw=lr.shape[-2:])
    comfy_bridge.check_interrupt()
    cond = stablesr.condition(models, lr, options)

    def attempt(options):
        device = comfy_bridge.load_to_device(managed)
        progress = comfy_bridge.Progress(stablesr.count_network_calls(options, cond.control_image.shape[-2:]))
        comfy_bridge.check_interrupt()
        return options, stablesr.sample(StableSRModels(model, cfw.vae, device=device), cond, context.to(device),
                                        None if negative_context is None else negative_context.to(device), options,
                                        **progress.sampler_hooks())

    def smaller(options):
        tile = options.latent_tile_px // 2 // 64 * 64
        return dataclasses.replace(options, latent_tile_px=tile) if tile >= MIN_LATENT_TILE_PX else None

    def exhausted(options):
        return AddSRInputError(f"out of memory even with {options.latent_tile_px}px diffusion tiles. Use fp16, a "
                               "smaller scale or pixel tile, or start ComfyUI with --lowvram.")

    options, latent = comfy_bridge.retry_smaller_on_oom(attempt, options, smaller=smaller, what="StableSR:",
                                                        describe=lambda o: f"{o.latent_tile_px}px tiles",
                                                        exhausted=exhausted)
    return latent_output(cond, latent, options, cfw.vae.scaling_factor)


def latent_output(cond: LRCondition, latent, options: StableSROptions, scaling_factor: float) -> dict:
    """ComfyUI's LATENT: ``samples`` the whole unscaled latent (the pixel tiles' latents blended: what a
    preview or another node sees), and beside it what CFW Decode needs, on the CPU."""
    cpu = dataclasses.replace(cond, control_image=cond.control_image.float().cpu(),
                              moments=None if cond.moments is None else cond.moments.cpu())
    latent = latent.to("cpu") if isinstance(latent, TileLatents) else latent.float().cpu()
    samples = (stablesr.latent_preview(latent, cpu) / scaling_factor).float()
    return {"samples": samples, LATENT_KEY: StableSRLatent(cpu, latent, options)}


class StableSRSampler(StableSRSamplerV2):
    """Deprecated: the StableSR Sampler with its tiles in LATENT pixels and the whole-latent procedure,
    as saved workflows hold them; it runs :class:`StableSRSamplerV2`'s code on the same tiles in pixels."""

    DEPRECATED = True
    DESCRIPTION = ("Deprecated (latent-pixel tiles): use StableSR Sampler, whose tiles are in output pixels and "
                   "which runs the official pixel-tile procedure. This one still runs workflows saved with it.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **MODELS,
                "tile_size": ("INT", {"default": 0, "min": 0, "max": 512, "step": 8,
                    "tooltip": "Latent tile (8 px each). 0: the model's native tile, 64 (512 px) for the 512 and "
                               "Turbo models, 96 (768 px) for 768-v. Halved automatically on out-of-memory."}),
                "tile_overlap": ("INT", {"default": 32, "min": 0, "max": 256, "step": 4,
                    "tooltip": "Overlap between latent tiles (official 32); must be below the tile size."}),
            },
            "optional": {
                **GUIDANCE,
                "start": (["lr_noised", "noise"], {"default": "lr_noised",
                    "tooltip": "lr_noised (official): start from the LR latent noised to t=999. noise: pure noise."}),
                "min_size": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 8,
                    "tooltip": "Inputs whose upscaled short side is below this are enlarged to it first, then resized "
                               "back. 0: the model's size, 512 (768 for 768-v)."}),
            },
        }

    def sample(self, stablesr_model, cfw_vae, image, positive, seed=0, steps=200, scale=4.0, tile_size=0,
               tile_overlap=32, negative=None, cfg=1.0, start="lr_noised", min_size=0):
        _check_handles(stablesr_model, cfw_vae)
        tile = int(tile_size) or native_latent_tile(stablesr_model.model.config.prediction_type)
        if not 0 <= tile_overlap < tile:
            raise AddSRInputError(f"tile_overlap must be >= 0 and below the latent tile ({tile}), got {tile_overlap}")
        warn_if_overlap_clamped("StableSR Sampler (old)", tile * 8, int(tile_overlap) * 8)
        return super().sample(stablesr_model, cfw_vae, image, positive, seed, steps, scale, "whole_latent", tile * 8,
                              int(tile_overlap) * 8, OFFICIAL_PIXEL_TILE_PX, OFFICIAL_PIXEL_OVERLAP_PX, negative, cfg,
                              "lr" if start == "lr_noised" else start, min_size)


# --- decode -----------------------------------------------------------------------------------------


def stablesr_latent(samples) -> StableSRLatent:
    if not isinstance(samples, dict) or "samples" not in samples:
        raise AddSRInputError("samples is not a LATENT; connect the LATENT of StableSR Sampler")
    info = samples.get(LATENT_KEY)
    if not isinstance(info, StableSRLatent):
        raise AddSRInputError("this LATENT did not come from StableSR Sampler: CFW decoding needs the LR image the "
                              "sampler carries with it. Use VAE Decode for other latents.")
    expected = (info.cond.batch, *info.cond.latent_hw)
    got = tuple(samples["samples"].shape)
    if len(got) != 4 or (got[0], *got[2:]) != expected:
        raise AddSRInputError(f"the latent {got} does not match the LR image {tuple(info.cond.control_image.shape)} "
                              "it came with; do not resize or batch StableSR latents between the nodes")
    return info


def run_decode(cfw: CFWHandle, info: StableSRLatent, options: StableSROptions) -> torch.Tensor:
    """The family's decode + finish: the pixel tiles, CFW-decoded, colour-fixed and blended, then the
    exact size. A whole latent (``whole_latent``) halves its decode tile on out-of-memory (down to
    MIN_DECODE_TILE_PX); the official procedure's tiles are the sampler's."""
    _check_handles(cfw_vae=cfw)
    if options.color_fix not in COLOR_FIXES:
        raise AddSRInputError(f"color_fix must be one of {list(COLOR_FIXES)}, got {options.color_fix!r}")
    if not 0.0 <= options.fidelity <= 1.0:
        raise AddSRInputError(f"fidelity must be between 0 and 1, got {options.fidelity}")
    device = comfy_bridge.load_to_device([cfw.managed])
    tiled = isinstance(info.latent, TileLatents)

    def attempt(options):
        plan = info.latent.plan if tiled else options.pixel_plan(*info.cond.control_image.shape[-2:])
        progress = None if plan.single else comfy_bridge.Progress(plan.count)
        comfy_bridge.check_interrupt()
        return stablesr.decode_tiles(cfw.vae, info.latent, info.cond, options, device=device,
                                     on_tile=None if progress is None else (lambda: progress.update(1)))

    def smaller(options):
        tile = None if tiled else comfy_bridge.halving(MIN_DECODE_TILE_PX)(options.pixel_tile_px)
        return None if tile is None else dataclasses.replace(options, pixel_tile_px=tile)

    def exhausted(options):
        # sampled per pixel tile: the decode's tiles are the sampler's; a whole latent's were halved to the floor
        what = ("lower pixel_tile_size in StableSR Sampler (or use its whole_latent procedure, whose decode tiles "
                "shrink on their own)" if tiled else "lower the scale")
        return AddSRInputError(f"out of memory decoding {options.pixel_tile_px}px pixel tiles: {what}, or start "
                               "ComfyUI with --lowvram.")

    result = comfy_bridge.retry_smaller_on_oom(attempt, options, smaller=smaller, what="StableSR: CFW decode",
                                               describe=lambda o: f"{o.pixel_tile_px}px tiles", exhausted=exhausted)
    return bchw_to_image(stablesr.finish(result, info.cond, options))


class StableSRCFWDecodeV2:
    DESCRIPTION = ("Decodes a StableSR latent with the CFW decoder, which also sees the LR image: fidelity trades "
                   "generated detail (0) for faithfulness to the input (1). Each pixel tile is colour-fixed, then "
                   "the tiles are blended and the result given the exact size.")
    CATEGORY = STABLESR_CATEGORY
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The upscaled image, exactly scale x the input size.",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "samples": ("LATENT", {"tooltip": "The latent from StableSR Sampler (its pixel tiles come with it)."}),
                "cfw_vae": ("ADDSR_STABLESR_VAE", {"tooltip": "From StableSR CFW VAE Loader."}),
                "fidelity": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                    "tooltip": "CFW weight w (official 0.5). 0: the plain decoder, most generated detail; "
                               "1: closest to the input image."}),
                "color_fix": (list(COLOR_FIXES), {"default": "adain",
                    "tooltip": "Match the colours of the input, per pixel tile: adain (official), wavelet, or none."}),
            }
        }

    def decode(self, samples, cfw_vae, fidelity=0.5, color_fix="adain"):
        _check_handles(cfw_vae=cfw_vae)
        info = stablesr_latent(samples)
        return (run_decode(cfw_vae, info, dataclasses.replace(info.options, fidelity=fidelity, color_fix=color_fix)),)


class StableSRCFWDecode(StableSRCFWDecodeV2):
    """Deprecated: CFW Decode with its own pixel tiles (for the whole latent of the deprecated StableSR
    Sampler), as saved workflows hold them; the same code as :class:`StableSRCFWDecodeV2`."""

    DEPRECATED = True
    DESCRIPTION = ("Deprecated: use StableSR CFW Decode (the pixel tiles are set on StableSR Sampler). This one still "
                   "runs workflows saved with it: its tiles decode a whole latent.")

    @classmethod
    def INPUT_TYPES(cls):
        inputs = super().INPUT_TYPES()
        inputs["required"].update({
            "tile_size": ("INT", {"default": OFFICIAL_PIXEL_TILE_PX, "min": MIN_DECODE_TILE_PX, "max": 8192, "step": 64,
                "tooltip": "Decode in pixel tiles of this size (official 1280), blended with Gaussian weights; "
                           "halved automatically on out-of-memory."}),
            "tile_overlap": ("INT", {"default": OFFICIAL_PIXEL_OVERLAP_PX, "min": 0, "max": 4096, "step": 8,
                "tooltip": "Overlap between decode tiles in pixels (official 280: stride 1000)."}),
        })
        return inputs

    def decode(self, samples, cfw_vae, fidelity=0.5, color_fix="adain", tile_size=OFFICIAL_PIXEL_TILE_PX,
               tile_overlap=OFFICIAL_PIXEL_OVERLAP_PX):
        _check_handles(cfw_vae=cfw_vae)
        info = stablesr_latent(samples)
        pixel_tile = max(8, int(tile_size) // 8 * 8)
        warn_if_overlap_clamped("StableSR CFW Decode (old)", pixel_tile, int(tile_overlap))
        options = dataclasses.replace(info.options, fidelity=fidelity, color_fix=color_fix,
                                      pixel_tile_px=pixel_tile, pixel_overlap_px=int(tile_overlap))
        return (run_decode(cfw_vae, info, options),)
