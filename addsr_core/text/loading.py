"""Load SD2's text encoder from the two layouts it is shipped in.

- the diffusers ``text_encoder/`` folder: transformers ``CLIPTextModel`` keys (``text_model.*``),
  ``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``. Its config already has 23
  layers: the penultimate-layer recipe is baked in.
- a single file in OpenCLIP's layout: the SD2 checkpoint's ``cond_stage_model.model.*`` (LDM's
  ``FrozenOpenCLIPEmbedder``), or a bare OpenCLIP ``open_clip_pytorch_model.bin``. It holds all 24
  blocks; SD2 runs blocks 0..22 and then ``ln_final``, so the last block is dropped on purpose, as
  are ``text_projection``, ``logit_scale`` and any ``visual.*`` tower (unused for conditioning).

Everything is built on the meta device and loaded strictly through :mod:`addsr_core.loading.io`.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Mapping

import torch

from ..errors import OptionsError
from ..loading.io import CheckpointError, assign_state_dict, read_state_dict, unwrap_state_dict
from ..models.config import ConfigError
from .config import TextEncoderConfig
from .encoder import CLIPTextEncoder

FAMILY = "SD2 text encoder (CLIPTextModel)"
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin", "model.fp16.safetensors", "pytorch_model.fp16.bin")
# transformers < 4.31 saved the (constant) position ids; we always use 0..T-1.
IGNORED_TRANSFORMERS_KEYS = ("text_model.embeddings.position_ids", "embeddings.position_ids")
# Read from a big single file only what a text encoder can be made of (safetensors skips the rest).
SINGLE_FILE_PREFIXES = (
    "cond_stage_model.", "token_embedding.", "positional_embedding", "transformer.", "ln_final.",
    "text_projection", "logit_scale", "attn_mask", "text_model.",
)
# OpenCLIP tensors SD2's conditioning never uses.
OPENCLIP_UNUSED = re.compile(r"^(visual\..*|text_projection|logit_scale|attn_mask)$")
OPENCLIP_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
OPENCLIP_BLOCK_RENAMES = {
    "ln_1.": "layer_norm1.",
    "ln_2.": "layer_norm2.",
    "attn.out_proj.": "self_attn.out_proj.",
    "mlp.c_fc.": "mlp.fc1.",
    "mlp.c_proj.": "mlp.fc2.",
}
OPENCLIP_TOP_RENAMES = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}
LAYER_CHOICES = ("penultimate", "last")


def build_text_encoder(
    config: TextEncoderConfig, state_dict: Mapping[str, torch.Tensor], *, source: str, dtype=None, device="cpu"
) -> CLIPTextEncoder:
    """Meta-construct the encoder and strictly assign ``state_dict`` (transformers key names)."""
    with torch.device("meta"):
        module = CLIPTextEncoder(config)
    assign_state_dict(module, state_dict, family=FAMILY, source=source, dtype=dtype, device=device)
    return module.eval().requires_grad_(False)


def load_text_encoder(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    layer: str = "penultimate",
    config: TextEncoderConfig | None = None,
) -> CLIPTextEncoder:
    """A diffusers folder (release root or ``text_encoder/``) or an OpenCLIP-layout single file.

    ``layer`` and ``config`` only apply to single files (a diffusers folder carries its config).
    """
    path = Path(path)
    if path.is_dir():
        return load_text_encoder_diffusers(path, dtype=dtype, device=device)
    return load_text_encoder_single_file(path, dtype=dtype, device=device, layer=layer, config=config)


def load_text_encoder_diffusers(
    folder: str | os.PathLike, *, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> CLIPTextEncoder:
    folder = Path(folder)
    if (folder / "text_encoder" / "config.json").is_file():
        folder = folder / "text_encoder"
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(
            f"No text encoder config.json in {str(folder)!r}. Point to the SD2 diffusers folder "
            "(containing text_encoder/) or to text_encoder/ itself."
        )
    try:
        config = TextEncoderConfig.from_transformers(json.loads(config_file.read_text(encoding="utf-8")))
    except (ValueError, ConfigError) as err:
        raise CheckpointError(f"{str(config_file)!r}: {err}") from None
    for name in WEIGHT_NAMES:
        file = folder / name
        if file.is_file():
            sd = unwrap_state_dict(read_state_dict(file, family=FAMILY, dtype=dtype))
            return build_text_encoder(config, normalise_transformers_keys(sd), source=str(file), dtype=dtype, device=device)
    raise CheckpointError(f"No text encoder weights in {str(folder)!r}: expected one of {WEIGHT_NAMES}.")


def normalise_transformers_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers >= 5 saves ``CLIPTextModel`` without the ``text_model.`` prefix that SD2's own
    files (transformers 4.25) carry; accept both, and drop stored position ids."""
    sd = {k: v for k, v in sd.items() if k not in IGNORED_TRANSFORMERS_KEYS}
    if "text_model.embeddings.token_embedding.weight" not in sd and "embeddings.token_embedding.weight" in sd:
        sd = {f"text_model.{k}": v for k, v in sd.items()}
    return sd


def load_text_encoder_single_file(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    layer: str = "penultimate",
    config: TextEncoderConfig | None = None,
) -> CLIPTextEncoder:
    sd = unwrap_state_dict(read_state_dict(path, family=FAMILY, dtype=dtype, prefixes=SINGLE_FILE_PREFIXES))
    return text_encoder_from_openclip(sd, source=os.fspath(path), dtype=dtype, device=device, layer=layer, config=config)


def find_openclip_prefix(keys) -> str:
    """The prefix under which an OpenCLIP text tower sits (``cond_stage_model.model.`` or none)."""
    keys = list(keys)
    prefixes = sorted({k[: -len("token_embedding.weight")] for k in keys if k.endswith("token_embedding.weight") and "text_model." not in k})
    if len(prefixes) == 1:
        return prefixes[0]
    if len(prefixes) > 1:
        raise CheckpointError(f"Found several OpenCLIP text towers (prefixes {prefixes}); pass the state dict of one.")
    if any(k.endswith("text_model.embeddings.token_embedding.weight") for k in keys):
        raise CheckpointError(
            "This file holds a transformers-layout CLIP text model, not OpenCLIP's. Load it as a diffusers "
            "text_encoder/ folder (config.json + weights) instead."
        )
    raise CheckpointError(
        "No OpenCLIP text encoder in this file: expected 'cond_stage_model.model.token_embedding.weight' "
        "(an SD2 single-file checkpoint) or 'token_embedding.weight' (an OpenCLIP model file)."
    )


def count_openclip_blocks(sd: Mapping[str, torch.Tensor]) -> int:
    indices = {int(m.group(1)) for k in sd if (m := OPENCLIP_BLOCK.match(k))}
    if indices != set(range(len(indices))):
        raise CheckpointError(f"OpenCLIP text blocks are not numbered 0..N-1 (found {sorted(indices)}); the file is damaged.")
    return len(indices)


def infer_openclip_config(
    sd: Mapping[str, torch.Tensor], *, layer: str = "penultimate", head_width: int = 64
) -> TextEncoderConfig:
    """Shapes give every size except the head count: OpenCLIP text towers use 64-wide heads.

    Activation (exact GELU) and LayerNorm eps (1e-5) are OpenCLIP ViT-H's; they are not in the file.
    """
    if layer not in LAYER_CHOICES:
        raise OptionsError(f"layer must be one of {LAYER_CHOICES}, got {layer!r}.")
    try:
        vocab_size, width = sd["token_embedding.weight"].shape
        max_length = sd["positional_embedding"].shape[0]
        mlp_width = sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    except KeyError as err:
        raise CheckpointError(f"OpenCLIP text encoder is missing {err.args[0]!r}; the file is incomplete.") from None
    blocks = count_openclip_blocks(sd)
    used = blocks - 1 if layer == "penultimate" else blocks
    if used < 1:
        raise CheckpointError(f"the OpenCLIP text tower has {blocks} block(s); the {layer} layer needs more.")
    if width % head_width:
        raise CheckpointError(f"text width {width} is not a multiple of the {head_width}-wide OpenCLIP heads; pass config=.")
    return TextEncoderConfig(
        vocab_size=vocab_size, width=width, num_layers=used, num_heads=width // head_width,
        mlp_width=mlp_width, max_length=max_length, activation="gelu", layer_norm_eps=1e-5,
    )


def openclip_to_transformers(sd: Mapping[str, torch.Tensor], *, num_layers: int) -> dict[str, torch.Tensor]:
    """Rename OpenCLIP text keys (no prefix) to ours; split the fused q/k/v projection (views, no copy).

    Blocks from ``num_layers`` on and the unused tensors are dropped; keys we do not know are kept
    under their own names so the strict check reports them.
    """
    out = {}
    for key, tensor in sd.items():
        if OPENCLIP_UNUSED.match(key):
            continue
        if key in OPENCLIP_TOP_RENAMES:
            out[OPENCLIP_TOP_RENAMES[key]] = tensor
            continue
        match = OPENCLIP_BLOCK.match(key)
        if match is None:
            out[key] = tensor
            continue
        index, rest = int(match.group(1)), match.group(2)
        if index >= num_layers:
            continue
        base = f"text_model.encoder.layers.{index}."
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = "weight" if rest.endswith("weight") else "bias"
            if tensor.shape[0] % 3:
                raise CheckpointError(f"{key} has shape {tuple(tensor.shape)}; a fused q/k/v projection needs 3 equal parts.")
            for name, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                out[f"{base}self_attn.{name}.{kind}"] = part
            continue
        renamed = next((new + rest[len(old):] for old, new in OPENCLIP_BLOCK_RENAMES.items() if rest.startswith(old)), None)
        out[base + renamed if renamed else key] = tensor
    return out


def text_encoder_from_openclip(
    sd: Mapping[str, torch.Tensor],
    *,
    source: str = "state dict",
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    layer: str = "penultimate",
    config: TextEncoderConfig | None = None,
) -> CLIPTextEncoder:
    """Build the encoder from an OpenCLIP-layout state dict (with or without ``cond_stage_model.model.``)."""
    if layer not in LAYER_CHOICES:
        raise OptionsError(f"layer must be one of {LAYER_CHOICES}, got {layer!r}.")
    prefix = find_openclip_prefix(sd.keys())
    sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    config = config or infer_openclip_config(sd, layer=layer)
    blocks = count_openclip_blocks(sd)
    expected_used = blocks - 1 if layer == "penultimate" else blocks
    if config.num_layers != expected_used:
        raise CheckpointError(
            f"{source!r} has {blocks} text blocks, so layer={layer!r} runs {expected_used}, "
            f"but the config asks for {config.num_layers}."
        )
    return build_text_encoder(config, openclip_to_transformers(sd, num_layers=config.num_layers), source=source, dtype=dtype, device=device)
