"""The AddSR/SeeSR UNet: SD2's UNet plus a cross-attention to RAM image tokens in every attention layer."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import UNetConfig
from .layers import TimestepEmbedding, in_weight_layout
from .operations import resolve_operations
from .unet_blocks import MidBlock, build_down_blocks, build_up_blocks


class UNet2DConditionModel(nn.Module):
    def __init__(self, config: UNetConfig, operations=None):
        """``operations``: the layer classes (default torch.nn; see :mod:`addsr_core.models.operations`)."""
        super().__init__()
        ops = resolve_operations(operations)
        self.config = config
        c0 = config.block_out_channels[0]
        self.time_embedding = TimestepEmbedding(c0, config.time_embed_dim, ops)
        self.conv_in = ops.Conv2d(config.in_channels, c0, 3, padding=1)
        self.down_blocks = build_down_blocks(config, ops)
        self.mid_block = MidBlock(config, config.block_out_channels[-1], config.attention_heads[-1], ops)
        self.up_blocks = build_up_blocks(config, ops)
        self.conv_norm_out = ops.GroupNorm(config.norm_num_groups, c0, eps=config.norm_eps)
        self.conv_out = ops.Conv2d(c0, config.out_channels, 3, padding=1)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        for block in [*self.down_blocks, self.mid_block, *self.up_blocks]:
            block.gradient_checkpointing = enabled

    def time_embed(self, timestep, batch: int, device, dtype) -> torch.Tensor:
        cfg = self.config
        return self.time_embedding.embed_timesteps(timestep, batch, device, dtype, cfg.flip_sin_to_cos, cfg.freq_shift)

    def forward(
        self,
        sample: torch.Tensor,
        timestep,
        encoder_hidden_states: torch.Tensor,
        image_encoder_hidden_states: torch.Tensor | None = None,
        down_block_additional_residuals: Sequence[torch.Tensor] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        struct_cond: dict | None = None,
    ) -> torch.Tensor:
        """Predict the noise (or v) for ``sample`` at ``timestep``.

        ``down_block_additional_residuals`` are the ControlNet's residuals in forward order
        (conv_in output, then each layer and downsampler); they are added to the skips.
        """
        if self.config.use_image_cross_attention and image_encoder_hidden_states is None:
            raise ValueError("this UNet has image cross-attention: pass image_encoder_hidden_states (RAM tokens)")
        temb = self.time_embed(timestep, sample.shape[0], sample.device, sample.dtype)
        ctx, img_ctx = encoder_hidden_states, image_encoder_hidden_states

        h = self.conv_in(in_weight_layout(sample, self.conv_in))
        skips = [h]
        for block in self.down_blocks:
            h, states = block(h, temb, ctx, img_ctx, struct_cond)
            skips.extend(states)
        if down_block_additional_residuals is not None:
            if len(down_block_additional_residuals) != len(skips):
                raise ValueError(f"expected {len(skips)} ControlNet residuals, got {len(down_block_additional_residuals)}")
            skips = [s + r for s, r in zip(skips, down_block_additional_residuals)]

        h = self.mid_block(h, temb, ctx, img_ctx, struct_cond)
        if mid_block_additional_residual is not None:
            h = h + mid_block_additional_residual

        for block in self.up_blocks:
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            upsample_size = skips[-1].shape[-2:] if skips else None
            h = block(h, block_skips, temb, ctx, img_ctx, struct_cond, upsample_size)

        return self.conv_out(F.silu(self.conv_norm_out(h)))
