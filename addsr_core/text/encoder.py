"""The CLIP text transformer, with transformers' ``CLIPTextModel`` parameter names.

Mirroring those names makes the diffusers ``text_encoder/`` folder load with no renaming; the
OpenCLIP single-file layout is mapped onto them in :mod:`addsr_core.text.loading`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TextEncoderConfig


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class TextEmbeddings(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position_embedding = nn.Embedding(cfg.max_length, cfg.width)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Positions are always 0..T-1; old checkpoints' stored ``position_ids`` are ignored (see loading).
        return self.token_embedding(input_ids) + self.position_embedding.weight[: input_ids.shape[1]]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.q_proj = nn.Linear(cfg.width, cfg.width)
        self.k_proj = nn.Linear(cfg.width, cfg.width)
        self.v_proj = nn.Linear(cfg.width, cfg.width)
        self.out_proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (proj(x).view(b, t, self.num_heads, -1).transpose(1, 2) for proj in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, c))


class TextMLP(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_width)
        self.fc2 = nn.Linear(cfg.mlp_width, cfg.width)
        self.activation = quick_gelu if cfg.activation == "quick_gelu" else F.gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class TextEncoderLayer(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.self_attn = CausalSelfAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.mlp = TextMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class TextLayerStack(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.layers = nn.ModuleList(TextEncoderLayer(cfg) for _ in range(cfg.num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class TextTransformer(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.embeddings = TextEmbeddings(cfg)
        self.encoder = TextLayerStack(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.final_layer_norm(self.encoder(self.embeddings(input_ids)))


class CLIPTextEncoder(nn.Module):
    """Token ids [B, T] -> hidden states [B, T, width]: SD2's ``prompt_embeds`` (the UNet's context).

    This is transformers' ``CLIPTextModel(...).last_hidden_state`` as diffusers calls it for SD2:
    causal mask only, no padding mask, so the embeddings at pad positions are real values the UNet
    attends to (which is why the pad id matters, see :mod:`addsr_core.text.tokenizer`).
    """

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.config = cfg
        self.text_model = TextTransformer(cfg)

    @property
    def dtype(self) -> torch.dtype:
        return self.text_model.final_layer_norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.text_model.final_layer_norm.weight.device

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, tokens], got shape {tuple(input_ids.shape)}; tokenize the prompts first.")
        if input_ids.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"input_ids must be integer token ids, got {input_ids.dtype}.")
        if input_ids.shape[1] > self.config.max_length:
            raise ValueError(
                f"{input_ids.shape[1]} tokens exceed the text encoder's {self.config.max_length} positions; "
                "the tokenizer truncates to the context length, use it."
            )
        if input_ids.numel() and not input_ids.is_meta:
            low, high = int(input_ids.min()), int(input_ids.max())
            if low < 0 or high >= self.config.vocab_size:
                raise ValueError(
                    f"token ids range {low}..{high} is outside the vocabulary (0..{self.config.vocab_size - 1}); "
                    "the tokenizer does not belong to this text encoder."
                )
        return self.text_model(input_ids.to(self.device))
