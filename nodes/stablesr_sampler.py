"""StableSR Sampler and CFW Decode: the official canvas sampler over the whole image, then the
CFW decoder (in the official 1280 px pixel tiles for large images) with the colour fix."""
from __future__ import annotations

import dataclasses

import torch

from addsr_core.sampling.noise import SeededNoise
from addsr_core.sampling.tiling import blend_tiles, pixel_tile_plan, tile_count
from addsr_core.stablesr.sampling import native_input_size, native_latent_tile
from addsr_core.stablesr.pipeline import (
    COLOR_FIXES,
    PreparedLR,
    StableSROptions,
    decode_cfw,
    encode_lr,
    finish,
    prepare_lr,
    sample_latent,
)

from . import comfy_bridge
from .common import AddSRInputError, bchw_to_image, conditioning_tensor, image_to_bchw
from .stablesr_loaders import STABLESR_CATEGORY, CFWHandle, StableSRHandle

MIN_LATENT_TILE = 16
MIN_DECODE_TILE_PX = 256
LATENT_KEY = "stablesr"  # what CFW Decode needs, carried in the LATENT dict next to "samples"


def _check_handles(stablesr_model=None, cfw_vae=None):
    if stablesr_model is not None and not isinstance(stablesr_model, StableSRHandle):
        raise AddSRInputError("stablesr_model must come from StableSR Model Loader")
    if cfw_vae is not None and not isinstance(cfw_vae, CFWHandle):
        raise AddSRInputError("cfw_vae must come from StableSR CFW VAE Loader")


STABLESR_BASES = "v2-1_512-ema-pruned.safetensors, or the SD-Turbo / 768-v base your StableSR model was made for"


def _context(conditioning, what: str, width: int) -> torch.Tensor:
    return conditioning_tensor(conditioning, what, width=width, base=STABLESR_BASES)


class StableSRSampler:
    DESCRIPTION = ("Upscales an image with StableSR: the LR latent noised to t=999, then DDPM respaced to `steps` "
                   "(200 official, 4 for StableSR-Turbo) with the time-aware encoder re-run on every latent tile.")
    CATEGORY = STABLESR_CATEGORY
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The upscaled latent (it also carries the upscaled LR that StableSR CFW Decode needs).",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "stablesr_model": ("ADDSR_STABLESR_MODEL", {"tooltip": "From StableSR Model Loader."}),
                "cfw_vae": ("ADDSR_STABLESR_VAE", {"tooltip": "From StableSR CFW VAE Loader; encodes the LR image."}),
                "image": ("IMAGE", {"tooltip": "The low-resolution image(s) to upscale."}),
                "positive": ("CONDITIONING", {"tooltip": "Prompt from CLIP Text Encode with the SD 2.x / SD-Turbo CLIP. "
                                              "The official runs use an empty prompt."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "Random seed."}),
                "steps": ("INT", {"default": 200, "min": 1, "max": 1000,
                    "tooltip": "DDPM steps (respaced from 1000). 200: the official StableSR runs; 4: StableSR-Turbo."}),
                "scale": ("FLOAT", {"default": 4.0, "min": 1.0, "max": 16.0, "step": 0.5,
                    "tooltip": "Upscale factor (official 4). Small images are first enlarged to the model's size "
                               "(512, or 768 for the 768-v model) and resized back at the end."}),
                "tile_size": ("INT", {"default": 0, "min": 0, "max": 512, "step": 8,
                    "tooltip": "Latent tile (8 px each). 0: the model's native tile, 64 (512 px) for the 512 and "
                               "Turbo models, 96 (768 px) for 768-v. Halved automatically on out-of-memory."}),
                "tile_overlap": ("INT", {"default": 32, "min": 0, "max": 256, "step": 4,
                    "tooltip": "Overlap between latent tiles (official 32); must be below the tile size."}),
            },
            "optional": {
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt; only used when cfg > 1."}),
                "cfg": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 20.0, "step": 0.1,
                    "tooltip": "Classifier-free guidance. 1 (official): off. Above 1 needs negative and doubles the cost."}),
                "start": (["lr_noised", "noise"], {"default": "lr_noised",
                    "tooltip": "lr_noised (official): start from the LR latent noised to t=999. noise: pure noise "
                               "(the older script); follows the LR less."}),
                "min_size": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 8,
                    "tooltip": "Inputs whose upscaled short side is below this are enlarged to it first, then resized "
                               "back. 0: the model's size, 512 (768 for 768-v), as the official scripts do."}),
            },
        }

    def sample(self, stablesr_model, cfw_vae, image, positive, seed=0, steps=200, scale=4.0, tile_size=0,
               tile_overlap=32, negative=None, cfg=1.0, start="lr_noised", min_size=0):
        _check_handles(stablesr_model, cfw_vae)
        model = stablesr_model.model
        lr = image_to_bchw(image)
        width = model.config.unet.cross_attention_dim
        context = _context(positive, "positive", width)
        negative_context = None
        if cfg > 1.0:
            if negative is None:
                raise AddSRInputError("cfg > 1 needs a negative prompt: connect negative (CLIP Text Encode)")
            negative_context = _context(negative, "negative", width)
        prediction = model.config.prediction_type
        options = StableSROptions(scale=float(scale), steps=int(steps), seed=int(seed), start=start,
                                  input_size=int(min_size) or native_input_size(prediction),
                                  latent_tile=int(tile_size) or native_latent_tile(prediction),
                                  tile_overlap=int(tile_overlap), guidance_scale=float(cfg))
        options.validate()
        options.sampling(model.config.prediction_type).validate()
        prepared = prepare_lr(lr, options)
        z0 = run_sampler(stablesr_model, cfw_vae, prepared, context, negative_context, options)
        vae = cfw_vae.vae
        info = {"lr_image": prepared.image.float().cpu(), "upscaled_hw": tuple(prepared.upscaled_hw),
                "output_hw": tuple(prepared.output_hw)}
        return ({"samples": (z0 / vae.scaling_factor).float().cpu(), LATENT_KEY: info},)


def run_sampler(handle: StableSRHandle, cfw: CFWHandle, prepared: PreparedLR, context, negative_context,
                options: StableSROptions) -> torch.Tensor:
    """Encode + sample, halving the latent tile on out-of-memory down to MIN_LATENT_TILE, then a clear error."""
    def attempt(tile):
        retry = dataclasses.replace(options, latent_tile=tile, tile_overlap=min(options.tile_overlap, tile // 2))
        return _sample_once(handle, cfw, prepared, context, negative_context,
                            options if tile == options.tile else retry)

    def exhausted(tile):
        return AddSRInputError(f"out of memory even with {tile}-latent ({tile * 8}px) tiles. Use fp16, a smaller "
                               "scale, or start ComfyUI with --lowvram.")

    return comfy_bridge.retry_smaller_on_oom(attempt, options.tile, floor=MIN_LATENT_TILE, what="StableSR:", unit="-latent",
                                     exhausted=exhausted)


def _sample_once(handle, cfw, prepared, context, negative_context, options):
    device = comfy_bridge.load_to_device([handle.managed, cfw.managed])
    noise = SeededNoise(options.seed)  # fresh for every attempt: a retry gives the same image
    height, width = (s // 8 for s in prepared.image.shape[-2:])
    per_step = tile_count(height, width, options.tile, options.tile_overlap)
    progress = comfy_bridge.Progress(options.steps * per_step)

    def on_step(index, total, x0):
        progress.update(0, comfy_bridge.latent_preview(x0))

    comfy_bridge.check_interrupt()
    lr_latent = encode_lr(cfw.vae, prepared.image, noise)
    return sample_latent(handle.model, lr_latent.to(device), context.to(device), options, noise=noise,
                         negative_context=None if negative_context is None else negative_context.to(device),
                         on_tile=lambda: progress.update(1), on_step=on_step)


class StableSRCFWDecode:
    DESCRIPTION = ("Decodes a StableSR latent with the CFW decoder, which also sees the LR image: fidelity trades "
                   "generated detail (0) for faithfulness to the input (1). Then the colour fix.")
    CATEGORY = STABLESR_CATEGORY
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The upscaled image, exactly scale x the input size.",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "samples": ("LATENT", {"tooltip": "The latent from StableSR Sampler."}),
                "cfw_vae": ("ADDSR_STABLESR_VAE", {"tooltip": "From StableSR CFW VAE Loader."}),
                "fidelity": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                    "tooltip": "CFW weight w (official 0.5). 0: the plain decoder, most generated detail; "
                               "1: closest to the input image."}),
                "color_fix": (list(COLOR_FIXES), {"default": "adain",
                    "tooltip": "Match the colours of the input: adain (official), wavelet, or none."}),
                "tile_size": ("INT", {"default": 1280, "min": MIN_DECODE_TILE_PX, "max": 8192, "step": 64,
                    "tooltip": "Decode in pixel tiles of this size (official 1280), blended with Gaussian weights; "
                               "halved automatically on out-of-memory."}),
                "tile_overlap": ("INT", {"default": 280, "min": 0, "max": 4096, "step": 8,
                    "tooltip": "Overlap between decode tiles in pixels (official 280: stride 1000)."}),
            }
        }

    def decode(self, samples, cfw_vae, fidelity=0.5, color_fix="adain", tile_size=1280, tile_overlap=280):
        _check_handles(cfw_vae=cfw_vae)
        if not isinstance(samples, dict) or "samples" not in samples:
            raise AddSRInputError("samples is not a LATENT; connect the LATENT of StableSR Sampler")
        info = samples.get(LATENT_KEY)
        if info is None:
            raise AddSRInputError("this LATENT did not come from StableSR Sampler: CFW decoding needs the LR image the "
                                  "sampler carries with it. Use VAE Decode for other latents.")
        if color_fix not in COLOR_FIXES:
            raise AddSRInputError(f"color_fix must be one of {list(COLOR_FIXES)}, got {color_fix!r}")
        if not 0.0 <= fidelity <= 1.0:
            raise AddSRInputError(f"fidelity must be between 0 and 1, got {fidelity}")
        latent, image = samples["samples"], info["lr_image"]
        if latent.ndim != 4 or tuple(latent.shape[-2:]) != tuple(s // 8 for s in image.shape[-2:]) or latent.shape[0] != image.shape[0]:
            raise AddSRInputError(f"the latent {tuple(latent.shape)} does not match the LR image {tuple(image.shape)} "
                                  "it came with; do not resize or batch StableSR latents between the nodes")
        device = comfy_bridge.load_to_device([cfw_vae.managed])
        z0 = latent.float().to(device) * cfw_vae.vae.scaling_factor
        tile = max(8, tile_size // 8 * 8)
        result = comfy_bridge.retry_smaller_on_oom(
            lambda tile: _decode_tiles(cfw_vae.vae, z0, image.to(device), fidelity, color_fix, tile, tile_overlap),
            tile, floor=MIN_DECODE_TILE_PX, what="StableSR: CFW decode", shrink=lambda tile: tile // 2 // 8 * 8)
        prepared = PreparedLR(image, tuple(info["upscaled_hw"]), tuple(info["output_hw"]))
        return (bchw_to_image(finish(result, prepared)),)


def _decode_tiles(vae, z0, image, fidelity, color_fix, tile, overlap):
    """The official pixel tiles: each decoded and colour-fixed on its own, blended with Gaussian weights
    (:func:`~addsr_core.sampling.tiling.blend_tiles`, as the whole-image StableSR pipeline)."""
    height, width = image.shape[-2:]
    stride = max(8, (tile - min(overlap, tile - 8)) // 8 * 8)
    plan = pixel_tile_plan(height, width, tile, stride)
    progress = None if plan.single else comfy_bridge.Progress(plan.count)

    def one(y0, x0, th, tw):
        comfy_bridge.check_interrupt()
        crop = (..., slice(y0, y0 + th), slice(x0, x0 + tw))
        latent_crop = (..., slice(y0 // 8, (y0 + th) // 8), slice(x0 // 8, (x0 + tw) // 8))
        return decode_cfw(vae, z0[latent_crop], image[crop], fidelity, color_fix)

    return blend_tiles(one, plan, device=image.device, on_tile=None if progress is None else (lambda: progress.update(1)))
