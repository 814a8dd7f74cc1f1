"""Tiny random-weight checkpoints in the real on-disk layouts.

They exercise exactly the loaders and code paths real checkpoints use, in seconds on a CPU: the
install self-check, the node and workflow tests, and the CLI tests use them. They check plumbing,
never quality.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..loading.models import write_diffusers_folder
from ..models import AutoencoderKL, ControlNetModel, UNet2DConditionModel, UNetConfig, VAEConfig

TEXT_WIDTH = 32

TINY_UNET = {
    "_class_name": "UNet2DConditionModel",
    "block_out_channels": [32, 64],
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 1,
    "attention_head_dim": [2, 4],
    "cross_attention_dim": TEXT_WIDTH,
    "norm_num_groups": 8,
    "use_linear_projection": True,
    "use_image_cross_attention": True,
}
TINY_CONTROLNET = {**TINY_UNET, "_class_name": "ControlNetModel", "conditioning_embedding_out_channels": [16, 32, 96, 256]}
for _key in ("up_block_types",):
    TINY_CONTROLNET.pop(_key)
TINY_VAE = {
    "_class_name": "AutoencoderKL",
    "block_out_channels": [32, 32, 64, 64],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "latent_channels": 4,
    "scaling_factor": 0.18215,
}
TINY_TEXT = {
    "architectures": ["CLIPTextModel"],
    "vocab_size": 520,
    "hidden_size": TEXT_WIDTH,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
}


def randomize(module: torch.nn.Module, generator: torch.Generator, std: float = 0.05) -> torch.nn.Module:
    """Seeded, non-zero weights everywhere (norm scales near 1 so activations stay tame)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=generator) * std
            is_norm_scale = p.ndim == 1 and name.endswith("weight") and "norm" in name
            p.copy_(1 + noise if is_norm_scale else noise)
    return module


def write_tiny_addsr(root: Path, seed: int = 0, cross_attention_dim: int | None = None) -> Path:
    """``root/unet`` and ``root/controlnet`` in the official diffusers release layout.

    ``cross_attention_dim`` overrides the text width (to match another CLIP, e.g. a host's)."""
    width = {} if cross_attention_dim is None else {"cross_attention_dim": cross_attention_dim}
    unet_cfg, control_cfg = {**TINY_UNET, **width}, {**TINY_CONTROLNET, **width}
    g = torch.Generator().manual_seed(seed)
    unet = randomize(UNet2DConditionModel(UNetConfig.from_diffusers(unet_cfg)), g)
    controlnet = randomize(ControlNetModel(UNetConfig.from_diffusers(control_cfg)), g)
    write_diffusers_folder(root / "unet", unet_cfg, unet.state_dict())
    write_diffusers_folder(root / "controlnet", control_cfg, controlnet.state_dict())
    return root


TINY_MERGES = [("t", "h"), ("a", "n"), ("e", "r"), ("i", "n")]


def _byte_level_vocab() -> dict:
    from ..text.tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    symbols += [s + "</w>" for s in symbols] + ["".join(m) for m in TINY_MERGES] + ["<|startoftext|>", "<|endoftext|>"]
    return {s: i for i, s in enumerate(symbols)}


def write_tiny_sd2(root: Path, seed: int = 1) -> Path:
    """An SD2-base-like diffusers folder: ``vae/``, ``text_encoder/``, ``tokenizer/`` (a toy vocabulary)."""
    from ..text.config import TextEncoderConfig
    from ..text.encoder import CLIPTextEncoder

    g = torch.Generator().manual_seed(seed)
    vae = randomize(AutoencoderKL(VAEConfig.from_diffusers(TINY_VAE)), g)
    write_diffusers_folder(root / "vae", TINY_VAE, vae.state_dict())
    text = randomize(CLIPTextEncoder(TextEncoderConfig.from_transformers(TINY_TEXT)), g)
    write_diffusers_folder(root / "text_encoder", TINY_TEXT, text.state_dict(), "model.safetensors")
    tok = root / "tokenizer"
    tok.mkdir(parents=True, exist_ok=True)
    (tok / "vocab.json").write_text(json.dumps(_byte_level_vocab(), ensure_ascii=False), encoding="utf-8")
    merges = "\n".join(" ".join(m) for m in TINY_MERGES)
    (tok / "merges.txt").write_text(f"#version: 0.2\n{merges}\n", encoding="utf-8")
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "!"}
    (tok / "special_tokens_map.json").write_text(json.dumps(specials))
    return root


def write_tiny_kit(root: Path, seed: int = 0) -> dict:
    """Everything the pipeline needs, in release layouts: AddSR, SD2 base, RAM + DAPE + tag list."""
    from ..ram.tiny import write_tiny_ram

    root = Path(root)
    paths = {"addsr": write_tiny_addsr(root / "addsr" / "AddSR-tiny", seed), "sd2": write_tiny_sd2(root / "sd2", seed + 1)}
    paths.update(write_tiny_ram(root / "ram", seed + 2))
    return paths

