"""StableSR's CFW autoencoder: the SD2 VAE whose decoder also sees the LR image's encoder features.

Controllable Feature Wrapping (official ``AutoencoderKLResi`` / ``Decoder_Mix``): at decoder
levels 2 (512 ch) and 1 (256 ch), after that level's resnets and before its upsample,

    h = h + w * F(cat(enc_feat, h)),    F = ResBlock(2C->C) -> 2x RRDB(C, grow 32) -> ResBlock(C->C),

where ``enc_feat`` is the CFW encoder's output of the same level for the (upscaled) LR image,
taken after its resnets and before its downsample, and ``w`` is the fidelity knob (official
``--dec_w``, default 0.5; 0 = plain SD2 decoder, 1 = most faithful to the LR).

Levels are counted as in LDM (0 = full resolution); our diffusers-layout decoder runs them in
reverse order, so LDM level ``i`` is our ``up_blocks[n-1-i]``. The fusion modules keep their
official names (``decoder.fusion_layer_{i}.*``) so CFW checkpoints map onto them 1:1.
The layers come from ``operations`` (default torch.nn, see :mod:`addsr_core.models.operations`).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..models.config import VAEConfig
from ..models.operations import resolve_operations
from ..models.vae import AutoencoderKL, Decoder, Encoder

DEFAULT_FIDELITY = 0.5  # the official scripts' --dec_w
FUSION_EPS = 1e-6


class FusionResBlock(nn.Module):
    """The plain residual block of the fusion layers (official ``model.ResBlock``; GroupNorm eps 1e-6)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int = 32, operations=nn):
        super().__init__()
        ops = operations
        self.norm1 = ops.GroupNorm(groups, in_channels, eps=FUSION_EPS)
        self.conv1 = ops.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = ops.GroupNorm(groups, out_channels, eps=FUSION_EPS)
        self.conv2 = ops.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_out = ops.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (self.conv_out(x) if self.conv_out is not None else x)


class ResidualDenseBlock(nn.Module):
    """ESRGAN's dense block: five convs over the growing concatenation, residual scaled by 0.2."""

    def __init__(self, channels: int, grow: int = 32, operations=nn):
        super().__init__()
        for i in range(1, 5):
            setattr(self, f"conv{i}", operations.Conv2d(channels + (i - 1) * grow, grow, 3, padding=1))
        self.conv5 = operations.Conv2d(channels + 4 * grow, channels, 3, padding=1)

    def forward(self, x):
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, channels: int, grow: int = 32, operations=nn):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(channels, grow, operations)
        self.rdb2 = ResidualDenseBlock(channels, grow, operations)
        self.rdb3 = ResidualDenseBlock(channels, grow, operations)

    def forward(self, x):
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class FuseSFTBlock(nn.Module):
    """Official ``Fuse_sft_block_RRDB``: returns ``dec + w * F(cat(enc, dec))``."""

    def __init__(self, channels: int, num_blocks: int = 2, grow: int = 32, operations=nn):
        super().__init__()
        self.encode_enc_1 = FusionResBlock(2 * channels, channels, operations=operations)
        self.encode_enc_2 = nn.Sequential(*[RRDB(channels, grow, operations) for _ in range(num_blocks)])
        self.encode_enc_3 = FusionResBlock(channels, channels, operations=operations)

    def forward(self, enc_feat, dec_feat, w: float = 1.0):
        fused = self.encode_enc_3(self.encode_enc_2(self.encode_enc_1(torch.cat([enc_feat, dec_feat], dim=1))))
        return dec_feat + w * fused


def fusion_levels(config: VAEConfig) -> range:
    """LDM levels that get a fusion layer: all but the full-resolution and the deepest one."""
    return range(1, len(config.block_out_channels) - 1)


class CFWDecoder(Decoder):
    def __init__(self, cfg: VAEConfig, num_fuse_blocks: int = 2, grow: int = 32, operations=None):
        ops = resolve_operations(operations)
        super().__init__(cfg, ops)
        for level in fusion_levels(cfg):
            setattr(self, f"fusion_layer_{level}", FuseSFTBlock(cfg.block_out_channels[level], num_fuse_blocks, grow, ops))

    def forward(self, z, enc_feats: Sequence[torch.Tensor] | None = None, fidelity: float = DEFAULT_FIDELITY):
        """``enc_feats[i-1]`` is the LR encoder feature of LDM level ``i``; without it (or with w=0)
        this is exactly the plain SD2 decoder."""
        fuse = enc_feats is not None and fidelity != 0
        n = len(self.up_blocks)
        h = self.mid_block(self.conv_in(z))
        for j, block in enumerate(self.up_blocks):
            level = n - 1 - j
            for resnet in block.resnets:
                h = resnet(h)
            if fuse and hasattr(self, f"fusion_layer_{level}"):
                enc = enc_feats[level - 1]
                if enc.shape[-2:] != h.shape[-2:]:
                    raise ValueError(
                        f"CFW: LR feature of level {level} is {tuple(enc.shape[-2:])} but the decoder has {tuple(h.shape[-2:])}; "
                        "encode the LR image at 8x the latent size"
                    )
                h = getattr(self, f"fusion_layer_{level}")(enc.to(h.dtype), h, fidelity)
            if block.upsamplers is not None:
                h = block.upsamplers[0](h)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))


def encode_with_features(
    encoder: Encoder, image: torch.Tensor, levels: Sequence[int], full: bool = True
) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """The encoder output plus each requested LDM level's feature (after resnets, before downsample).

    ``full=False`` stops after the last requested level and returns ``None`` for the output.
    """
    h, feats = encoder.conv_in(image), []
    for level, block in enumerate(encoder.down_blocks):
        if not full and level > max(levels):
            return None, feats
        for resnet in block.resnets:
            h = resnet(h)
        if level in levels:
            feats.append(h)
        if block.downsamplers is not None:
            h = block.downsamplers[0](h)
    h = encoder.mid_block(h)
    return encoder.conv_out(encoder.conv_act(encoder.conv_norm_out(h))), feats


class CFWAutoencoder(AutoencoderKL):
    """Drop-in for :class:`AutoencoderKL` (``decode(latent)`` is the plain decoder) plus CFW decoding."""

    def __init__(self, config: VAEConfig, num_fuse_blocks: int = 2, grow: int = 32, operations=None):
        super().__init__(config, operations)
        self.decoder = CFWDecoder(config, num_fuse_blocks, grow, operations)

    def encode_with_features(self, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """[B,3,H,W] in [-1,1] -> (moments, LR features for the fusion layers)."""
        h, feats = encode_with_features(self.encoder, image, fusion_levels(self.config))
        return self.quant_conv(h), feats

    def lr_features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Only the fusion features (the encoder stops early: the deeper levels are not needed)."""
        return encode_with_features(self.encoder, image, fusion_levels(self.config), full=False)[1]

    def decode(self, latent: torch.Tensor, enc_feats: Sequence[torch.Tensor] | None = None, fidelity: float = DEFAULT_FIDELITY):
        """Unscaled latent -> image in ~[-1,1]; with ``enc_feats`` the CFW-fused decode."""
        return self.decoder(self.post_quant_conv(latent), enc_feats, fidelity)
