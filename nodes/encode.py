"""Encode LR: the low-resolution image becomes AddSR's conditioning bundle and a LATENT."""
from __future__ import annotations

import dataclasses

from dataclasses import dataclass

import torch

from addsr_core.pipeline import LRCondition, UpscaleOptions

from . import host
from .common import CATEGORY, VAEHandle, as_addsr_vae, image_to_bchw
from .loaders import RAMModel


@dataclass
class AddSRCond:
    """ComfyUI's ``ADDSR_COND``: the LR condition plus the VAE and RAM the sampler's PSR steps use."""

    cond: LRCondition
    vae: VAEHandle
    ram: RAMModel


class AddSREncodeLR:
    DESCRIPTION = "Prepares a low-resolution image for AddSR: upscales it, and computes its latent and RAM image tokens."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("ADDSR_COND", "LATENT")
    RETURN_NAMES = ("addsr_cond", "lr_latent")
    OUTPUT_TOOLTIPS = (
        "Everything AddSR Sampler needs about the LR image.",
        "The VAE latent of the upscaled LR (for other samplers or inspection).",
    )
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
                "vae_tile_size": ("INT", {"default": 1024, "min": 256, "max": 4096, "step": 64,
                    "tooltip": "Encode in tiles of this many pixels; lower it if you run out of memory."}),
            },
            "optional": {
                "min_size": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8,
                    "tooltip": "Small inputs are first enlarged so the upscaled short side reaches this (official: 512)."}),
            },
        }

    def encode(self, image, vae, ram, scale=4, vae_tile_size=1024, min_size=512):
        lr = image_to_bchw(image)
        handle = as_addsr_vae(vae)
        options = UpscaleOptions(scale=scale, vae_encode_tile_px=vae_tile_size, process_size=min_size)
        cond = encode_condition(lr, handle, ram, options)
        mean = cond.moments[:, :4]
        return AddSRCond(cond, handle, ram), {"samples": mean.cpu()}


def encode_condition(lr: torch.Tensor, handle: VAEHandle, ram: RAMModel, options: UpscaleOptions) -> LRCondition:
    from addsr_core.pipeline import AddSRModels, condition_from_lr

    host.load_to_device([handle.managed, ram.encoder])
    models = AddSRModels(unet=None, controlnet=None, vae=handle.vae, ram=ram.encoder.module, tagger=ram.tagger)
    return condition_from_lr(models, lr, _untagged(options))


def _untagged(options: UpscaleOptions) -> UpscaleOptions:
    # In ComfyUI the prompt comes from CLIP Text Encode; tags are the Tagger node's job. A copy: the
    # caller's options go on to the next image of the batch (AddSR Upscale tags each one).
    return dataclasses.replace(options, use_tags=False)
