"""StableSR's time-aware encoder (official ``EncoderUNetModelWT``), with the official key names.

It is the down half of a small UNet over the LR latent with its own timestep embedding. Before
each downsample and after the middle block it taps the feature map, turns it into
``out_channels`` maps with a ResBlock (``fea_tran``), and returns them keyed by ``str(width)``:
for a 64x64 latent, ``{"64", "32", "16", "8"}``. The SFT layers pick the entry by width.
The layers come from ``operations`` (default torch.nn, see :mod:`addsr_core.models.operations`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..models.layers import broadcast_timesteps, in_weight_layout, timestep_embedding
from ..models.operations import resolve_operations
from .spade import group_norm32


@dataclass(frozen=True)
class TimeAwareEncoderConfig:
    """The official ``structcond_stage_config`` (identical in the 512 and 768-v configs)."""

    in_channels: int = 4
    model_channels: int = 256
    out_channels: int = 256
    num_res_blocks: int = 2
    attention_resolutions: tuple = (4, 2, 1)
    channel_mult: tuple = (1, 1, 2, 2)
    num_heads: int = 4
    groups: int = 32

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels


class ResBlock(nn.Module):
    """The LDM ResBlock: ``in_layers``/``emb_layers``/``out_layers``/``skip_connection`` Sequentials."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, groups: int, operations=nn):
        super().__init__()
        ops = operations
        self.in_layers = nn.Sequential(
            group_norm32(groups, channels, ops), nn.SiLU(), ops.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), ops.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            group_norm32(groups, out_channels, ops), nn.SiLU(), nn.Dropout(0.0), ops.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if out_channels == channels else ops.Conv2d(channels, out_channels, 1)

    def forward(self, x, emb):
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Global self-attention with the legacy head split: qkv rows are grouped per head as [q|k|v]."""

    def __init__(self, channels: int, num_heads: int, groups: int, operations=nn):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = group_norm32(groups, channels, operations)
        self.qkv = operations.Conv1d(channels, 3 * channels, 1)
        self.proj_out = operations.Conv1d(channels, channels, 1)

    def forward(self, x):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        length, ch = x.shape[-1], c // self.num_heads
        qkv = self.qkv(self.norm(x)).reshape(b * self.num_heads, 3 * ch, length)
        q, k, v = (t.transpose(1, 2) for t in qkv.split(ch, dim=1))
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, c, length)
        return (x + self.proj_out(a)).reshape(b, c, *spatial)


class Downsample(nn.Module):
    def __init__(self, channels: int, operations=nn):
        super().__init__()
        self.op = operations.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class TimestepSequential(nn.ModuleList):
    """An ``input_blocks.N`` / ``middle_block`` container: children numbered as in the checkpoint."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class TimeAwareEncoder(nn.Module):
    def __init__(self, config: TimeAwareEncoderConfig = TimeAwareEncoderConfig(), operations=None):
        super().__init__()
        ops = resolve_operations(operations)
        self.config = cfg = config
        mc, emb = cfg.model_channels, cfg.time_embed_dim
        self.time_embed = nn.Sequential(ops.Linear(mc, emb), nn.SiLU(), ops.Linear(emb, emb))
        self.input_blocks = nn.ModuleList([TimestepSequential([ops.Conv2d(cfg.in_channels, mc, 3, padding=1)])])
        tapped_channels, ch, ds = [], mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [ResBlock(ch, emb, mult * mc, cfg.groups, ops)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch, cfg.num_heads, cfg.groups, ops))
                self.input_blocks.append(TimestepSequential(layers))
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(TimestepSequential([Downsample(ch, ops)]))
                tapped_channels.append(ch)
                ds *= 2
        self.middle_block = TimestepSequential([
            ResBlock(ch, emb, ch, cfg.groups, ops), AttentionBlock(ch, cfg.num_heads, cfg.groups, ops),
            ResBlock(ch, emb, ch, cfg.groups, ops),
        ])
        tapped_channels.append(ch)
        self.fea_tran = nn.ModuleList([ResBlock(c, emb, cfg.out_channels, cfg.groups, ops) for c in tapped_channels])

    @property
    def dtype(self) -> torch.dtype:
        return self.time_embed[0].weight.dtype

    def forward(self, lr_latent: torch.Tensor, timestep) -> dict[str, torch.Tensor]:
        """``lr_latent`` [B,4,h,w] (scaled), ``timestep`` int / 0-d / [B] -> {str(width): [B,C,h',w']}."""
        t = broadcast_timesteps(timestep, lr_latent.shape[0], lr_latent.device)
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(self.dtype))
        taps = []
        h = in_weight_layout(lr_latent.to(self.dtype), self.input_blocks[0][0])
        for block in self.input_blocks:
            if isinstance(block[0], Downsample):
                taps.append(h)
            h = block(h, emb)
        taps.append(self.middle_block(h, emb))
        features = {}
        for tap, tran in zip(taps, self.fea_tran):
            key = str(tap.shape[-1])
            if key in features:
                raise InputError(f"latent width {lr_latent.shape[-1]} is too small: two encoder levels have width {key}; "
                                 "use a larger input image (or min_size)")
            features[key] = tran(tap, emb)
        return features
