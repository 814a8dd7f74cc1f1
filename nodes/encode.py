"""Encode LR: the low-resolution image becomes AddSR's conditioning bundle."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from addsr_core.pipeline import DEFAULT_VAE_TILE_PX, AddSRModels, ConditionOptions, LRCondition, condition_from_lr

from . import comfy_bridge
from .common import CATEGORY, VAEHandle, alpha_of, as_addsr_vae, image_to_bchw
from .loaders import RAMModel


@dataclass
class AddSRCond:
    """ComfyUI's ``ADDSR_COND``: the LR condition, the VAE and RAM that made it (the sampler's PSR
    steps use them unless others are connected), the encode's VAE tile (the PSR decodes use it too)
    and the LR's alpha, which AddSR Finish puts back."""

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
                "vae_tile_size": ("INT", {"default": DEFAULT_VAE_TILE_PX, "min": 256, "max": 4096, "step": 64,
                    "tooltip": "VAE tiles (pixels) for this encode and the sampler's refinement decodes; "
                               "lower it if you run out of memory."}),
            },
            "optional": {
                "min_size": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8,
                    "tooltip": "Small inputs are first enlarged so the upscaled short side reaches this (official: 512)."}),
            },
        }

    def encode(self, image, vae, ram, scale=4, vae_tile_size=DEFAULT_VAE_TILE_PX, min_size=512):
        return (encode_lr(image, vae, ram, ConditionOptions(scale, min_size, vae_tile_size)),)


def encode_lr(image, vae, ram: RAMModel, options: ConditionOptions) -> AddSRCond:
    """The Encode LR stage on a ComfyUI IMAGE (also the all-in-one node's first stage)."""
    lr = image_to_bchw(image)
    handle = as_addsr_vae(vae)
    device = comfy_bridge.load_to_device([handle.managed, ram.encoder])
    models = AddSRModels(unet=None, controlnet=None, vae=handle.vae, ram=ram.encoder.module, device=device)
    cond = condition_from_lr(models, lr, options)
    alpha = alpha_of(image)
    return AddSRCond(cond, handle, ram, options.vae_tile_px, None if alpha is None else alpha.float().cpu())
