"""AddSR Sampler: 1-4 refining steps, tiled for big images, with previews and Cancel."""
from __future__ import annotations

import dataclasses

from addsr_core.pipeline import AddSRModels, UpscaleOptions, count_network_calls, sample, tile_overlap_px

from . import host
from .common import CATEGORY, AddSRInputError, conditioning_tensor
from .encode import AddSRCond
from .loaders import AddSRModel

MIN_TILE_PX = 256


class AddSRSampler:
    DESCRIPTION = "Restores the LR image with AddSR in 1-4 steps, refining its own condition at each step (PSR)."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The restored latent; decode with AddSR Tiled VAE Decode (or VAE Decode).",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "addsr_model": ("ADDSR_MODEL", {"tooltip": "From AddSR Load Model."}),
                "addsr_cond": ("ADDSR_COND", {"tooltip": "From AddSR Encode LR."}),
                "positive": ("CONDITIONING", {"tooltip": "Prompt from CLIP Text Encode (SD2 CLIP). Tags + "
                    "'clean, high-resolution, 8k, extremely detailed, best quality, sharp' work well."}),
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt; only used when cfg > 1."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "Random seed."}),
                "steps": ("INT", {"default": 4, "min": 1, "max": 4,
                    "tooltip": "1-4. AddSR was distilled for 4; 1 is fastest, 4 most detailed."}),
                "psr_weight": ("FLOAT", {"default": 0.4, "min": 0.0, "max": 1.0, "step": 0.05,
                    "tooltip": "How much of each step's prediction feeds the next step's condition (official 0.4). "
                               "Higher: more generated detail; lower: closer to the input."}),
                "cfg": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 20.0, "step": 0.1,
                    "tooltip": "Classifier-free guidance. 0 (official): off. Above 1 uses the negative prompt and doubles the cost."}),
                "tile_size": ("INT", {"default": 1024, "min": MIN_TILE_PX, "max": 4096, "step": 64,
                    "tooltip": "Diffusion tile in output pixels. Images larger than this are processed in "
                               "overlapping tiles; halved automatically on out-of-memory."}),
                "tile_overlap": ("INT", {"default": 256, "min": 0, "max": 2048, "step": 32,
                    "tooltip": "Overlap between tiles in output pixels (at most a third of the tile); more hides seams "
                               "better but costs time."}),
            },
            "optional": {
                "recompute_tokens": ("BOOLEAN", {"default": True,
                    "tooltip": "Recompute RAM tokens from each step's refined image (official). Off: reuse the LR's tokens, faster."}),
            },
        }

    def sample(self, addsr_model, addsr_cond, positive, negative, seed=0, steps=4, psr_weight=0.4, cfg=0.0,
               tile_size=1024, tile_overlap=256, recompute_tokens=True):
        if not isinstance(addsr_model, AddSRModel):
            raise AddSRInputError("addsr_model must come from AddSR Load Model")
        if not isinstance(addsr_cond, AddSRCond):
            raise AddSRInputError("addsr_cond must come from AddSR Encode LR")
        options = UpscaleOptions(
            scale=addsr_cond.cond.scale, steps=steps, psr_weight=psr_weight, seed=seed, guidance_scale=cfg,
            latent_tile_px=tile_size, latent_overlap_px=tile_overlap_px(tile_size, tile_overlap),
            recompute_tokens=recompute_tokens,
        )
        width = addsr_model.unet.module.config.cross_attention_dim
        z0 = run_sampler(addsr_model, addsr_cond, conditioning_tensor(positive, width=width),
                         conditioning_tensor(negative, "negative", width=width) if cfg > 1 else None, options)
        return (latent_output(addsr_cond, z0),)


def latent_output(addsr_cond: AddSRCond, z0):
    """ComfyUI's LATENT (unscaled, as VAE Decode wants it) for a sampled z0, with the output size."""
    vae = addsr_cond.vae.vae
    return {"samples": (z0 / vae.scaling_factor).float().cpu(), "addsr_output_size": addsr_cond.cond.output_size}


def run_sampler(addsr_model: AddSRModel, addsr_cond: AddSRCond, positive, negative, options: UpscaleOptions,
                method=None):
    """Sample, halving the tile on out-of-memory down to MIN_TILE_PX, then a clear error.

    ``method``: a pipeline module with ``sample``/``count_network_calls`` (``addsr_core.seesr``);
    None is AddSR's.
    """
    managed = [addsr_model.unet, addsr_model.controlnet, addsr_cond.vae.managed, addsr_cond.ram.encoder]
    current = options

    def attempt(tile):
        nonlocal current
        if tile != current.latent_tile_px:
            current = dataclasses.replace(
                current, latent_tile_px=tile, latent_overlap_px=tile_overlap_px(tile, current.latent_overlap_px),
                vae_decode_tile_px=max(256, current.vae_decode_tile_px // 2),
            )
        return _sample_once(addsr_model, addsr_cond, positive, negative, current, managed, method)

    def exhausted(tile):
        return AddSRInputError(f"out of memory even with {tile}px tiles. Lower the VAE tile size, use fp16, "
                               "or start ComfyUI with --lowvram.")

    return host.retry_smaller_on_oom(attempt, options.latent_tile_px, floor=MIN_TILE_PX, what="AddSR:",
                                     shrink=lambda tile: tile // 2 // 64 * 64, exhausted=exhausted)


def _sample_once(addsr_model, addsr_cond, positive, negative, options, managed, method):
    device = host.load_to_device(managed)
    cond = addsr_cond.cond
    count, run = (count_network_calls, sample) if method is None else (method.count_network_calls, method.sample)
    progress = host.Progress(count(options, cond.moments.shape[-2:]))

    def on_step(k, total, pred_z0):
        progress.update(0, host.latent_preview(pred_z0))

    models = AddSRModels(
        unet=addsr_model.unet.module, controlnet=addsr_model.controlnet.module, vae=addsr_cond.vae.vae,
        ram=addsr_cond.ram.encoder.module,
    )
    host.check_interrupt()
    return run(models, cond, positive.to(device), None if negative is None else negative.to(device), options,
               on_tile=lambda: progress.update(1), on_step=on_step)
