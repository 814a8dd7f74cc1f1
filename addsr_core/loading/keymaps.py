"""Key-name translations between official checkpoint layouts and our diffusers-layout modules."""
from __future__ import annotations

import re

# Older diffusers VAE uploads name the mid-block attention like this (README §1).
LEGACY_VAE_ATTENTION = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}
LDM_VAE_PREFIX = "first_stage_model."


def rename_legacy_vae_keys(state_dict: dict) -> dict:
    out = {}
    for key, value in state_dict.items():
        if ".mid_block.attentions." in key:
            for old, new in LEGACY_VAE_ATTENTION.items():
                key = key.replace(old, new)
        out[key] = value
    return out


def _ldm_vae_key_to_diffusers(key: str, num_levels: int) -> str:
    """One LDM VAE key (no prefix) -> the diffusers AutoencoderKL key."""
    rules = [
        (r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out."),
        (r"^encoder\.down\.(\d+)\.block\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2."),
        (r"^encoder\.down\.(\d+)\.downsample\.conv\.", r"encoder.down_blocks.\1.downsamplers.0.conv."),
        (r"^(encoder|decoder)\.mid\.block_(\d)\.", lambda m: f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}."),
        (r"^(encoder|decoder)\.mid\.attn_1\.norm\.", r"\1.mid_block.attentions.0.group_norm."),
        (r"^(encoder|decoder)\.mid\.attn_1\.q\.", r"\1.mid_block.attentions.0.to_q."),
        (r"^(encoder|decoder)\.mid\.attn_1\.k\.", r"\1.mid_block.attentions.0.to_k."),
        (r"^(encoder|decoder)\.mid\.attn_1\.v\.", r"\1.mid_block.attentions.0.to_v."),
        (r"^(encoder|decoder)\.mid\.attn_1\.proj_out\.", r"\1.mid_block.attentions.0.to_out.0."),
        (r"^decoder\.up\.(\d+)\.block\.(\d+)\.", lambda m: f"decoder.up_blocks.{num_levels - 1 - int(m[1])}.resnets.{m[2]}."),
        (r"^decoder\.up\.(\d+)\.upsample\.conv\.", lambda m: f"decoder.up_blocks.{num_levels - 1 - int(m[1])}.upsamplers.0.conv."),
        (r"\.nin_shortcut\.", ".conv_shortcut."),
    ]
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def ldm_vae_to_diffusers(state_dict: dict, num_levels: int = 4) -> dict:
    """Convert an LDM-layout VAE state dict (``first_stage_model.`` prefix optional) to ours.

    Mid-block attention weights are 1x1 convs in LDM and Linear in diffusers: drop the 1x1.
    Keys outside the VAE (UNet, text encoder, training loss) are left out.
    """
    out = {}
    for key, value in state_dict.items():
        if key.startswith(LDM_VAE_PREFIX):
            key = key[len(LDM_VAE_PREFIX):]
        elif not key.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")):
            continue
        new = _ldm_vae_key_to_diffusers(key, num_levels)
        if ".mid_block.attentions.0.to_" in new and new.endswith("weight") and value.ndim == 4:
            value = value[:, :, 0, 0]
        out[new] = value
    return out


def diffusers_vae_to_ldm(state_dict: dict, num_levels: int = 4, prefix: str = LDM_VAE_PREFIX) -> dict:
    """The inverse of :func:`ldm_vae_to_diffusers` (for exporting single-file checkpoints)."""
    probe = {}
    for key in _all_ldm_vae_keys(state_dict, num_levels):
        probe[_ldm_vae_key_to_diffusers(key, num_levels)] = key
    out = {}
    for key, value in state_dict.items():
        ldm = probe[key]
        if ".mid.attn_1." in ldm and ldm.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]
        out[prefix + ldm] = value
    return out


def _all_ldm_vae_keys(diffusers_sd: dict, num_levels: int):
    """Invert the rules by pattern: rewrite diffusers names to LDM names."""
    for key in diffusers_sd:
        k = key
        k = re.sub(r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out.", k)
        k = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", k)
        k = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.", r"encoder.down.\1.downsample.conv.", k)
        k = re.sub(r"^(encoder|decoder)\.mid_block\.resnets\.(\d)\.", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}.", k)
        k = re.sub(r"^(encoder|decoder)\.mid_block\.attentions\.0\.group_norm\.", r"\1.mid.attn_1.norm.", k)
        k = re.sub(r"^(encoder|decoder)\.mid_block\.attentions\.0\.to_(q|k|v)\.", r"\1.mid.attn_1.\2.", k)
        k = re.sub(r"^(encoder|decoder)\.mid_block\.attentions\.0\.to_out\.0\.", r"\1.mid.attn_1.proj_out.", k)
        k = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"decoder.up.{num_levels - 1 - int(m[1])}.block.{m[2]}.", k)
        k = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.", lambda m: f"decoder.up.{num_levels - 1 - int(m[1])}.upsample.conv.", k)
        k = k.replace(".conv_shortcut.", ".nin_shortcut.")
        yield k


def looks_like_ldm_vae(state_dict: dict) -> bool:
    return any(k.startswith(LDM_VAE_PREFIX) or k.startswith("encoder.down.") for k in state_dict)


def strip_prefix(state_dict: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
