"""SeeSR Sampler: SeeSR's 50-step DDPM with CFG on the AddSR Sampler's plumbing (same bundle, progress,
previews, Cancel and out-of-memory tile halving)."""
from __future__ import annotations

from addsr_core.seesr import pipeline as seesr
from addsr_core.pipeline import LatentTiling
from addsr_core.seesr.sampler import SeeSRSampling

from . import comfy_bridge
from .common import CATEGORY, conditioning_tensor
from .sampler import MIN_TILE_PX, check_inputs, latent_output, run_sampler


class SeeSRSampler:
    DESCRIPTION = ("Restores the LR image with SeeSR, the 50-step model AddSR was distilled from: slower than "
                   "AddSR, the official defaults (DDPM 50 steps, CFG 5.5, 96-latent tiles).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The restored latent; decode with AddSR Tiled VAE Decode, then AddSR Finish.",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "addsr_model": ("ADDSR_MODEL", {"tooltip": "SeeSR weights from AddSR Load Model (family seesr)."}),
                "addsr_cond": ("ADDSR_COND", {"tooltip": "From AddSR Encode LR."}),
                "positive": ("CONDITIONING", {"tooltip": "Prompt from AddSR Prompt or CLIP Text Encode (SD2 CLIP). "
                    "Official: RAM tags + 'clean, high-resolution, 8k'."}),
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt (official: 'dotted, noise, blur, lowres, "
                    "smooth'); used when cfg > 1."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "Random seed."}),
                "steps": ("INT", {"default": seesr.DEFAULT_STEPS, "min": 1, "max": 1000,
                    "tooltip": "DDPM steps (official 50). SeeSR-Turbo weights: 2."}),
                "cfg": ("FLOAT", {"default": seesr.DEFAULT_GUIDANCE, "min": 0.0, "max": 20.0, "step": 0.1,
                    "tooltip": "Classifier-free guidance (official 5.5; 1 or less: off, half the cost)."}),
                "tile_size": ("INT", {"default": seesr.OFFICIAL_TILE, "min": MIN_TILE_PX // 8, "max": 512, "step": 8,
                    "tooltip": "Diffusion tile in LATENT pixels (x8 in the image; official 96). Halved on out-of-memory."}),
                "tile_overlap": ("INT", {"default": seesr.OFFICIAL_OVERLAP, "min": 0, "max": 256,
                    "tooltip": "Tile overlap in latent pixels (official 4; 32 for SeeSR-Turbo)."}),
            },
            "optional": {
                "start_point": (list(seesr.START_POINTS), {"default": "lr",
                    "tooltip": "lr (official): start from the LR latent noised to t=999; noise: from pure noise."}),
                "official_tiles": ("BOOLEAN", {"default": True,
                    "tooltip": "Official: tile only when the latent's area exceeds tile², with square tiles. "
                               "Off: tile when a side exceeds the tile, clamped per side (fewer calls on long images)."}),
            },
        }

    def sample(self, addsr_model, addsr_cond, positive, negative, seed=0, steps=seesr.DEFAULT_STEPS,
               cfg=seesr.DEFAULT_GUIDANCE, tile_size=seesr.OFFICIAL_TILE, tile_overlap=seesr.OFFICIAL_OVERLAP,
               start_point="lr", official_tiles=True):
        check_inputs(addsr_model, addsr_cond)
        if getattr(addsr_model, "family", "seesr") != "seesr":
            comfy_bridge.log.warning("AddSR: SeeSR Sampler got %s weights (%r); load SeeSR weights, or set the loader's "
                             "family to seesr if these are SeeSR", addsr_model.family, addsr_model.name)
        sampling = SeeSRSampling(steps=steps, guidance_scale=cfg, start_point=start_point)
        tiling = LatentTiling(tile_size * 8, min(tile_overlap, tile_size // 2) * 8, area_rule=official_tiles)
        sampling.validate()
        tiling.validate()
        width = addsr_model.unet.module.config.cross_attention_dim
        z0 = run_sampler(addsr_model, addsr_cond, conditioning_tensor(positive, width=width),
                         conditioning_tensor(negative, "negative", width=width) if cfg > 1 else None,
                         sampling, tiling, seed=seed, method=seesr)
        return (latent_output(addsr_cond, z0),)
