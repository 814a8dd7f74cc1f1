"""AddSR Sampler: 1-4 refining steps, tiled for big images, with previews and Cancel; and the sample
stage every ControlNet-family sampler node runs (SeeSR Sampler too)."""
from __future__ import annotations

import dataclasses

from addsr_core import pipeline
from addsr_core.memory import AUTO
from addsr_core.pipeline import AddSROptions
from addsr_core.stages import DEFAULT_LATENT_OVERLAP_PX, AddSRModels, unscaled

from . import comfy_bridge
from .common import AUTO_TILE_TOOLTIP, CATEGORY, AddSRInputError, as_addsr_vae, conditioning_tensor, resolve_tiles_for
from .encode import AddSRCond
from .loaders import AddSRModel, RAMModel

MIN_TILE_PX = 256
MIN_VAE_TILE_PX = 256

PSR_INPUTS = {
    "vae": ("VAE", {"tooltip": "VAE for the refinement decodes between steps. Default: the one AddSR Encode LR used."}),
    "ram": ("ADDSR_RAM", {"tooltip": "RAM for the refined image tokens between steps. Default: the one AddSR Encode LR used."}),
}


class AddSRSampler:
    DESCRIPTION = "Restores the LR image with AddSR in 1-4 steps, refining its own condition at each step (PSR)."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The restored latent; decode with AddSR Tiled VAE Decode, then AddSR Finish.",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "addsr_model": ("ADDSR_MODEL", {"tooltip": "From AddSR Load Model."}),
                "addsr_cond": ("ADDSR_COND", {"tooltip": "From AddSR Encode LR."}),
                "positive": ("CONDITIONING", {"tooltip": "Prompt from AddSR Prompt (RAM tags + the official quality "
                    "words, one per image) or CLIP Text Encode (SD2 CLIP)."}),
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt; only used when cfg > 1."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                    "tooltip": "Random seed (each image of a batch starts from it)."}),
                "steps": ("INT", {"default": 4, "min": 1, "max": 4,
                    "tooltip": "1-4. AddSR was distilled for 4; 1 is fastest, 4 most detailed."}),
                "psr_weight": ("FLOAT", {"default": 0.4, "min": 0.0, "max": 1.0, "step": 0.05,
                    "tooltip": "How much of each step's prediction feeds the next step's condition (official 0.4). "
                               "Higher: more generated detail; lower: closer to the input."}),
                "cfg": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 20.0, "step": 0.1,
                    "tooltip": "Classifier-free guidance. 0 (official): off. Above 1 uses the negative prompt and doubles the cost."}),
                "tile_size": ("INT", {"default": AUTO, "min": 0, "max": 4096, "step": 64,
                    "tooltip": "Diffusion tile in output pixels. Images larger than this are processed in "
                               "equal overlapping tiles of at most this size. " + AUTO_TILE_TOOLTIP}),
                "tile_overlap": ("INT", {"default": DEFAULT_LATENT_OVERLAP_PX, "min": 0, "max": 2048, "step": 32,
                    "tooltip": "Overlap between tiles in output pixels (at most half the tile); more hides seams "
                               "better but costs time."}),
            },
            "optional": {
                "recompute_tokens": ("BOOLEAN", {"default": True,
                    "tooltip": "Recompute RAM tokens from each step's refined image (official). Off: reuse the LR's tokens, faster."}),
                **PSR_INPUTS,
            },
        }

    def sample(self, addsr_model, addsr_cond, positive, negative, seed=0, steps=4, psr_weight=0.4, cfg=0.0,
               tile_size=AUTO, tile_overlap=DEFAULT_LATENT_OVERLAP_PX, recompute_tokens=True, vae=None, ram=None):
        check_inputs(addsr_model, addsr_cond)
        options = AddSROptions(steps=steps, psr_weight=psr_weight, recompute_tokens=recompute_tokens,
                               guidance_scale=cfg, seed=seed, latent_tile_px=tile_size, latent_overlap_px=tile_overlap)
        width = addsr_model.unet.module.config.cross_attention_dim
        z0 = run_sampler(addsr_model, addsr_cond, conditioning_tensor(positive, width=width),
                         conditioning_tensor(negative, "negative", width=width) if cfg > 1 else None,
                         options, vae=vae, ram=ram)
        return (latent_output(addsr_cond, z0),)


def check_inputs(addsr_model, addsr_cond) -> None:
    if not isinstance(addsr_model, AddSRModel):
        raise AddSRInputError("addsr_model must come from AddSR Load Model")
    if not isinstance(addsr_cond, AddSRCond):
        raise AddSRInputError("addsr_cond must come from AddSR Encode LR")


def latent_output(addsr_cond: AddSRCond, z0):
    """ComfyUI's LATENT (unscaled, as VAE Decode wants it) for a sampled z0."""
    return {"samples": unscaled(addsr_cond.vae.vae, z0).float().cpu()}


def smaller_tiles(options):
    """The next try after an out-of-memory: the diffusion tile halved (a multiple of 64, at least
    MIN_TILE_PX; None below) and the VAE tiles with it (at least MIN_VAE_TILE_PX)."""
    tile = options.latent_tile_px // 2 // 64 * 64
    if tile < MIN_TILE_PX:
        return None
    return dataclasses.replace(options, latent_tile_px=tile,
                               vae_encode_tile_px=max(MIN_VAE_TILE_PX, options.vae_encode_tile_px // 2),
                               vae_decode_tile_px=max(MIN_VAE_TILE_PX, options.vae_decode_tile_px // 2))


def tiles_exhausted(lower: str):
    def exhausted(options):
        return AddSRInputError(f"out of memory even with {options.latent_tile_px}px tiles. Lower {lower}, use fp16, "
                               "or start ComfyUI with --lowvram.")

    return exhausted


def run_sampler(addsr_model: AddSRModel, addsr_cond: AddSRCond, positive, negative, options, *, vae=None, ram=None):
    """The family's sample stage (``options``: AddSROptions or SeeSROptions) on the node's inputs,
    its AUTO tiles chosen for the device, the tiles halved on out-of-memory down to MIN_TILE_PX, then
    a clear error. ``vae``/``ram``: the PSR models when connected, else the ones Encode LR used."""
    handle = as_addsr_vae(vae) if vae is not None else addsr_cond.vae
    if ram is not None and not isinstance(ram, RAMModel):
        raise AddSRInputError("ram must come from AddSR Load RAM")
    ram = ram or addsr_cond.ram
    managed = [addsr_model.unet, addsr_model.controlnet, handle.managed, ram.encoder]
    cond = addsr_cond.cond
    options = dataclasses.replace(options, scale=cond.scale, vae_decode_tile_px=addsr_cond.vae_tile_px)
    options.validate()
    device = comfy_bridge.load_to_device(managed)
    options = resolve_tiles_for(options, device, addsr_model.unet.dtype, processing_hw=cond.control_image.shape[-2:])

    def attempt(options):
        device = comfy_bridge.load_to_device(managed)
        models = AddSRModels(unet=addsr_model.unet.module, controlnet=addsr_model.controlnet.module,
                             vae=handle.vae, ram=ram.encoder.module, device=device)
        family = pipeline.family_of(options)
        progress = comfy_bridge.Progress(family.count_network_calls(options, cond.control_image.shape[-2:], cond.batch))
        comfy_bridge.check_interrupt()
        return family.sample(models, cond, positive.to(device), None if negative is None else negative.to(device),
                             options, **progress.sampler_hooks())

    return comfy_bridge.retry_smaller_on_oom(attempt, options, smaller=smaller_tiles, what="AddSR:",
                                             describe=lambda o: f"{o.latent_tile_px}px tiles",
                                             exhausted=tiles_exhausted("the VAE tile size"))
