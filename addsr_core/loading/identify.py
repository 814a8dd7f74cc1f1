"""Recognise what a checkpoint is from its keys, so a wrong pick gets a helpful error."""
from __future__ import annotations

_SIGNATURES = [
    ("model.diffusion_model.", "a full Stable Diffusion single-file checkpoint (LDM layout)"),
    ("structcond_stage_model.", "a StableSR checkpoint"),
    ("decoder.fusion_layer_", "a StableSR CFW VAE"),
    ("first_stage_model.", "a Stable Diffusion VAE inside a single-file checkpoint"),
    ("controlnet_cond_embedding.", "a ControlNet"),
    ("unet.", "an AddSR packed file (unet + controlnet)"),
    ("visual_encoder.", "a RAM/DAPE image encoder"),
    ("text_model.", "a CLIP text encoder"),
    ("cond_stage_model.", "a Stable Diffusion text encoder"),
    ("down_blocks.0.resnets.0.time_emb_proj.", "a diffusers UNet"),
    ("encoder.down_blocks.", "a diffusers VAE"),
    ("encoder.down.", "an LDM-layout VAE"),
    ("input_blocks.", "an LDM-layout UNet"),
]


def describe_checkpoint(keys) -> str:
    keys = list(keys)
    for prefix, name in _SIGNATURES:
        if any(k.startswith(prefix) for k in keys):
            if prefix == "down_blocks.0.resnets.0.time_emb_proj.":
                if any(".image_attentions." in k for k in keys):
                    return "an AddSR/SeeSR UNet"
                if any("attn2.to_k.weight" in k for k in keys):
                    return "a diffusers UNet without AddSR's image cross-attention (plain SD?)"
            return name
    return "an unrecognised checkpoint"
