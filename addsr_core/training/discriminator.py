"""AddSR's projected discriminator (StyleGAN-T style, from ``ADD/models/discriminator.py``).

A frozen DINO ViT-S/16 gives token features at the patch embedding and after blocks 2/5/8/11; a
small trainable head per feature (spectral-norm Conv1d blocks) scores every token, projected onto
an embedding of the condition ``c``: the DINOv2 ViT-S/14 CLS token of the LR image.

Input images are in [-1, 1]. Before DINO: DiffAugment (translation, cutout), to [0,1], a random
224 crop with probability ``p_crop`` when wider than 224, ``area`` resize to 224, ImageNet
normalisation. Feature/head index ``i`` pairs heads ``"0".."3"`` with blocks 2/5/8/11 and head
``"4"`` with the patch embedding; every token map gets the CLS token added (DPT's "add" readout).

Parameter names follow the official module (``heads.<i>.main.0.0.weight_orig``, ``cmapper.*``,
``cls.*``; the frozen backbone under ``dino.model.*`` in our layout) so heads trained by the official
code can be loaded with ``load_heads``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..loading.io import check_state_dict, read_state_dict
from .augment import diff_augment
from .config import DiscriminatorConfig, TrainConfigError
from .vit import DINO_VITS16, VisionTransformer, ViTConfig, read_vit_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(x01: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)
    return (x01 - mean) / std


def spectral_conv1d(channels_in: int, channels_out: int, kernel_size: int, **kw) -> nn.Conv1d:
    # Same as the official SpectralNorm.apply(name='weight', n_power_iterations=1, dim=0, eps=1e-12):
    # parameters weight_orig/bias, buffers weight_u/weight_v.
    conv = nn.Conv1d(channels_in, channels_out, kernel_size, **kw)
    return nn.utils.spectral_norm(conv, name="weight", n_power_iterations=1, eps=1e-12, dim=0)


def _block(channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        spectral_conv1d(channels, channels, kernel_size, padding=kernel_size // 2, padding_mode="circular"),
        nn.GroupNorm(4, channels),
        nn.LeakyReLU(0.2, inplace=True),
    )


class ResidualBlock(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.fn(x) + x) / math.sqrt(2)


class FullyConnectedLayer(nn.Module):
    """StyleGAN's equalised-learning-rate linear layer (weight ~ N(0,1), scaled by 1/sqrt(fan_in))."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.weight_gain = 1.0 / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        return torch.addmm(self.bias.to(x.dtype).unsqueeze(0), x, w.t())


class DiscHead(nn.Module):
    def __init__(self, channels: int, c_dim: int, cmap_dim: int = 64):
        super().__init__()
        self.c_dim, self.cmap_dim = c_dim, cmap_dim
        self.main = nn.Sequential(_block(channels, 1), ResidualBlock(_block(channels, 9)))
        if c_dim > 0:
            self.cmapper = FullyConnectedLayer(c_dim, cmap_dim)
            self.cls = spectral_conv1d(channels, cmap_dim, 1)
        else:
            self.cls = spectral_conv1d(channels, 1, 1)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """Token features [B, C, N] (+ condition [B, c_dim]) -> per-token logits [B, 1, N]."""
        out = self.cls(self.main(x))
        if self.c_dim > 0:
            cmap = self.cmapper(c).unsqueeze(-1)
            out = (out * cmap).sum(1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return out


class DinoFeatures(nn.Module):
    """The frozen ViT-S/16 and the hooks of the official ``make_vit_backbone``."""

    def __init__(self, vit_cfg: ViTConfig = DINO_VITS16, hooks=(2, 5, 8, 11), hook_patch: bool = True):
        super().__init__()
        if max(hooks) >= vit_cfg.depth:
            raise TrainConfigError(f"discriminator.hooks {hooks} exceed the ViT depth {vit_cfg.depth}; use blocks 0..{vit_cfg.depth - 1}.")
        self.model = VisionTransformer(vit_cfg)
        self.hooks = tuple(hooks)
        self.hook_patch = hook_patch
        self.img_resolution = vit_cfg.img_size
        self.embed_dim = vit_cfg.embed_dim
        self.requires_grad_(False)

    @property
    def n_features(self) -> int:
        return len(self.hooks) + int(self.hook_patch)

    def forward(self, x01: torch.Tensor) -> dict[str, torch.Tensor]:
        """Images in [0,1] -> {"0".."3": block features, "4": patch embedding}, each [B, D, N]."""
        x = imagenet_normalize(F.interpolate(x01, self.img_resolution, mode="area"))
        states = self.model.forward_tokens(x)
        picked = [states[i + 1] for i in self.hooks] + ([states[0]] if self.hook_patch else [])
        # DPT "add" readout: every patch token plus the CLS token, channels first.
        return {str(i): (t[:, 1:] + t[:, :1]).transpose(1, 2).contiguous() for i, t in enumerate(picked)}


class ProjectedDiscriminator(nn.Module):
    def __init__(self, cfg: DiscriminatorConfig | None = None, vit_cfg: ViTConfig = DINO_VITS16):
        super().__init__()
        cfg = cfg if cfg is not None else DiscriminatorConfig()
        self.cfg = cfg
        self.dino = DinoFeatures(vit_cfg, cfg.hooks, cfg.hook_patch)
        self.heads = nn.ModuleDict(
            {str(i): DiscHead(self.dino.embed_dim, cfg.c_dim, cfg.cmap_dim) for i in range(self.dino.n_features)}
        )

    def train(self, mode: bool = True) -> "ProjectedDiscriminator":
        # The backbone always stays in eval mode; only the heads switch (spectral-norm power iteration).
        self.training = mode
        self.dino.train(False)
        self.heads.train(mode)
        return self

    def _crop_or_keep(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        size = self.dino.img_resolution
        if x.shape[-1] <= size:
            return x
        draw = torch.rand(1, generator=generator).item() if generator is not None else torch.rand(1).item()
        if draw >= self.cfg.p_crop:
            return x
        h, w = x.shape[-2:]
        hi = torch.randint(0, h - size + 1, (1,), generator=generator).item()
        wi = torch.randint(0, w - size + 1, (1,), generator=generator).item()
        return x[..., hi : hi + size, wi : wi + size]

    def forward(
        self, x: torch.Tensor, c: torch.Tensor | None, generator: torch.Generator | None = None
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Images in [-1,1] [B,3,H,W] and condition [B,c_dim] -> (per-head logits [B,N], features).

        Features are returned (requiring grad) so R1 can differentiate the real logits w.r.t. them.
        """
        if self.cfg.diffaug:
            x = diff_augment(x, self.cfg.diffaug_policy, generator)
        x = x.add(1).div(2)
        x = self._crop_or_keep(x, generator)
        features = self.dino(x)
        logits = []
        for key, head in self.heads.items():
            feat = features[key]
            if not feat.requires_grad:
                feat.requires_grad_(True)
            logits.append(head(feat, c).view(x.shape[0], -1))
        return logits, features

    # ---------------------------------------------------------------------------------------- #
    def load_backbone(self, path: str) -> None:
        """Load ``dino_deitsmall16_pretrain.pth`` (or a safetensors copy) into the frozen backbone."""
        family = "DINO ViT-S/16 (discriminator)"
        sd = read_vit_state_dict(path, self.dino.model.cfg, family=family)
        check_state_dict(self.dino.model, sd, family=family, source=path)
        self.dino.model.load_state_dict(sd, strict=True)

    def heads_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"heads.{k}": v for k, v in self.heads.state_dict().items()}

    def load_heads(self, path_or_sd, source: str = "discriminator heads") -> None:
        """Load head weights (ours, or an official ``ProjectedDiscriminator`` state dict)."""
        sd = read_state_dict(path_or_sd, family="discriminator heads") if isinstance(path_or_sd, str) else path_or_sd
        sd = {k[len("heads."):]: v for k, v in sd.items() if k.startswith("heads.")}
        check_state_dict(self.heads, sd, family="discriminator heads", source=source)
        self.heads.load_state_dict(sd, strict=True)


class LRConditionEncoder(nn.Module):
    """DINOv2 ViT-S/14 CLS token of the LR condition image, the discriminator's ``c``.

    Official: ``model_fea(F.interpolate(lr01, size=518, mode='bilinear'))`` on the [0,1] image with no
    ImageNet normalisation (``imagenet_normalize=True`` is our opt-in fix).
    """

    def __init__(self, vit: VisionTransformer, image_size: int = 518, imagenet_normalize: bool = False):
        super().__init__()
        self.vit = vit.requires_grad_(False).eval()
        self.image_size = image_size
        self.imagenet_normalize = imagenet_normalize

    def train(self, mode: bool = True) -> "LRConditionEncoder":
        self.training = mode
        self.vit.train(False)
        return self

    @torch.no_grad()
    def forward(self, lr01: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(lr01, size=self.image_size, mode="bilinear")
        if self.imagenet_normalize:
            x = imagenet_normalize(x)
        return self.vit.cls_features(x)
