"""StableSR's SFT layers: each UNet resnet's output is modulated by the time-aware encoder's features.

The official layer is SPADE (NVIDIA) used as SFT: ``norm(h) * (1 + gamma(f)) + beta(f)``, where
``f`` is the encoder feature map with the same width as ``h``. It sits in every ResBlockDual after
``out_layers`` (the second conv), before the skip connection is added, which is exactly where
our :class:`~addsr_core.models.layers.ResnetBlock2D` calls its ``spade`` slot.

The layers come from ``operations`` (default torch.nn, see :mod:`addsr_core.models.operations`).
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

SPADE_HIDDEN = 128  # hard-coded in the official SPADE


class _Float32GroupNorm:
    """The LDM GroupNorm forward: computed in float32 whatever the activations' (and weights') dtype.

    The weights are taken to the activations' device too, so it also runs where a host left them
    on its offload device (a partial load); a no-op otherwise.
    """

    def forward(self, x):
        weight = self.weight.to(x.device, torch.float32) if self.weight is not None else None
        bias = self.bias.to(x.device, torch.float32) if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)


class GroupNorm32(_Float32GroupNorm, nn.GroupNorm):
    """The LDM GroupNorm: computed in float32 whatever the activations' (and weights') dtype."""


_GROUP_NORM32 = {nn.GroupNorm: GroupNorm32}


def group_norm32(groups: int, channels: int, operations=nn) -> nn.GroupNorm:
    """A :class:`GroupNorm32` built on ``operations.GroupNorm`` (same parameters, same forward)."""
    base = operations.GroupNorm
    cls = _GROUP_NORM32.get(base)
    if cls is None:
        cls = _GROUP_NORM32[base] = type("GroupNorm32", (_Float32GroupNorm, base), {"__module__": __name__})
    return cls(groups, channels)


def feature_for(struct_cond: Mapping[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    """The official lookup: the encoder feature keyed by ``str(width)`` of the activation."""
    key = str(h.shape[-1])
    if key not in struct_cond:
        raise ValueError(
            f"no time-aware encoder feature of width {key} (have {sorted(struct_cond, key=int)}); the encoder "
            "must see the LR latent of the same size as the latent being denoised"
        )
    feature = struct_cond[key]
    if feature.shape[-2:] != h.shape[-2:]:
        raise ValueError(f"encoder feature {tuple(feature.shape[-2:])} does not match activation {tuple(h.shape[-2:])}")
    return feature


class SPADE(nn.Module):
    """Parameter names as in the official checkpoints: param_free_norm, mlp_shared.0, mlp_gamma, mlp_beta.

    ``param_free_norm`` is, despite its name, an affine GroupNorm(32) in the official code.
    """

    def __init__(self, channels: int, cond_channels: int, hidden: int = SPADE_HIDDEN, kernel: int = 3, groups: int = 32,
                 operations=nn):
        super().__init__()
        pad = kernel // 2
        self.param_free_norm = group_norm32(groups, channels, operations)
        self.mlp_shared = nn.Sequential(operations.Conv2d(cond_channels, hidden, kernel, padding=pad), nn.ReLU())
        self.mlp_gamma = operations.Conv2d(hidden, channels, kernel, padding=pad)
        self.mlp_beta = operations.Conv2d(hidden, channels, kernel, padding=pad)

    def forward(self, h: torch.Tensor, struct_cond: Mapping[str, torch.Tensor]) -> torch.Tensor:
        feature = feature_for(struct_cond, h).to(h.dtype)
        actv = self.mlp_shared(feature)
        return self.param_free_norm(h) * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


def unet_resnets(unet: nn.Module) -> list[nn.Module]:
    """Every resnet of the UNet in forward order: down, mid, up (22 for SD2)."""
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    return [resnet for block in blocks for resnet in block.resnets]


def attach_spade(unet: nn.Module, cond_channels: int, operations=nn) -> int:
    """Give every resnet of ``unet`` its SFT layer (on the UNet's current device); returns how many."""
    resnets = unet_resnets(unet)
    device = unet.conv_in.weight.device
    for resnet in resnets:
        with torch.device(device):
            resnet.spade = SPADE(resnet.conv2.out_channels, cond_channels, operations=operations)
    return len(resnets)
