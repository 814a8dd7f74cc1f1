"""AddSR Upscale: IMAGE in, IMAGE out, for people who just want the result."""
from __future__ import annotations

import torch

from addsr_core.pipeline import UpscaleOptions, build_prompts, decode, finish, tile_overlap_px

from . import host
from .common import (
    ADDSR_BASE,
    CATEGORY,
    SD2_CLIP_FIX,
    AddSRInputError,
    alpha_of,
    as_addsr_vae,
    bchw_to_image,
    check_width,
    encode_text,
    image_to_bchw,
)
from .encode import AddSRCond, encode_condition
from .loaders import AddSRModel, RAMModel
from .sampler import MIN_TILE_PX, run_sampler


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
                "color_fix": (["adain", "wavelet", "none"], {"default": "adain", "tooltip": "Colour correction against the input."}),
                "tile_size": ("INT", {"default": 1024, "min": MIN_TILE_PX, "max": 4096, "step": 64,
                    "tooltip": "Diffusion tile in output pixels; larger images are tiled automatically."}),
            },
            "optional": {
                "use_tags": ("BOOLEAN", {"default": True, "tooltip": "Add RAM tags to the prompt (needs a tag list in Load RAM)."}),
                "cfg": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 20.0, "step": 0.1,
                    "tooltip": "Guidance; above 1 uses the negative prompt and doubles the cost."}),
                "negative_prompt": ("STRING", {"default": "dotted, noise, blur, lowres, smooth", "multiline": True,
                    "tooltip": "Used when cfg > 1."}),
                "min_size": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8,
                    "tooltip": "Small inputs are first enlarged so the upscaled short side reaches this (official: 512)."}),
            },
        }

    def upscale(self, image, addsr_model, ram, vae, clip, prompt="", seed=0, steps=4, scale=4, psr_weight=0.4,
                color_fix="adain", tile_size=1024, use_tags=True, cfg=0.0,
                negative_prompt="dotted, noise, blur, lowres, smooth", min_size=512):
        if not isinstance(addsr_model, AddSRModel) or not isinstance(ram, RAMModel):
            raise AddSRInputError("connect AddSR Load Model and AddSR Load RAM")
        options = UpscaleOptions(
            scale=scale, steps=steps, psr_weight=psr_weight, seed=seed, guidance_scale=cfg, prompt=prompt,
            negative_prompt=negative_prompt, color_fix=color_fix, latent_tile_px=tile_size,
            latent_overlap_px=tile_overlap_px(tile_size), use_tags=use_tags and ram.tagger is not None,
            process_size=min_size, vae_encode_tile_px=max(256, tile_size), vae_decode_tile_px=max(256, tile_size),
        )
        lr, alpha = image_to_bchw(image), alpha_of(image)
        handle = as_addsr_vae(vae)
        outputs = []
        for i in range(lr.shape[0]):  # one at a time: each image may need its own tiling and prompt
            outputs.append(self._one(lr[i : i + 1], handle, ram, addsr_model, clip, options))
        out = torch.cat(outputs)
        if alpha is not None:
            from addsr_core.imaging.prepare import resize_to

            a = resize_to(alpha[:, None].float(), tuple(out.shape[-2:])).clamp(0, 1)
            return (torch.cat([bchw_to_image(out), bchw_to_image(a)], dim=-1),)
        return (bchw_to_image(out),)

    def _one(self, lr, handle, ram, addsr_model, clip, options):
        tagged = options.use_tags
        cond = encode_condition(lr, handle, ram, options)
        if tagged:
            device = host.load_to_device([ram.encoder])
            with torch.no_grad():
                cond.tags = ram.tagger.tags(lr.to(device))
        prompt = build_prompts(cond, options)[0]
        positive = encode_text(clip, prompt)
        check_width(positive, addsr_model.unet.module.config.cross_attention_dim, "clip input's",
                    SD2_CLIP_FIX.format(base=ADDSR_BASE, target="its clip input"))
        negative = encode_text(clip, options.negative_prompt) if options.guidance_scale > 1 else None
        z0 = run_sampler(addsr_model, AddSRCond(cond, handle, ram), positive, negative, options)
        host.load_to_device([handle.managed])
        from addsr_core.pipeline import AddSRModels

        models = AddSRModels(None, None, handle.vae, None)
        return finish(decode(models, z0.to(handle.managed.device), options), cond, options).cpu()
