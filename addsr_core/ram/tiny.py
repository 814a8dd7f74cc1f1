"""Tiny random RAM + DAPE files in the real release layouts, for self-checks and tests.

``ram_base.pth`` is pickled ``{'model': state_dict}`` with everything the real
``ram_swin_large_14m.pth`` is expected to carry that matters to a loader: un-merged weights, the
recomputed buffers, the tag head under its legacy ``vision_multi.*`` name, and stand-ins for the
unused Tag2Text parts. ``DAPE.pth`` is a flat dict of ``*lora_*`` tensors, including BERT LoRAs the
loader must skip and the ``tag_encoder`` LoRAs tied to the tag head. The geometry is the real one
(384 input, 145 tokens), only narrower. Plumbing only, never quality.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .config import RAMConfig, SwinConfig, TaggingHeadConfig
from .model import RAM

TINY_RAM_CONFIG = RAMConfig(
    SwinConfig(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8)),
    tagging=TaggingHeadConfig(num_classes=12, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64),
)
TINY_TAGS = ["dog", "cat", "grass", "sky", "tree", "car", "person", "building", "water", "flower", "road", "cloud"]


def _random_like(shape, g, name: str) -> torch.Tensor:
    noise = torch.randn(shape, generator=g) * 0.05
    is_norm_scale = len(shape) == 1 and name.endswith("weight") and "norm" in name.lower()
    return 1 + noise if is_norm_scale else noise


def tiny_ram_files_state(config: RAMConfig = TINY_RAM_CONFIG, seed: int = 0) -> tuple[dict, dict]:
    """(base state dict as the official file names it, DAPE LoRA dict), seeded."""
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        model = RAM(config)
    base = {k: _random_like(v.shape, g, k) for k, v in model.state_dict().items()}
    lora = {}
    for key, w in list(base.items()):
        if key.endswith("attn.qkv.weight"):
            c = w.shape[1]
            lora[key[:-6] + "lora_A"] = torch.randn(16, c, generator=g) * 0.2
            lora[key[:-6] + "lora_B"] = torch.randn(2 * c, 8, generator=g) * 0.2
        elif key.startswith("tagging_head.") and key.endswith(("self.query.weight", "self.key.weight")):
            out, inp = w.shape
            for owner in ("tagging_head.", "tag_encoder."):
                module = owner + key[len("tagging_head."):-len(".weight")]
                lora[module + ".lora_A"] = torch.randn(8, inp, generator=g) * 0.2
                lora[module + ".lora_B"] = torch.randn(out, 8, generator=g) * 0.2
    # What the real base file has besides: buffers the loader drops, Tag2Text parts it skips.
    for name, buf in RAM(config).named_buffers():
        if buf is not None:
            base[name] = buf.clone()
    base["tag_encoder.embeddings.word_embeddings.weight"] = torch.randn(8, 4, generator=g)
    base["text_decoder.cls.predictions.bias"] = torch.randn(8, generator=g)
    lora["text_decoder.bert.encoder.layer.0.attention.self.query.lora_A"] = torch.randn(8, 4, generator=g)
    lora["text_decoder.bert.encoder.layer.0.attention.self.query.lora_B"] = torch.randn(4, 8, generator=g)
    base = {("vision_multi." + k[len("tagging_head."):] if k.startswith("tagging_head.") else k): v for k, v in base.items()}
    return base, lora


def write_tiny_ram(root: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write ``ram_base.pth``, ``DAPE.pth``, ``ram_tag_list.txt`` and ``ram_tag_list_threshold.txt``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base, lora = tiny_ram_files_state(seed=seed)
    paths = {
        "ram": root / "ram_base.pth",
        "dape": root / "DAPE.pth",
        "tag_list": root / "ram_tag_list.txt",
        "thresholds": root / "ram_tag_list_threshold.txt",
    }
    torch.save({"model": base}, paths["ram"])
    torch.save(lora, paths["dape"])
    paths["tag_list"].write_text("\n".join(TINY_TAGS) + "\n", encoding="utf-8")
    # Random weights score every tag near 0.5-0.6: these thresholds keep every other tag.
    thresholds = ["0.3" if i % 2 == 0 else "0.9" for i in range(len(TINY_TAGS))]
    paths["thresholds"].write_text("\n".join(thresholds) + "\n", encoding="utf-8")
    return paths
