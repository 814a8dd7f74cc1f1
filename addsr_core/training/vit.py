"""DINO ViT-S/16 (v1) and DINOv2 ViT-S/14, native, in the key layouts of the released files.

- ``dino_deitsmall16_pretrain.pth`` (facebookresearch/dino; timm ``vit_small_patch16_224_dino``):
  ``cls_token``, ``pos_embed`` [1,197,384], ``patch_embed.proj.*``, ``blocks.{0..11}.{norm1, attn.qkv,
  attn.proj, norm2, mlp.fc1, mlp.fc2}.*``, ``norm.*`` (150 tensors).
- ``dinov2_vits14_pretrain.pth``: the same plus ``mask_token`` [1,384] and the layer scales
  ``blocks.N.ls1.gamma`` / ``ls2.gamma``; ``pos_embed`` [1,1370,384] (518 px) (175 tensors).

Both use LayerNorm eps 1e-6, exact GELU and qkv bias. They differ in how the position embedding
follows the input size: the discriminator's DINO resizes it bilinearly to the patch grid (the
``forward_flex`` of the official ``vit_utils.py``), DINOv2 bicubically by a scale factor with the
+0.1 offset of its own ``interpolate_pos_encoding`` (and not at all at its native size).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..loading.io import CheckpointError, assign_state_dict, read_state_dict, unwrap_state_dict
from ..ram.swin import Mlp  # the timm MLP (fc1, GELU, fc2), shared with RAM's Swin


@dataclass(frozen=True)
class ViTConfig:
    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    layerscale: bool = False  # DINOv2: ls1/ls2 gammas
    mask_token: bool = False  # DINOv2 keeps an (unused here) mask token in its file
    pos_interpolation: str = "dino_bilinear"  # or "dinov2_bicubic"
    layer_norm_eps: float = 1e-6

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2


DINO_VITS16 = ViTConfig()
DINOV2_VITS14 = ViTConfig(
    img_size=518, patch_size=14, layerscale=True, mask_token=True, pos_interpolation="dinov2_bicubic"
)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        d = cfg.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.attn = Attention(d, cfg.num_heads)
        self.norm2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(d, int(d * cfg.mlp_ratio))
        self.ls1 = LayerScale(d) if cfg.layerscale else nn.Identity()
        self.ls2 = LayerScale(d) if cfg.layerscale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.proj = nn.Conv2d(3, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"input {h}x{w} is not a multiple of the patch size {self.patch_size}.")
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """A plain pre-norm ViT; ``forward_tokens`` returns the hidden states the callers need."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, d))
        if cfg.mask_token:
            self.mask_token = nn.Parameter(torch.zeros(1, d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)

    def _pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        pos = self.pos_embed
        n = pos.shape[1] - 1
        side = int(math.isqrt(n))
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        if self.cfg.pos_interpolation == "dino_bilinear":
            grid = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bilinear", align_corners=False)
            return torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)], dim=1)
        # DINOv2: untouched at its native square size, else bicubic by scale factor with +0.1 offset
        if grid_h * grid_w == n and grid_h == grid_w:
            return pos
        dtype = pos.dtype
        grid = patch_pos.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
        scale = ((grid_h + 0.1) / side, (grid_w + 0.1) / side)
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
        if grid.shape[-2:] != (grid_h, grid_w):
            raise ValueError(f"position embedding resized to {tuple(grid.shape[-2:])}, expected {(grid_h, grid_w)}.")
        grid = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat([cls_pos.float(), grid], dim=1).to(dtype)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens with the CLS token prepended and the position embedding added."""
        p = self.cfg.patch_size
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        return tokens + self._pos_embed(x.shape[-2] // p, x.shape[-1] // p).to(tokens.dtype)

    def forward_tokens(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[embedding output, block 0 output, ..., block depth-1 output] (before the final norm)."""
        states = [self.embed(x)]
        for block in self.blocks:
            states.append(block(states[-1]))
        return states

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Final-norm tokens [B, 1+N, D]."""
        return self.norm(self.forward_tokens(x)[-1])

    def cls_features(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised CLS token [B, D] (DINOv2's ``x_norm_clstoken``)."""
        return self.forward(x)[:, 0]


def read_vit_state_dict(path: str, cfg: ViTConfig, *, family: str) -> dict[str, torch.Tensor]:
    """A released DINO/DINOv2 file as a state dict in our (= the release's) key layout."""
    sd = unwrap_state_dict(read_state_dict(path, family=family))
    # Some re-exports keep a classifier head or a 'module.'/'backbone.' prefix; the released files do not.
    for prefix in ("module.", "backbone."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    if "pos_embed" in sd:
        expect = cfg.num_patches + 1
        if sd["pos_embed"].shape[1] != expect:
            raise CheckpointError(
                f"{path!r}: pos_embed has {sd['pos_embed'].shape[1]} positions, {family} expects {expect} "
                f"({cfg.img_size}px / patch {cfg.patch_size}). Is this the right file?"
            )
    return sd


def load_vit(path: str, cfg: ViTConfig, *, family: str, dtype=None, device=None) -> VisionTransformer:
    """Build ``cfg`` on meta and load a released DINO/DINOv2 file strictly (safetensors or safe .pth)."""
    sd = read_vit_state_dict(path, cfg, family=family)
    with torch.device("meta"):
        model = VisionTransformer(cfg)
    return assign_state_dict(model, sd, family=family, source=path, dtype=dtype, device=device)


def load_dino_vits16(path: str, **kw) -> VisionTransformer:
    return load_vit(path, DINO_VITS16, family="DINO ViT-S/16", **kw)


def load_dinov2_vits14(path: str, **kw) -> VisionTransformer:
    return load_vit(path, DINOV2_VITS14, family="DINOv2 ViT-S/14", **kw)
