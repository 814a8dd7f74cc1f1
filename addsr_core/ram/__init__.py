"""RAM (Swin-L) with AddSR's DAPE LoRA: the 145x512 image tokens AddSR conditions on, and RAM's tags.

- :func:`load_ram` -> ``(RAM, RamTagger | None)`` from ``ram_swin_large_14m.pth`` (+ ``DAPE.pth``),
  or from one merged ``.safetensors`` written by :func:`save_merged_ram`.
- ``RAM.represent(images01, resize="bilinear" | "bicubic")`` -> [B,145,512] tokens
  (bilinear: the official first step on the LR; bicubic: the official PSR steps).
- ``RamTagger.tags(images01)`` -> ``["tag1, tag2, ...", ...]``, as AddSR's prompt uses them.
"""
from .config import RAM_TOKEN_WIDTH, RAMConfig, SwinConfig, TaggingHeadConfig, infer_ram_config
from .loading import (
    UNUSED_PREFIXES,
    build_ram,
    expected_lora_keys,
    load_ram,
    load_ram_model,
    merge_dape,
    normalise_base_keys,
    save_merged_ram,
)
from .lora import LORA_SCALING, linear_lora_delta, qkv_lora_delta
from .model import IMAGENET_MEAN, IMAGENET_STD, RAM, RESIZE_MODES, ram_preprocess
from .tagger import DEFAULT_THRESHOLD, RamTagger, TagListError, read_class_thresholds, read_tag_list

__all__ = [
    "DEFAULT_THRESHOLD", "IMAGENET_MEAN", "IMAGENET_STD", "LORA_SCALING", "RAM", "RAMConfig", "RAM_TOKEN_WIDTH",
    "RESIZE_MODES", "RamTagger", "SwinConfig", "TagListError", "TaggingHeadConfig", "UNUSED_PREFIXES", "build_ram",
    "expected_lora_keys", "infer_ram_config", "linear_lora_delta", "load_ram", "load_ram_model", "merge_dape",
    "normalise_base_keys", "qkv_lora_delta", "ram_preprocess", "read_class_thresholds", "read_tag_list",
    "save_merged_ram",
]
