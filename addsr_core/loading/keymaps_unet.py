"""SD2 UNet key names: original LDM single-file layout <-> our diffusers layout.

The LDM UNet numbers its blocks flatly (``input_blocks.N.M``, ``middle_block.M``,
``output_blocks.N.M``); diffusers nests them (``down_blocks.L.resnets.I`` ...). The mapping is
computed from the block arithmetic, so it covers every SD2-shaped UNet (SD 2.x base/768-v,
SD-Turbo, StableSR) and StableSR's extra ``.spade.`` layers, which keep their names inside each
resnet.

- ``input_blocks.0.0`` is ``conv_in``; then each level has ``layers_per_block`` blocks of
  ``[resnet, attention?]`` and (except the last level) one ``[downsample]`` block.
- ``output_blocks`` hold ``layers_per_block + 1`` blocks per level, deepest level first:
  ``[resnet, attention?, upsample?]``; the upsample sits at index 1 without attention, 2 with it.
"""
from __future__ import annotations

import re

LDM_UNET_PREFIX = "model.diffusion_model."

# Resnet internals: LDM Sequential indices -> diffusers names. ``spade.*`` is the same on both sides.
_RESNET_LDM_TO_OURS = {
    "in_layers.0.": "norm1.",
    "in_layers.2.": "conv1.",
    "emb_layers.1.": "time_emb_proj.",
    "out_layers.0.": "norm2.",
    "out_layers.3.": "conv2.",
    "skip_connection.": "conv_shortcut.",
}
_RESNET_OURS_TO_LDM = {v: k for k, v in _RESNET_LDM_TO_OURS.items()}
_TOP_LDM_TO_OURS = {
    "time_embed.0.": "time_embedding.linear_1.",
    "time_embed.2.": "time_embedding.linear_2.",
    "input_blocks.0.0.": "conv_in.",
    "out.0.": "conv_norm_out.",
    "out.2.": "conv_out.",
}
_TOP_OURS_TO_LDM = {v: k for k, v in _TOP_LDM_TO_OURS.items()}


def _rename_prefix(rest: str, table: dict) -> str:
    for old, new in table.items():
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest


def ldm_unet_key_to_diffusers(key: str, layers_per_block: int = 2) -> str | None:
    """One LDM UNet key (without ``model.diffusion_model.``) -> ours; None if it is not a UNet key."""
    for old, new in _TOP_LDM_TO_OURS.items():
        if key.startswith(old):
            return new + key[len(old):]
    per_level = layers_per_block + 1
    if m := re.match(r"input_blocks\.(\d+)\.(\d+)\.(.+)$", key):
        n, j, rest = int(m[1]), int(m[2]), m[3]
        level, idx = divmod(n - 1, per_level)
        if idx == layers_per_block:
            return f"down_blocks.{level}.downsamplers.0.conv.{rest[3:]}" if rest.startswith("op.") else None
        if j == 0:
            return f"down_blocks.{level}.resnets.{idx}.{_rename_prefix(rest, _RESNET_LDM_TO_OURS)}"
        return f"down_blocks.{level}.attentions.{idx}.{rest}" if j == 1 else None
    if m := re.match(r"middle_block\.(\d)\.(.+)$", key):
        j, rest = int(m[1]), m[2]
        if j == 1:
            return f"mid_block.attentions.0.{rest}"
        return f"mid_block.resnets.{j // 2}.{_rename_prefix(rest, _RESNET_LDM_TO_OURS)}" if j in (0, 2) else None
    if m := re.match(r"output_blocks\.(\d+)\.(\d+)\.(.+)$", key):
        n, j, rest = int(m[1]), int(m[2]), m[3]
        level, idx = divmod(n, per_level)
        if j == 0:
            return f"up_blocks.{level}.resnets.{idx}.{_rename_prefix(rest, _RESNET_LDM_TO_OURS)}"
        if rest.startswith("conv."):
            return f"up_blocks.{level}.upsamplers.0.{rest}"
        return f"up_blocks.{level}.attentions.{idx}.{rest}" if j == 1 else None
    return None


def diffusers_unet_key_to_ldm(key: str, up_blocks_with_attention: set, layers_per_block: int = 2) -> str | None:
    """The inverse of :func:`ldm_unet_key_to_diffusers` (keys without prefix)."""
    for old, new in _TOP_OURS_TO_LDM.items():
        if key.startswith(old):
            return new + key[len(old):]
    per_level = layers_per_block + 1
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", key):
        level, kind, idx, rest = int(m[1]), m[2], int(m[3]), m[4]
        n = 1 + level * per_level + idx
        if kind == "resnets":
            return f"input_blocks.{n}.0.{_rename_prefix(rest, _RESNET_OURS_TO_LDM)}"
        return f"input_blocks.{n}.1.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$", key):
        return f"input_blocks.{(int(m[1]) + 1) * per_level}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.(resnets|attentions)\.(\d)\.(.+)$", key):
        kind, idx, rest = m[1], int(m[2]), m[3]
        if kind == "attentions":
            return f"middle_block.1.{rest}"
        return f"middle_block.{2 * idx}.{_rename_prefix(rest, _RESNET_OURS_TO_LDM)}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", key):
        level, kind, idx, rest = int(m[1]), m[2], int(m[3]), m[4]
        n = level * per_level + idx
        if kind == "resnets":
            return f"output_blocks.{n}.0.{_rename_prefix(rest, _RESNET_OURS_TO_LDM)}"
        return f"output_blocks.{n}.1.{rest}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)$", key):
        level = int(m[1])
        j = 2 if level in up_blocks_with_attention else 1
        return f"output_blocks.{level * per_level + layers_per_block}.{j}.{m[2]}"
    return None


def ldm_unet_to_diffusers(state_dict: dict, layers_per_block: int = 2, prefix: str = LDM_UNET_PREFIX) -> tuple[dict, list]:
    """Convert the UNet part of an LDM state dict to our key names.

    Keys under ``prefix`` are converted (``prefix=""`` for a bare LDM UNet); everything else in
    the file (VAE, text encoder, StableSR's encoder, EMA copies) is ignored. Returns the converted
    dict and the prefixed keys that could not be placed, so a loader can name them.
    """
    out, unplaced = {}, []
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        new = ldm_unet_key_to_diffusers(key[len(prefix):], layers_per_block)
        if new is None:
            unplaced.append(key)
        else:
            out[new] = value
    return out, unplaced


def diffusers_unet_to_ldm(state_dict: dict, layers_per_block: int = 2, prefix: str = LDM_UNET_PREFIX) -> dict:
    """Our UNet state dict -> LDM single-file keys (for export, and to check the mapping round trip)."""
    with_attn = {int(m[1]) for k in state_dict if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    out = {}
    for key, value in state_dict.items():
        new = diffusers_unet_key_to_ldm(key, with_attn, layers_per_block)
        if new is None:
            raise KeyError(f"{key!r} is not a key of an SD2-style UNet; cannot name it in the LDM layout")
        out[prefix + new] = value
    return out
