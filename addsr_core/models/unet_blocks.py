"""The down, mid and up blocks of the SD2 UNet, with AddSR's optional image cross-attention.

In every attention layer the order is: resnet -> text attention -> image attention (RAM tokens).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import UNetConfig
from .layers import Downsample2D, ResnetBlock2D, Transformer2DModel, Upsample2D


def _transformer(cfg: UNetConfig, channels: int, heads: int, context_dim: int, operations) -> Transformer2DModel:
    return Transformer2DModel(heads, channels // heads, channels, context_dim, cfg.norm_num_groups,
                              cfg.transformer_layers_per_block, operations)


def _resnet(cfg: UNetConfig, cin: int, cout: int, operations) -> ResnetBlock2D:
    return ResnetBlock2D(cin, cout, cfg.time_embed_dim, cfg.norm_num_groups, cfg.norm_eps, operations)


class _Layers(nn.Module):
    """Holds resnets (+ attentions + image_attentions) and runs one layer at a time."""

    gradient_checkpointing = False

    def _build_attn(self, cfg: UNetConfig, channels: int, heads: int, n: int, with_attn: bool, operations):
        self.has_attn = with_attn
        if with_attn:
            self.attentions = nn.ModuleList(
                [_transformer(cfg, channels, heads, cfg.cross_attention_dim, operations) for _ in range(n)]
            )
            if cfg.use_image_cross_attention:
                self.image_attentions = nn.ModuleList(
                    [_transformer(cfg, channels, heads, cfg.image_cross_attention_dim, operations) for _ in range(n)]
                )

    def _layer(self, i, h, temb, context, image_context, struct_cond):
        h = self.resnets[i](h, temb, struct_cond)
        if self.has_attn:
            h = self.attentions[i](h, context)
            if hasattr(self, "image_attentions"):
                h = self.image_attentions[i](h, image_context)
        return h

    def _run(self, i, h, temb, context, image_context, struct_cond):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self._layer, i, h, temb, context, image_context, struct_cond, use_reentrant=False)
        return self._layer(i, h, temb, context, image_context, struct_cond)


class DownBlock(_Layers):
    def __init__(self, cfg: UNetConfig, cin: int, cout: int, heads: int, with_attn: bool, add_downsample: bool,
                 operations=nn):
        super().__init__()
        n = cfg.layers_per_block
        self.resnets = nn.ModuleList([_resnet(cfg, cin if i == 0 else cout, cout, operations) for i in range(n)])
        self._build_attn(cfg, cout, heads, n, with_attn, operations)
        self.downsamplers = nn.ModuleList([Downsample2D(cout, operations=operations)]) if add_downsample else None

    def forward(self, h, temb, context=None, image_context=None, struct_cond=None):
        states = []
        for i in range(len(self.resnets)):
            h = self._run(i, h, temb, context, image_context, struct_cond)
            states.append(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)
            states.append(h)
        return h, states


class MidBlock(_Layers):
    def __init__(self, cfg: UNetConfig, channels: int, heads: int, operations=nn):
        super().__init__()
        self.resnets = nn.ModuleList([_resnet(cfg, channels, channels, operations) for _ in range(2)])
        self._build_attn(cfg, channels, heads, 1, True, operations)

    def forward(self, h, temb, context=None, image_context=None, struct_cond=None):
        h = self._run(0, h, temb, context, image_context, struct_cond)
        return self.resnets[1](h, temb, struct_cond)


class UpBlock(_Layers):
    def __init__(self, cfg: UNetConfig, cin: int, cout: int, prev: int, heads: int, with_attn: bool, add_upsample: bool,
                 operations=nn):
        super().__init__()
        n = cfg.layers_per_block + 1
        self.resnets = nn.ModuleList(
            [_resnet(cfg, (prev if i == 0 else cout) + (cin if i == n - 1 else cout), cout, operations) for i in range(n)]
        )
        self._build_attn(cfg, cout, heads, n, with_attn, operations)
        self.upsamplers = nn.ModuleList([Upsample2D(cout, operations)]) if add_upsample else None

    def forward(self, h, skips, temb, context=None, image_context=None, struct_cond=None, upsample_size=None):
        for i in range(len(self.resnets)):
            h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(i, h, temb, context, image_context, struct_cond)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h, upsample_size)
        return h


def build_down_blocks(cfg: UNetConfig, operations=nn) -> nn.ModuleList:
    blocks, cout = [], cfg.block_out_channels[0]
    for i, kind in enumerate(cfg.down_block_types):
        cin, cout = cout, cfg.block_out_channels[i]
        last = i == len(cfg.block_out_channels) - 1
        blocks.append(DownBlock(cfg, cin, cout, cfg.attention_heads[i], kind.startswith("CrossAttn"), not last, operations))
    return nn.ModuleList(blocks)


def build_up_blocks(cfg: UNetConfig, operations=nn) -> nn.ModuleList:
    rev_channels = list(reversed(cfg.block_out_channels))
    rev_heads = list(reversed(cfg.attention_heads))
    blocks, cout = [], rev_channels[0]
    for i, kind in enumerate(cfg.up_block_types):
        prev, cout = cout, rev_channels[i]
        cin = rev_channels[min(i + 1, len(rev_channels) - 1)]
        last = i == len(rev_channels) - 1
        blocks.append(UpBlock(cfg, cin, cout, prev, rev_heads[i], kind.startswith("CrossAttn"), not last, operations))
    return nn.ModuleList(blocks)
