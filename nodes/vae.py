"""Seamless tiled VAE decode and encode, with memory bounded by the tile size."""
from __future__ import annotations

import torch

from addsr_core.pipeline import DEFAULT_VAE_TILE_PX

from . import comfy_bridge
from .common import CATEGORY, as_addsr_vae, bchw_to_image, image_to_bchw

MIN_VAE_TILE = 256


def _with_oom_retry(run, tile: int):
    return comfy_bridge.retry_smaller_on_oom(run, tile, floor=MIN_VAE_TILE, what="AddSR: VAE")


class AddSRTiledVAEDecode:
    DESCRIPTION = "Decodes a latent in overlapping tiles with shared normalisation statistics: no seams, bounded memory."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The decoded image (sides a multiple of 8); AddSR Finish colour-fixes it and gives it the exact upscaled size.",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "samples": ("LATENT", {"tooltip": "Latent to decode (e.g. from AddSR Sampler)."}),
                "vae": ("VAE", {"tooltip": "The SD2 base VAE."}),
                "tile_size": ("INT", {"default": DEFAULT_VAE_TILE_PX, "min": MIN_VAE_TILE, "max": 4096, "step": 64,
                    "tooltip": "Tile size in output pixels. Smaller uses less memory; halved automatically on out-of-memory."}),
                "overlap": ("INT", {"default": 64, "min": 0, "max": 512, "step": 16, "tooltip": "Overlap between tiles in pixels."}),
            }
        }

    def decode(self, samples, vae, tile_size=DEFAULT_VAE_TILE_PX, overlap=64):
        from addsr_core.pipeline import AddSRModels, DecodeOptions, decode

        handle = as_addsr_vae(vae)
        device = comfy_bridge.load_to_device([handle.managed])
        models = AddSRModels(None, None, handle.vae, None, device=device)

        def run(tile):
            return decode(models, samples["samples"], DecodeOptions(tile, min(overlap, tile // 4)))

        return (bchw_to_image(_with_oom_retry(run, tile_size)),)


class AddSRTiledVAEEncode:
    DESCRIPTION = "Encodes an image in overlapping tiles with shared normalisation statistics: no seams, bounded memory."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The latent (posterior mean), in ComfyUI's usual unscaled form.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pixels": ("IMAGE", {"tooltip": "Image to encode."}),
                "vae": ("VAE", {"tooltip": "The SD2 base VAE."}),
                "tile_size": ("INT", {"default": DEFAULT_VAE_TILE_PX, "min": MIN_VAE_TILE, "max": 4096, "step": 64,
                    "tooltip": "Tile size in pixels; halved automatically on out-of-memory."}),
                "overlap": ("INT", {"default": 64, "min": 0, "max": 512, "step": 16, "tooltip": "Overlap between tiles in pixels."}),
            }
        }

    def encode(self, pixels, vae, tile_size=DEFAULT_VAE_TILE_PX, overlap=64):
        from addsr_core.imaging.tiled_vae import tiled_encode

        handle = as_addsr_vae(vae)
        device = comfy_bridge.load_to_device([handle.managed])
        image = image_to_bchw(pixels)
        h, w = image.shape[-2:]
        if h % 8 or w % 8:  # the VAE needs multiples of 8: crop like ComfyUI's VAE Encode
            image = image[..., : h // 8 * 8, : w // 8 * 8]
        x = (image * 2 - 1).to(device, handle.managed.dtype)

        def run(tile):
            with torch.no_grad():
                return tiled_encode(handle.vae, x, tile, min(overlap, tile // 4))

        moments = _with_oom_retry(run, tile_size)
        return ({"samples": moments[:, :4].float().cpu()},)
