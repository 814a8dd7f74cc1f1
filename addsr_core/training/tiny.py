"""A tiny random training kit in the real file layouts: plumbing tests of the trainer, never quality.

``write_tiny_training_kit(root)`` writes the tiny AddSR/SeeSR folder (teacher = student start),
SD2 (VAE, text encoder, tokenizer), RAM + DAPE, small DINO / DINOv2 ViT files, a few generated
image pairs with tags, and held-out LR images; it returns the config overrides that point at them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from ..addsr.tiny import randomize, write_tiny_kit
from .vit import DINO_VITS16, DINOV2_VITS14, VisionTransformer

import dataclasses

TINY_DINO = dataclasses.replace(DINO_VITS16, img_size=32, embed_dim=32, num_heads=1)  # depth 12: hooks 2/5/8/11
TINY_DINOV2 = dataclasses.replace(DINOV2_VITS14, img_size=56, embed_dim=32, depth=3, num_heads=1)


def _write_vit(path: Path, cfg, seed: int) -> Path:
    vit = randomize(VisionTransformer(cfg), torch.Generator().manual_seed(seed), std=0.1)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    return path


def _image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth colour blobs plus a little texture, so degradations and losses see structure."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = np.zeros((h, w, 3))
    for c in range(3):
        for _ in range(3):
            cy, cx, s = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.4)
            out[..., c] += rng.uniform(0.3, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    out += 0.05 * rng.standard_normal((h, w, 3))
    out = (out - out.min()) / (out.max() - out.min() + 1e-8)
    return (out * 255).round().astype(np.uint8)


def write_tiny_training_kit(root, n_images: int = 4, size: int = 128, scale: int = 4, seed: int = 0) -> dict:
    """Write everything under ``root``; returns nested config overrides (models, data, discriminator)."""
    root = Path(root)
    kit = write_tiny_kit(root / "models", seed)
    dino = _write_vit(root / "models" / "dino_tiny.safetensors", TINY_DINO, seed + 10)
    dinov2 = _write_vit(root / "models" / "dinov2_tiny.safetensors", TINY_DINOV2, seed + 11)
    rng = np.random.default_rng(seed)
    pairs, hr, val = root / "pairs", root / "hr", root / "val"
    for d in (pairs / "gt", pairs / "sr_bicubic", pairs / "tag", hr, val):
        d.mkdir(parents=True, exist_ok=True)
    tags = ["dog, grass", "sky, cloud", "car, road", "tree, flower", "building", "water"]
    for i in range(n_images):
        gt = _image(rng, size, size)
        lr = Image.fromarray(gt).resize((size // scale, size // scale), Image.BICUBIC)
        Image.fromarray(gt).save(pairs / "gt" / f"img{i:02d}.png")
        lr.resize((size, size), Image.BICUBIC).save(pairs / "sr_bicubic" / f"img{i:02d}.png")
        (pairs / "tag" / f"img{i:02d}.txt").write_text(tags[i % len(tags)])
        Image.fromarray(_image(rng, size + 32, size + 48)).save(hr / f"hr{i:02d}.png")
    Image.fromarray(_image(rng, size // scale, size // scale)).save(val / "val00.png")
    return {
        "models": {
            "sd2_base": str(kit["sd2"]), "teacher": str(kit["addsr"]), "student": str(kit["addsr"]),
            "ram": str(kit["ram"]), "dape": str(kit["dape"]), "dino_vits16": str(dino), "dinov2_vits14": str(dinov2),
        },
        "data": {
            "source": "paired", "paired_roots": [str(pairs)], "hr_folders": [str(hr)], "resolution": size,
            "min_pixels": 0, "min_file_kb": 0, "degradation": {"scale": scale},
        },
        "discriminator": {"c_dim": TINY_DINOV2.embed_dim, "cmap_dim": 8, "cond_image_size": TINY_DINOV2.img_size},
        "_paths": {"val": str(val), "root": str(root), "addsr": str(kit["addsr"])},
    }
