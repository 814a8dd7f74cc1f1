"""The AddSR ControlNet: a copy of the UNet encoder, steered by the upscaled LR image in [0,1]."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import UNetConfig
from .layers import TimestepEmbedding, in_weight_layout
from .operations import resolve_operations
from .unet_blocks import MidBlock, build_down_blocks


class ControlNetConditioningEmbedding(nn.Module):
    """Maps the condition image (8x the latent size) to conv_in's width; three stride-2 convs."""

    def __init__(self, out_channels: int, in_channels: int = 3, block_channels=(16, 32, 96, 256), operations=nn):
        super().__init__()
        ops = operations
        self.conv_in = ops.Conv2d(in_channels, block_channels[0], 3, padding=1)
        blocks = []
        for cin, cout in zip(block_channels[:-1], block_channels[1:]):
            blocks += [ops.Conv2d(cin, cin, 3, padding=1), ops.Conv2d(cin, cout, 3, padding=1, stride=2)]
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = ops.Conv2d(block_channels[-1], out_channels, 3, padding=1)

    def forward(self, cond):
        h = F.silu(self.conv_in(cond))
        features = []
        for block in self.blocks:
            h = block(h)
            if block.stride[0] == 2:
                features.append(h)
            h = F.silu(h)
        return self.conv_out(h), features


class ControlNetOutput(NamedTuple):
    """The official 4-tuple: residuals, mid residual, the (unscaled) condition embedding, stride-2 features."""

    down_block_res_samples: list
    mid_block_res_sample: torch.Tensor
    cond_embedding: torch.Tensor
    cond_feature_maps: list


def _zero_conv(channels: int, operations=nn) -> nn.Conv2d:
    return operations.Conv2d(channels, channels, 1)


class ControlNetModel(nn.Module):
    def __init__(self, config: UNetConfig, operations=None):
        """``operations``: the layer classes (default torch.nn; see :mod:`addsr_core.models.operations`)."""
        super().__init__()
        ops = resolve_operations(operations)
        self.config = config
        c0 = config.block_out_channels[0]
        self.time_embedding = TimestepEmbedding(c0, config.time_embed_dim, ops)
        self.conv_in = ops.Conv2d(config.in_channels, c0, 3, padding=1)
        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(
            c0, config.conditioning_channels, config.conditioning_embedding_out_channels, ops
        )
        self.down_blocks = build_down_blocks(config, ops)
        zero_convs = [_zero_conv(c0, ops)]
        for i, block in enumerate(self.down_blocks):
            cout = config.block_out_channels[i]
            zero_convs += [_zero_conv(cout, ops) for _ in block.resnets]
            if block.downsamplers is not None:
                zero_convs.append(_zero_conv(cout, ops))
        self.controlnet_down_blocks = nn.ModuleList(zero_convs)
        self.mid_block = MidBlock(config, config.block_out_channels[-1], config.attention_heads[-1], ops)
        self.controlnet_mid_block = _zero_conv(config.block_out_channels[-1], ops)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        for block in [*self.down_blocks, self.mid_block]:
            block.gradient_checkpointing = enabled

    def forward(
        self,
        sample: torch.Tensor,
        timestep,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        conditioning_scale: float = 1.0,
        image_encoder_hidden_states: torch.Tensor | None = None,
    ) -> ControlNetOutput:
        if controlnet_cond.shape[-2:] != tuple(8 * s for s in sample.shape[-2:]):
            raise ValueError(
                f"ControlNet condition image {tuple(controlnet_cond.shape[-2:])} must be 8x the latent "
                f"{tuple(sample.shape[-2:])}"
            )
        if self.config.use_image_cross_attention and image_encoder_hidden_states is None:
            raise ValueError("this ControlNet has image cross-attention: pass image_encoder_hidden_states (RAM tokens)")
        cfg = self.config
        temb = self.time_embedding.embed_timesteps(
            timestep, sample.shape[0], sample.device, sample.dtype, cfg.flip_sin_to_cos, cfg.freq_shift
        )

        cond_embedding, features = self.controlnet_cond_embedding(
            in_weight_layout(controlnet_cond.to(sample.dtype), self.controlnet_cond_embedding.conv_in)
        )
        h = self.conv_in(in_weight_layout(sample, self.conv_in)) + cond_embedding
        states = [h]
        for block in self.down_blocks:
            h, block_states = block(h, temb, encoder_hidden_states, image_encoder_hidden_states)
            states.extend(block_states)
        h = self.mid_block(h, temb, encoder_hidden_states, image_encoder_hidden_states)

        down = [conv(s) for conv, s in zip(self.controlnet_down_blocks, states)]
        mid = self.controlnet_mid_block(h)
        if conditioning_scale != 1:  # x * 1.0 is x: the official default skips 13 full-size passes
            down, mid = [d * conditioning_scale for d in down], mid * conditioning_scale
        return ControlNetOutput(down, mid, cond_embedding, features)
