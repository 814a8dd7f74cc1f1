"""AddSR Upscale: IMAGE in, IMAGE out, for people who just want the result (the library's ``upscale``)."""
from __future__ import annotations

from addsr_core.memory import AUTO
from addsr_core.pipeline import AddSROptions, resolve_options, upscale, upscale_calls
from addsr_core.stages import COLOR_FIXES, DEFAULT_NEGATIVE, AddSRModels

from . import comfy_bridge
from .common import (
    ADDSR_BASE,
    AUTO_TILE_TOOLTIP,
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
from .sampler import smaller_tiles, tiles_exhausted


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
                "tile_size": ("INT", {"default": AUTO, "min": 0, "max": 4096, "step": 64,
                    "tooltip": "Diffusion tile in output pixels; larger images run in equal overlapping tiles of at "
                               "most this size. " + AUTO_TILE_TOOLTIP}),
            },
            "optional": {
                "use_tags": ("BOOLEAN", {"default": True, "tooltip": "Add RAM tags to the prompt (needs a tag list in Load RAM)."}),
                "cfg": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 20.0, "step": 0.1,
                    "tooltip": "Guidance; above 1 uses the negative prompt and doubles the cost."}),
                "negative_prompt": ("STRING", {"default": DEFAULT_NEGATIVE, "multiline": True,
                    "tooltip": "Used when cfg > 1."}),
                "min_size": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8,
                    "tooltip": "Small inputs are first enlarged so the upscaled short side reaches this (official: 512)."}),
                "vae_tile_size": ("INT", {"default": AUTO, "min": 0, "max": 4096, "step": 64,
                    "tooltip": "VAE tiles in output pixels (encode, refinement and final decodes); lower it if you run "
                               "out of memory. " + AUTO_TILE_TOOLTIP}),
            },
        }

    def upscale(self, image, addsr_model, ram, vae, clip, prompt="", seed=0, steps=4, scale=4, psr_weight=0.4,
                color_fix="adain", tile_size=AUTO, use_tags=True, cfg=0.0, negative_prompt=DEFAULT_NEGATIVE,
                min_size=512, vae_tile_size=AUTO):
        if not isinstance(addsr_model, AddSRModel) or not isinstance(ram, RAMModel):
            raise AddSRInputError("connect AddSR Load Model and AddSR Load RAM")
        options = AddSROptions(
            scale=scale, steps=steps, psr_weight=psr_weight, seed=seed, guidance_scale=cfg, prompt=prompt,
            negative_prompt=negative_prompt, color_fix=color_fix, latent_tile_px=tile_size,
            use_tags=use_tags and ram.tagger is not None, min_size=min_size, vae_encode_tile_px=vae_tile_size,
            vae_decode_tile_px=vae_tile_size,
        )
        options.validate()
        lr = image_to_bchw(image)
        handle = as_addsr_vae(vae)
        managed = [addsr_model.unet, addsr_model.controlnet, handle.managed, ram.encoder]
        width = addsr_model.unet.module.config.cross_attention_dim

        def text(prompts):
            embeds = encode_prompts(clip, prompts)
            check_width(embeds, width, "clip input's", SD2_CLIP_FIX.format(base=ADDSR_BASE, target="its clip input"))
            return embeds

        def networks():
            device = comfy_bridge.load_to_device(managed)
            return AddSRModels(addsr_model.unet.module, addsr_model.controlnet.module, handle.vae,
                               ram.encoder.module, tagger=ram.tagger, text=text, device=device)

        models = networks()
        options = resolve_options(options, models, lr.shape[-2:], free_bytes=comfy_bridge.free_memory(models.device))

        def attempt(options):
            models = networks()
            progress = comfy_bridge.Progress(upscale_calls(options, lr.shape[-2:], lr.shape[0]))
            comfy_bridge.check_interrupt()
            return upscale(models, lr, options, **progress.sampler_hooks())

        out = comfy_bridge.retry_smaller_on_oom(attempt, options, smaller=smaller_tiles, what="AddSR:",
                                                describe=lambda o: f"{o.latent_tile_px}px tiles",
                                                exhausted=tiles_exhausted("vae_tile_size"))
        return (with_alpha(out.cpu(), alpha_of(image)),)
