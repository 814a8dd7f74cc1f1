"""Stand-ins for ComfyUI's VAE and CLIP objects, and a tiny model folder, for node tests."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from addsr_core.loading.keymaps import diffusers_vae_to_ldm
from addsr_core.loading.models import load_vae
from addsr_core.text import TextConditioner
from addsr_core.addsr.tiny import write_tiny_kit


def module_from_state_dict(sd: dict) -> nn.Module:
    """An nn.Module whose state_dict() is exactly ``sd`` (dotted names become submodules)."""
    root = nn.Module()
    for key, value in sd.items():
        *path, leaf = key.split(".")
        mod = root
        for part in path:
            if not hasattr(mod, part):
                mod.add_module(part, nn.Module())
            mod = getattr(mod, part)
        mod.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
    return root


class FakeComfyVAE:
    """Like comfy.sd.VAE for an SD2 checkpoint: an LDM-layout ``first_stage_model``."""

    def __init__(self, sd2_folder: Path):
        ours = load_vae(sd2_folder)
        self.first_stage_model = module_from_state_dict(diffusers_vae_to_ldm(ours.state_dict(), prefix=""))
        # ComfyUI's real VAE is full of GroupNorms; the group count is read off them.
        self.first_stage_model.add_module("norm_probe", nn.GroupNorm(ours.config.norm_num_groups, 64, affine=False))


class FakeComfyCLIP:
    """Like comfy.sd.CLIP: tokenize() then encode_from_tokens()."""

    def __init__(self, sd2_folder: Path):
        self.conditioner = TextConditioner.from_pretrained(sd2_folder)

    def tokenize(self, text):
        return text

    def encode_from_tokens(self, tokens):
        return self.conditioner([tokens])

    def conditioning(self, text):
        return [[self.encode_from_tokens(text), {"pooled_output": None}]]


def make_kit(root: Path) -> dict:
    paths = write_tiny_kit(root)
    return paths
