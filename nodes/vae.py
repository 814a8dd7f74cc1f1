"""Seamless tiled VAE decode and encode, with memory bounded by the tile size."""
from __future__ import annotations

import torch

from addsr_core.memory import AUTO
from addsr_core.stages import DEFAULT_VAE_OVERLAP_PX, ControlNetOptions, DecodeOptions, decode, tile_overlap_px

from . import comfy_bridge
from .common import AUTO_TILE_TOOLTIP, CATEGORY, as_addsr_vae, bchw_to_image, image_to_bchw, resolve_tiles_for

MIN_VAE_TILE = 256


def _tile_for(kind: str, tile: int, device, dtype, processing_hw) -> int:
    """The widget's tile, or for 0 (auto) the library's choice for this device and image."""
    field = f"vae_{kind}_tile_px"
    return getattr(resolve_tiles_for(ControlNetOptions(**{field: tile}), device, dtype, processing_hw=processing_hw), field)


def _with_oom_retry(run, tile: int):
    return comfy_bridge.retry_smaller_on_oom(run, tile, smaller=comfy_bridge.halving(MIN_VAE_TILE), what="AddSR: VAE")


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
                "tile_size": ("INT", {"default": AUTO, "min": 0, "max": 4096, "step": 64,
                    "tooltip": "Tile size in output pixels. Smaller uses less memory. " + AUTO_TILE_TOOLTIP}),
                "overlap": ("INT", {"default": DEFAULT_VAE_OVERLAP_PX, "min": 0, "max": 512, "step": 16,
                    "tooltip": "Overlap between tiles in pixels (at most half the tile)."}),
            }
        }

    def decode(self, samples, vae, tile_size=AUTO, overlap=DEFAULT_VAE_OVERLAP_PX):
        handle = as_addsr_vae(vae)
        device = comfy_bridge.load_to_device([handle.managed])
        latent = samples["samples"]
        tile = _tile_for("decode", tile_size, device, handle.managed.dtype, tuple(8 * s for s in latent.shape[-2:]))

        def run(tile):
            return decode(handle.vae, latent, DecodeOptions(tile, tile_overlap_px(tile, overlap)), device=device)

        return (bchw_to_image(_with_oom_retry(run, tile)),)


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
                "tile_size": ("INT", {"default": AUTO, "min": 0, "max": 4096, "step": 64,
                    "tooltip": "Tile size in pixels. " + AUTO_TILE_TOOLTIP}),
                "overlap": ("INT", {"default": DEFAULT_VAE_OVERLAP_PX, "min": 0, "max": 512, "step": 16,
                    "tooltip": "Overlap between tiles in pixels (at most half the tile)."}),
            }
        }

    def encode(self, pixels, vae, tile_size=AUTO, overlap=DEFAULT_VAE_OVERLAP_PX):
        from addsr_core.stages import vae_encode

        handle = as_addsr_vae(vae)
        device = comfy_bridge.load_to_device([handle.managed])
        image = image_to_bchw(pixels)
        h, w = image.shape[-2:]
        if h % 8 or w % 8:  # the VAE needs multiples of 8: crop like ComfyUI's VAE Encode
            image = image[..., : h // 8 * 8, : w // 8 * 8]
        x = (image * 2 - 1).to(device, handle.managed.dtype)
        tile = _tile_for("encode", tile_size, device, handle.managed.dtype, tuple(x.shape[-2:]))

        def run(tile):
            with torch.no_grad():
                return vae_encode(handle.vae, x, tile, tile_overlap_px(tile, overlap))

        moments = _with_oom_retry(run, tile)
        return ({"samples": moments[:, :4].float().cpu()},)
