"""RAM's tag decoder (``tagging_head.*``): a Query2Label BERT with cross-attention only.

Official ``RAMLora.generate_tag``: each of the ``num_classes`` tag queries,
``relu(wordvec_proj(label_embed))``, goes through ``num_layers`` BERT layers in ``mode='tagging'``
(cross-attention to the 145 image tokens -> add & LayerNorm -> GELU MLP -> add & LayerNorm); then
``fc`` gives one logit per tag. The encoder attention mask is all ones, so the official additive
``(1 - mask) * -10000`` term is exactly 0 and is left out. Parameter names are transformers' BERT
names, as in the checkpoints. The layers come from ``operations`` (default torch.nn, see
:mod:`addsr_core.models.operations`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TaggingHeadConfig


class CrossAttentionProjections(nn.Module):
    """``crossattention.self``: queries from the tag embeddings, keys/values from the image tokens."""

    def __init__(self, cfg: TaggingHeadConfig, operations=nn):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.query = operations.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = operations.Linear(cfg.encoder_width, cfg.hidden_size)
        self.value = operations.Linear(cfg.encoder_width, cfg.hidden_size)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, queries: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.query(queries)), self._heads(self.key(image_tokens)), self._heads(self.value(image_tokens))
        out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).flatten(2)


class AddNorm(nn.Module):
    """BERT's ``*.output``: dense, then LayerNorm of (that + the residual)."""

    def __init__(self, in_features: int, cfg: TaggingHeadConfig, operations=nn):
        super().__init__()
        self.dense = operations.Linear(in_features, cfg.hidden_size)
        self.LayerNorm = operations.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class CrossAttention(nn.Module):
    def __init__(self, cfg: TaggingHeadConfig, operations=nn):
        super().__init__()
        self.self = CrossAttentionProjections(cfg, operations)
        self.output = AddNorm(cfg.hidden_size, cfg, operations)

    def forward(self, queries, image_tokens):
        return self.output(self.self(queries, image_tokens), queries)


class Intermediate(nn.Module):
    def __init__(self, cfg: TaggingHeadConfig, operations=nn):
        super().__init__()
        self.dense = operations.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x):
        return F.gelu(self.dense(x))  # transformers' "gelu" is the exact erf GELU


class TagDecoderLayer(nn.Module):
    def __init__(self, cfg: TaggingHeadConfig, operations=nn):
        super().__init__()
        self.crossattention = CrossAttention(cfg, operations)
        self.intermediate = Intermediate(cfg, operations)
        self.output = AddNorm(cfg.intermediate_size, cfg, operations)

    def forward(self, queries, image_tokens):
        h = self.crossattention(queries, image_tokens)
        return self.output(self.intermediate(h), h)


class TagEncoderStack(nn.Module):
    def __init__(self, cfg: TaggingHeadConfig, operations=nn):
        super().__init__()
        self.layer = nn.ModuleList(TagDecoderLayer(cfg, operations) for _ in range(cfg.num_layers))


class TaggingHead(nn.Module):
    """``tagging_head``: only ``encoder.layer.*`` survives the official ``del_selfattention``."""

    def __init__(self, cfg: TaggingHeadConfig, operations=nn):
        super().__init__()
        self.encoder = TagEncoderStack(cfg, operations)

    def forward(self, queries: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        for layer in self.encoder.layer:
            queries = layer(queries, image_tokens)
        return queries
