"""The SD2 VAE (diffusers AutoencoderKL layout), with encoder and decoder usable separately."""
from __future__ import annotations

import torch
from torch import nn

from .config import VAEConfig
from .layers import Downsample2D, ResnetBlock2D, SpatialSelfAttention, Upsample2D
from .operations import resolve_operations

VAE_EPS = 1e-6


def _resnets(cfg: VAEConfig, cin: int, cout: int, n: int, operations) -> nn.ModuleList:
    return nn.ModuleList(
        [ResnetBlock2D(cin if i == 0 else cout, cout, None, cfg.norm_num_groups, VAE_EPS, operations) for i in range(n)]
    )


class VAEMidBlock(nn.Module):
    def __init__(self, cfg: VAEConfig, channels: int, operations=nn):
        super().__init__()
        self.resnets = _resnets(cfg, channels, channels, 2, operations)
        self.attentions = nn.ModuleList([SpatialSelfAttention(channels, cfg.norm_num_groups, VAE_EPS, operations)])

    def forward(self, h):
        h = self.resnets[0](h)
        h = self.attentions[0](h)
        return self.resnets[1](h)


class DownEncoderBlock(nn.Module):
    def __init__(self, cfg: VAEConfig, cin: int, cout: int, add_downsample: bool, operations=nn):
        super().__init__()
        self.resnets = _resnets(cfg, cin, cout, cfg.layers_per_block, operations)
        self.downsamplers = nn.ModuleList([Downsample2D(cout, 0, operations)]) if add_downsample else None

    def forward(self, h):
        for resnet in self.resnets:
            h = resnet(h)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)
        return h


class UpDecoderBlock(nn.Module):
    def __init__(self, cfg: VAEConfig, cin: int, cout: int, add_upsample: bool, operations=nn):
        super().__init__()
        self.resnets = _resnets(cfg, cin, cout, cfg.layers_per_block + 1, operations)
        self.upsamplers = nn.ModuleList([Upsample2D(cout, operations)]) if add_upsample else None

    def forward(self, h):
        for resnet in self.resnets:
            h = resnet(h)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h)
        return h


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig, operations=None):
        super().__init__()
        ops = resolve_operations(operations)
        ch = cfg.block_out_channels
        self.conv_in = ops.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            [DownEncoderBlock(cfg, ch[max(i - 1, 0)], ch[i], i < len(ch) - 1, ops) for i in range(len(ch))]
        )
        self.mid_block = VAEMidBlock(cfg, ch[-1], ops)
        self.conv_norm_out = ops.GroupNorm(cfg.norm_num_groups, ch[-1], eps=VAE_EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = ops.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for block in self.down_blocks:
            h = block(h)
        h = self.mid_block(h)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig, operations=None):
        super().__init__()
        ops = resolve_operations(operations)
        rev = list(reversed(cfg.block_out_channels))
        self.conv_in = ops.Conv2d(cfg.latent_channels, rev[0], 3, padding=1)
        self.mid_block = VAEMidBlock(cfg, rev[0], ops)
        self.up_blocks = nn.ModuleList(
            [UpDecoderBlock(cfg, rev[max(i - 1, 0)], rev[i], i < len(rev) - 1, ops) for i in range(len(rev))]
        )
        self.conv_norm_out = ops.GroupNorm(cfg.norm_num_groups, rev[-1], eps=VAE_EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = ops.Conv2d(rev[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z, trim=None):
        """``trim(h, i)``, when given, may crop the features after up block ``i`` (a tiled decode
        drops the margin it no longer needs, see ``imaging.tiled_vae``)."""
        h = self.conv_in(z)
        h = self.mid_block(h)
        for i, block in enumerate(self.up_blocks):
            h = block(h)
            if trim is not None:
                h = trim(h, i)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))


class AutoencoderKL(nn.Module):
    """Images in [-1,1] <-> UNSCALED latents. Multiply by ``scaling_factor`` for the diffusion model."""

    def __init__(self, config: VAEConfig, operations=None):
        """``operations``: the layer classes (default torch.nn; see :mod:`addsr_core.models.operations`)."""
        super().__init__()
        ops = resolve_operations(operations)
        self.config = config
        self.encoder = Encoder(config, ops)
        self.decoder = Decoder(config, ops)
        self.quant_conv = ops.Conv2d(2 * config.latent_channels, 2 * config.latent_channels, 1)
        self.post_quant_conv = ops.Conv2d(config.latent_channels, config.latent_channels, 1)

    @property
    def scaling_factor(self) -> float:
        return self.config.scaling_factor

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.conv_in.weight.dtype

    def encode_moments(self, image: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [-1,1] -> [B, 2*latent, H/8, W/8] = cat(mean, raw logvar)."""
        return self.quant_conv(self.encoder(image))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Unscaled latent -> raw decoder output (roughly [-1,1], not clamped)."""
        return self.decoder(self.post_quant_conv(latent))

    def forward(self, image):
        mean, _ = split_moments(self.encode_moments(image))
        return self.decode(mean)


def split_moments(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, logvar) with logvar clamped to [-30, 20] as diffusers' DiagonalGaussianDistribution does."""
    mean, logvar = moments.chunk(2, dim=1)
    return mean, logvar.clamp(-30.0, 20.0)


def sample_posterior(moments: torch.Tensor, noise: torch.Tensor | None = None, generator=None) -> torch.Tensor:
    """mean + std * eps; pass ``noise`` to replay a recorded draw."""
    mean, logvar = split_moments(moments)
    if noise is None:
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * logvar) * noise
