"""``addsr selfcheck``: the whole pipeline on a tiny random model, to check an install works."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch


def load_tiny_models(paths: dict, *, dtype=None, device="cpu"):
    """AddSRModels from :func:`~addsr_core.addsr.tiny.write_tiny_kit`'s files, through the real loaders."""
    from .loading.models import load_vae
    from .loading.pack import load_addsr
    from .stages import AddSRModels
    from .ram import load_ram
    from .text import TextConditioner

    unet, controlnet = load_addsr(paths["addsr"], dtype=dtype, device=device)
    ram, tagger = load_ram(paths["ram"], paths["dape"], tag_list=paths["tag_list"], dtype=dtype, device=device)
    text = TextConditioner.from_pretrained(paths["sd2"], dtype=dtype, device=device)
    return AddSRModels(unet, controlnet, load_vae(paths["sd2"], dtype=dtype, device=device), ram, tagger, text)


def run_selfcheck() -> int:
    from .addsr.tiny import write_tiny_kit
    from .pipeline import AddSROptions, upscale

    print("AddSR self-check: this checks that the INSTALL works (loaders, sampler, tiling, colour fix).")
    print("It uses a tiny model with random weights, so the picture it makes is noise: it says nothing about quality.")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        models = load_tiny_models(write_tiny_kit(Path(tmp)))
        lr = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))
        # Small tiles on purpose: the check must cross the sampler's and the VAE decoder's tile seams
        # (the encoder runs whole: its statistics pass may hold a tile with its halo, and this fits).
        options = AddSROptions(min_size=128, latent_tile_px=128, latent_overlap_px=32, vae_encode_tile_px=128,
                                 vae_decode_tile_px=128, vae_overlap_px=32)
        out = upscale(models, lr, options)
    expected = (1, 3, 160, 224)
    ok = tuple(out.shape) == expected and bool(torch.isfinite(out).all()) and 0 <= out.min() and out.max() <= 1
    took = time.perf_counter() - start
    print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
    if ok:
        print(f"OK: 40x56 -> {out.shape[-1]}x{out.shape[-2]} in {took:.1f}s with tiled diffusion.")
        return 0
    print(f"FAILED: got output {tuple(out.shape)} (expected {expected}), finite={bool(torch.isfinite(out).all())}")
    return 1
