"""AddSR Upscale: IMAGE in, IMAGE out, for people who just want the result (the library's ``upscale``)."""
from __future__ import annotations

import dataclasses

from addsr_core.pipeline import (COLOR_FIXES, DEFAULT_LATENT_TILE_PX, DEFAULT_NEGATIVE, DEFAULT_VAE_TILE_PX, AddSRModels,
                                 UpscaleOptions, tile_overlap_px, upscale, upscale_calls)

from . import comfy_bridge
from .common import (
    ADDSR_BASE,
    CATEGORY,
    SD2_CLIP_FIX,
    AddSRInputError,
    alpha_of,
    as_addsr_vae,
    check_width,
    encode_prompts,
    image_to_bchw,
    with_alpha,
)
from .loaders import AddSRModel, RAMModel
from .sampler import MIN_TILE_PX, retry_smaller_tiles


class AddSRUpscale:
    DESCRIPTION = ("Restores and upscales an image with AddSR in one node: tags, prompt, sampling, tiled decode, "
                   "colour fix. Large images are tiled automatically.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The upscaled image (alpha preserved).",)
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The low-resolution image(s)."}),
                "addsr_model": ("ADDSR_MODEL", {"tooltip": "From AddSR Load Model."}),
                "ram": ("ADDSR_RAM", {"tooltip": "From AddSR Load RAM."}),
                "vae": ("VAE", {"tooltip": "SD2 base VAE, from Load Checkpoint."}),
                "clip": ("CLIP", {"tooltip": "SD2 base CLIP, from Load Checkpoint."}),
                "prompt": ("STRING", {"default": "", "multiline": True,
                    "tooltip": "Optional description; RAM tags and the official quality words are added for you."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "Random seed."}),
                "steps": ("INT", {"default": 4, "min": 1, "max": 4, "tooltip": "1-4 steps; 4 is the official setting."}),
                "scale": ("INT", {"default": 4, "min": 1, "max": 8, "tooltip": "Upscale factor (trained for 4)."}),
                "psr_weight": ("FLOAT", {"default": 0.4, "min": 0.0, "max": 1.0, "step": 0.05,
                    "tooltip": "Self-refinement strength (official 0.4)."}),
                "color_fix": (list(COLOR_FIXES), {"default": "adain", "tooltip": "Colour correction against the input."}),
                "tile_size": ("INT", {"default": DEFAULT_LATENT_TILE_PX, "min": MIN_TILE_PX, "max": 4096, "step": 64,
                    "tooltip": "Diffusion tile in output pixels; larger images run in equal overlapping tiles of at most this size."}),
            },
            "optional": {
                "use_tags": ("BOOLEAN", {"default": True, "tooltip": "Add RAM tags to the prompt (needs a tag list in Load RAM)."}),
                "cfg": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 20.0, "step": 0.1,
                    "tooltip": "Guidance; above 1 uses the negative prompt and doubles the cost."}),
                "negative_prompt": ("STRING", {"default": DEFAULT_NEGATIVE, "multiline": True,
                    "tooltip": "Used when cfg > 1."}),
                "min_size": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8,
                    "tooltip": "Small inputs are first enlarged so the upscaled short side reaches this (official: 512)."}),
                "vae_tile_size": ("INT", {"default": DEFAULT_VAE_TILE_PX, "min": 256, "max": 4096, "step": 64,
                    "tooltip": "VAE tiles in pixels (encode, refinement and final decodes); lower it if you run out of memory."}),
            },
        }

    def upscale(self, image, addsr_model, ram, vae, clip, prompt="", seed=0, steps=4, scale=4, psr_weight=0.4,
                color_fix="adain", tile_size=DEFAULT_LATENT_TILE_PX, use_tags=True, cfg=0.0, negative_prompt=DEFAULT_NEGATIVE,
                min_size=512, vae_tile_size=DEFAULT_VAE_TILE_PX):
        if not isinstance(addsr_model, AddSRModel) or not isinstance(ram, RAMModel):
            raise AddSRInputError("connect AddSR Load Model and AddSR Load RAM")
        options = UpscaleOptions(
            scale=scale, steps=steps, psr_weight=psr_weight, seed=seed, guidance_scale=cfg, prompt=prompt,
            negative_prompt=negative_prompt, color_fix=color_fix, latent_tile_px=tile_size,
            latent_overlap_px=tile_overlap_px(tile_size), use_tags=use_tags and ram.tagger is not None,
            process_size=min_size, vae_encode_tile_px=vae_tile_size, vae_decode_tile_px=vae_tile_size,
        )
        options.validate()
        options.sampling().validate()
        lr = image_to_bchw(image)
        handle = as_addsr_vae(vae)
        managed = [addsr_model.unet, addsr_model.controlnet, handle.managed, ram.encoder]
        width = addsr_model.unet.module.config.cross_attention_dim

        def text(prompts):
            embeds = encode_prompts(clip, prompts)
            check_width(embeds, width, "clip input's", SD2_CLIP_FIX.format(base=ADDSR_BASE, target="its clip input"))
            return embeds

        def attempt(tile):
            nonlocal options
            if tile != options.latent_tile_px:
                options = dataclasses.replace(
                    options, latent_tile_px=tile, latent_overlap_px=tile_overlap_px(tile),
                    vae_decode_tile_px=max(256, options.vae_decode_tile_px // 2))
            device = comfy_bridge.load_to_device(managed)
            models = AddSRModels(addsr_model.unet.module, addsr_model.controlnet.module, handle.vae,
                                 ram.encoder.module, tagger=ram.tagger, text=text, device=device)
            progress = comfy_bridge.Progress(upscale_calls(options, lr.shape[-2:], lr.shape[0]))
            comfy_bridge.check_interrupt()
            return upscale(models, lr, options, **progress.sampler_hooks())

        out = retry_smaller_tiles(attempt, options.latent_tile_px, lower="vae_tile_size")
        return (with_alpha(out.cpu(), alpha_of(image)),)
