"""SeeSR Sampler: SeeSR's 50-step DDPM with CFG on the AddSR Sampler's plumbing (same bundle, progress,
previews, Cancel and out-of-memory tile halving).

``SeeSRSamplerV2`` takes its tiles in output pixels, as every other node. ``SeeSRSampler`` is the
node before that (tiles in latent pixels), kept registered as deprecated so that saved workflows load
and run with their values and meaning; it converts them and runs the same code."""
from __future__ import annotations

from addsr_core.memory import AUTO
from addsr_core.seesr import pipeline as seesr
from addsr_core.seesr.pipeline import SeeSROptions

from . import comfy_bridge
from .common import AUTO_TILE_TOOLTIP, CATEGORY, conditioning_tensor, warn_if_overlap_clamped
from .sampler import MIN_TILE_PX, check_inputs, latent_output, run_sampler

INPUTS = {
    "addsr_model": ("ADDSR_MODEL", {"tooltip": "SeeSR weights from AddSR Load Model (family seesr)."}),
    "addsr_cond": ("ADDSR_COND", {"tooltip": "From AddSR Encode LR."}),
    "positive": ("CONDITIONING", {"tooltip": "Prompt from AddSR Prompt or CLIP Text Encode (SD2 CLIP). "
        "Official: RAM tags + 'clean, high-resolution, 8k'."}),
    "negative": ("CONDITIONING", {"tooltip": "Negative prompt (official: 'dotted, noise, blur, lowres, smooth'); "
        "used when cfg > 1."}),
    "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "Random seed."}),
    "steps": ("INT", {"default": seesr.DEFAULT_STEPS, "min": 1, "max": 1000,
        "tooltip": "DDPM steps (official 50). SeeSR-Turbo weights: 2."}),
    "cfg": ("FLOAT", {"default": seesr.DEFAULT_GUIDANCE, "min": 0.0, "max": 20.0, "step": 0.1,
        "tooltip": "Classifier-free guidance (official 5.5; 1 or less: off, half the cost)."}),
}
OPTIONAL = {
    "start_point": (list(seesr.START_POINTS), {"default": "lr",
        "tooltip": "lr (official): start from the LR latent noised to t=999; noise: from pure noise."}),
    "official_tiles": ("BOOLEAN", {"default": True,
        "tooltip": "Official: tile only when the latent's area exceeds tile², with square tiles. "
                   "Off: tile when a side exceeds the tile, balanced per side (fewer calls on long images)."}),
}


class SeeSRSamplerV2:
    DESCRIPTION = ("Restores the LR image with SeeSR, the 50-step model AddSR was distilled from: slower than "
                   "AddSR, the official defaults (DDPM 50 steps, CFG 5.5, 768 px tiles).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The restored latent; decode with AddSR Tiled VAE Decode, then AddSR Finish.",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **INPUTS,
                "tile_size": ("INT", {"default": AUTO, "min": 0, "max": 4096, "step": 64,
                    "tooltip": "Diffusion tile in output pixels (official 768 = 96 latents). " + AUTO_TILE_TOOLTIP}),
                "tile_overlap": ("INT", {"default": seesr.OFFICIAL_OVERLAP_PX, "min": 0, "max": 2048, "step": 8,
                    "tooltip": "Tile overlap in output pixels (official 32; 256 for SeeSR-Turbo), at most half the tile."}),
            },
            "optional": OPTIONAL,
        }

    def sample(self, addsr_model, addsr_cond, positive, negative, seed=0, steps=seesr.DEFAULT_STEPS,
               cfg=seesr.DEFAULT_GUIDANCE, tile_size=AUTO, tile_overlap=seesr.OFFICIAL_OVERLAP_PX,
               start_point="lr", official_tiles=True):
        check_inputs(addsr_model, addsr_cond)
        if getattr(addsr_model, "family", "seesr") != "seesr":
            comfy_bridge.log.warning("AddSR: SeeSR Sampler got %s weights (%r); load SeeSR weights, or set the loader's "
                                     "family to seesr if these are SeeSR", addsr_model.family, addsr_model.name)
        options = SeeSROptions(steps=steps, guidance_scale=cfg, start_point=start_point, seed=seed,
                               latent_tile_px=tile_size, latent_overlap_px=tile_overlap, official_tiles=official_tiles)
        width = addsr_model.unet.module.config.cross_attention_dim
        z0 = run_sampler(addsr_model, addsr_cond, conditioning_tensor(positive, width=width),
                         conditioning_tensor(negative, "negative", width=width) if cfg > 1 else None, options)
        return (latent_output(addsr_cond, z0),)


class SeeSRSampler(SeeSRSamplerV2):
    """Deprecated: the SeeSR Sampler with its tiles in LATENT pixels (x 8 in the image), as saved
    workflows hold them; it runs :class:`SeeSRSamplerV2` on the same tiles in output pixels."""

    DEPRECATED = True
    DESCRIPTION = ("Deprecated (tiles in latent pixels): use SeeSR Sampler, whose tiles are in output pixels. "
                   "This one still runs workflows saved with it, with their values.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **INPUTS,
                "tile_size": ("INT", {"default": seesr.OFFICIAL_TILE_PX // 8, "min": MIN_TILE_PX // 8, "max": 512, "step": 8,
                    "tooltip": "Diffusion tile in LATENT pixels (x8 in the image; official 96). Halved on out-of-memory."}),
                "tile_overlap": ("INT", {"default": seesr.OFFICIAL_OVERLAP_PX // 8, "min": 0, "max": 256,
                    "tooltip": "Tile overlap in latent pixels (official 4; 32 for SeeSR-Turbo)."}),
            },
            "optional": OPTIONAL,
        }

    def sample(self, addsr_model, addsr_cond, positive, negative, seed=0, steps=seesr.DEFAULT_STEPS,
               cfg=seesr.DEFAULT_GUIDANCE, tile_size=seesr.OFFICIAL_TILE_PX // 8,
               tile_overlap=seesr.OFFICIAL_OVERLAP_PX // 8, start_point="lr", official_tiles=True):
        warn_if_overlap_clamped("SeeSR Sampler (old)", tile_size * 8, tile_overlap * 8)
        return super().sample(addsr_model, addsr_cond, positive, negative, seed, steps, cfg, tile_size * 8,
                              tile_overlap * 8, start_point, official_tiles)
