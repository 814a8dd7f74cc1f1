"""DAPE's LoRA, merged into RAM's weights once at load time (what loralib does on ``eval()``).

Official layers (loralib 0.1.2, ``lora_alpha=1``, ``r=8`` -> scaling 1/8):

- Swin ``attn.qkv`` = ``MergedLinear(C, 3C, r=8, enable_lora=[True, False, True])``:
  ``lora_A`` [16, C] (rows 0-7 q, 8-15 v), ``lora_B`` [2C, 8] (rows 0..C-1 q, C..2C-1 v);
  ``W[0:C] += B[:C] @ A[:8] / 8`` and ``W[2C:3C] += B[C:] @ A[8:] / 8``; the k rows are untouched.
- BERT ``query``/``key`` = ``lora.Linear(in, out, r=8)``: ``W += B @ A / 8``.

The tag head shares (ties) its query/key weights with the lowest layers of ``tag_encoder``
(``tie_encoder_decoder_weights``). Each of the two loralib layers adds its own delta to that one
shared tensor on ``eval()``, so the weight the official tag head uses is
``W + dW(tagging_head) + dW(tag_encoder)``; :func:`tag_head_lora_deltas` reproduces that.
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..errors import AddSRError

LORA_RANK = 8
LORA_ALPHA = 1
LORA_SCALING = LORA_ALPHA / LORA_RANK
LORA_SUFFIXES = (".lora_A", ".lora_B")


class LoRAShapeError(AddSRError):
    pass


def is_lora_key(key: str) -> bool:
    return ".lora_" in key


def qkv_lora_delta(lora_a: torch.Tensor, lora_b: torch.Tensor, *, scaling: float = LORA_SCALING) -> torch.Tensor:
    """[3C, C] delta of a q/v-only MergedLinear LoRA (zero k rows), computed in float32."""
    two_r, c = lora_a.shape
    if two_r % 2 or lora_b.shape != (2 * c, two_r // 2):
        raise LoRAShapeError(f"qkv LoRA shapes A {tuple(lora_a.shape)} / B {tuple(lora_b.shape)} are not [2r, C] / [2C, r]")
    r = two_r // 2
    a, b = lora_a.float(), lora_b.float()
    zeros = torch.zeros(c, c, dtype=torch.float32, device=a.device)
    return torch.cat([b[:c] @ a[:r], zeros, b[c:] @ a[r:]]) * scaling


def linear_lora_delta(lora_a: torch.Tensor, lora_b: torch.Tensor, *, scaling: float = LORA_SCALING) -> torch.Tensor:
    """[out, in] delta of a loralib ``Linear`` LoRA, computed in float32."""
    if lora_a.shape[0] != lora_b.shape[1]:
        raise LoRAShapeError(f"LoRA shapes A {tuple(lora_a.shape)} / B {tuple(lora_b.shape)} do not share a rank")
    return (lora_b.float() @ lora_a.float()) * scaling


def apply_delta(weight: torch.Tensor, delta: torch.Tensor, key: str) -> torch.Tensor:
    if weight.shape != delta.shape:
        raise LoRAShapeError(f"{key}: LoRA delta {tuple(delta.shape)} does not fit the weight {tuple(weight.shape)}")
    return (weight.float() + delta).to(weight.dtype)


def lora_pair(lora: Mapping[str, torch.Tensor], module: str):
    """(A, B) of ``module`` from a LoRA state dict, or None if neither is there."""
    a, b = lora.get(module + ".lora_A"), lora.get(module + ".lora_B")
    if (a is None) != (b is None):
        raise LoRAShapeError(f"{module}: the DAPE file has only one of lora_A / lora_B")
    return None if a is None else (a, b)


def tied_tag_encoder_module(tag_head_module: str) -> str:
    """``tagging_head.encoder.layer.i.X`` -> the ``tag_encoder`` module whose weight it is tied to."""
    return "tag_encoder." + tag_head_module[len("tagging_head."):]


def tag_head_lora_deltas(lora: Mapping[str, torch.Tensor], module: str) -> list[torch.Tensor]:
    """Every delta the official ``eval()`` adds to the (tied) weight of a tag-head query/key, in its
    order (``tag_encoder`` is registered, hence merged, before ``tagging_head``)."""
    deltas = []
    for name in (tied_tag_encoder_module(module), module):
        pair = lora_pair(lora, name)
        if pair is not None:
            deltas.append(linear_lora_delta(*pair))
    return deltas
