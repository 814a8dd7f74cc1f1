"""Encode LR: the low-resolution image becomes AddSR's conditioning bundle."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from addsr_core.memory import AUTO
from addsr_core.stages import DEFAULT_VAE_TILE_PX, ControlNetOptions, LRCondition, condition_from_lr

from . import comfy_bridge
from .common import AUTO_TILE_TOOLTIP, CATEGORY, VAEHandle, alpha_of, as_addsr_vae, image_to_bchw, resolve_tiles_for
from .loaders import RAMModel

MIN_VAE_TILE_PX = 256


@dataclass
class AddSRCond:
    """ComfyUI's ``ADDSR_COND``: the LR condition, the VAE and RAM that made it (the sampler's PSR
    steps use them unless others are connected), the VAE tile asked for (the PSR decodes use it too;
    0: auto) and the LR's alpha, which AddSR Finish puts back."""

    cond: LRCondition
    vae: VAEHandle
    ram: RAMModel
    vae_tile_px: int = DEFAULT_VAE_TILE_PX
    alpha: Optional[torch.Tensor] = None  # [B,h,w] in [0,1], or None


class AddSREncodeLR:
    DESCRIPTION = "Prepares a low-resolution image for AddSR: upscales it, and computes its latent and RAM image tokens."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("ADDSR_COND",)
    RETURN_NAMES = ("addsr_cond",)
    OUTPUT_TOOLTIPS = ("Everything AddSR Sampler and AddSR Finish need about the LR image.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The low-resolution image(s) to restore."}),
                "vae": ("VAE", {"tooltip": "The SD2 base VAE (from Load Checkpoint)."}),
                "ram": ("ADDSR_RAM", {"tooltip": "From AddSR Load RAM."}),
                "scale": ("INT", {"default": 4, "min": 1, "max": 8,
                    "tooltip": "Upscale factor. AddSR is trained for 4x."}),
                "vae_tile_size": ("INT", {"default": AUTO, "min": 0, "max": 4096, "step": 64,
                    "tooltip": "VAE tiles (output pixels) for this encode and the sampler's refinement decodes; "
                               "lower it if you run out of memory. " + AUTO_TILE_TOOLTIP}),
            },
            "optional": {
                "min_size": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8,
                    "tooltip": "Small inputs are first enlarged so the upscaled short side reaches this (official: 512)."}),
            },
        }

    def encode(self, image, vae, ram, scale=4, vae_tile_size=AUTO, min_size=512):
        return (encode_lr(image, vae, ram, ControlNetOptions(scale=scale, min_size=min_size,
                                                              vae_encode_tile_px=vae_tile_size)),)


def encode_lr(image, vae, ram: RAMModel, options: ControlNetOptions) -> AddSRCond:
    """The Encode LR stage on a ComfyUI IMAGE (``options``: scale, min_size and the VAE encode tile)."""
    lr = image_to_bchw(image)
    handle = as_addsr_vae(vae)
    device = comfy_bridge.load_to_device([handle.managed, ram.encoder])
    resolved = resolve_tiles_for(options, device, handle.managed.dtype, lr_hw=lr.shape[-2:])
    cond = condition_from_lr(handle.vae, ram.encoder.module, lr, resolved.condition, device=device)
    alpha = alpha_of(image)
    return AddSRCond(cond, handle, ram, options.vae_encode_tile_px, None if alpha is None else alpha.float().cpu())
