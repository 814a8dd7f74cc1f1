"""RAM's Swin Transformer image encoder (``visual_encoder.*``), official parameter names.

Follows AddSR's ``ram/models/swin_transformer_lora.py``; the DAPE LoRA of every ``attn.qkv`` is
merged into the plain weight at load time (see :mod:`addsr_core.ram.lora`), so ``qkv`` here is an
ordinary Linear. Attention runs through ``scaled_dot_product_attention`` with the relative
position bias (and, for shifted windows, the -100 mask) as an additive mask.

``relative_position_index`` and ``attn_mask`` are derived from the geometry, never loaded: they are
non-persistent buffers, rebuilt by :meth:`SwinTransformer.rebuild_buffers` (needed after building
on the meta device).

The layers come from ``operations`` (default torch.nn, see :mod:`addsr_core.models.operations`).
The position-bias table and the buffers live outside those layers, so a host that loads only part
of the weights (ComfyUI's lowvram) may leave them on its offload device: they are moved to the
activations' device where they are used (a no-op when they are there already).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.operations import resolve_operations
from .config import SwinConfig


def relative_position_index(window: int, device=None) -> torch.Tensor:
    """[window^2, window^2] index into the (2*window-1)^2 bias table, as the official code builds it."""
    coords = torch.stack(torch.meshgrid(torch.arange(window, device=device), torch.arange(window, device=device), indexing="ij"))
    coords = coords.flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def shifted_window_mask(resolution: int, window: int, shift: int, device=None) -> torch.Tensor:
    """[num_windows, window^2, window^2]: 0 within a region, -100 across the regions a cyclic shift glues together."""
    regions = torch.zeros(resolution, resolution, device=device)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for rows in bounds:
        for cols in bounds:
            regions[rows, cols] = label
            label += 1
    windows = window_partition(regions[None, :, :, None], window).flatten(1)  # nW, window^2
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.where(diff != 0, torch.tensor(-100.0, device=device), torch.tensor(0.0, device=device))


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, H, W, C] -> [B * H/window * W/window, window, window, C], windows row-major."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    b = windows.shape[0] // (h * w // window // window)
    x = windows.view(b, h // window, w // window, window, window, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, window: int, num_heads: int, operations=nn):
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.qkv = operations.Linear(dim, 3 * dim)  # the official MergedLinear always has a bias
        self.proj = operations.Linear(dim, dim)
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)

    def position_bias(self, device=None) -> torch.Tensor:
        """[heads, N, N] on ``device`` (default: the table's)."""
        n = self.window * self.window
        table = self.relative_position_bias_table
        if device is not None:
            table = table.to(device)
        bias = table[self.relative_position_index.to(table.device).reshape(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)  # heads, N, N

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, num_windows: int) -> torch.Tensor:
        """``x``: [B * num_windows, N, C], batch-major; ``mask``: [num_windows, N, N] or None."""
        bw, n, c = x.shape
        q, k, v = self.qkv(x).view(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.position_bias(q.device).to(q.dtype)  # heads, N, N: broadcasts over every window
        if mask is not None:
            bias = bias[None] + mask[:, None].to(q.device, q.dtype)  # nW, heads, N, N
            # 4-D (not broadcast 5-D) so the fused SDPA kernels stay eligible.
            bias = bias.expand(bw // num_windows, -1, -1, -1, -1).reshape(bw, self.num_heads, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, operations=nn):
        super().__init__()
        self.fc1 = operations.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = operations.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SwinTransformerBlock(nn.Module):
    def __init__(self, dim: int, resolution: int, num_heads: int, window: int, shift: int, mlp_ratio: float, eps: float,
                 operations=nn):
        super().__init__()
        self.resolution, self.window, self.shift = resolution, window, shift
        self.norm1 = operations.LayerNorm(dim, eps=eps)
        self.attn = WindowAttention(dim, window, num_heads, operations)
        self.norm2 = operations.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), operations)
        self.register_buffer("attn_mask", self._mask(), persistent=False)

    def _mask(self, device=None):
        return shifted_window_mask(self.resolution, self.window, self.shift, device) if self.shift else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, c = x.shape
        res, window = self.resolution, self.window
        if length != res * res:
            raise ValueError(f"Swin block expects {res}x{res} tokens, got {length}")
        h = self.norm1(x).view(b, res, res, c)
        if self.shift:
            h = torch.roll(h, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = window_partition(h, window).view(-1, window * window, c)
        windows = self.attn(windows, self.attn_mask, (res // window) ** 2)
        h = window_reverse(windows.view(-1, window, window, c), window, res, res)
        if self.shift:
            h = torch.roll(h, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + h.reshape(b, length, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, resolution: int, dim: int, eps: float, operations=nn):
        super().__init__()
        self.resolution = resolution
        self.reduction = operations.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = operations.LayerNorm(4 * dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        x = x.view(b, self.resolution, self.resolution, c)
        # Official channel order: (even row, even col), (odd, even), (even, odd), (odd, odd).
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class BasicLayer(nn.Module):
    """One Swin stage: its blocks, then (except the last stage) a patch merge."""

    def __init__(self, cfg: SwinConfig, stage: int, operations=nn):
        super().__init__()
        dim, res = cfg.stage_dim(stage), cfg.stage_resolution(stage)
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim, res, cfg.num_heads[stage], cfg.stage_window(stage), cfg.stage_shift(stage, i),
                cfg.mlp_ratio, cfg.layer_norm_eps, operations,
            )
            for i in range(cfg.depths[stage])
        )
        last = stage == len(cfg.depths) - 1
        self.downsample = None if last else PatchMerging(res, dim, cfg.layer_norm_eps, operations)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: SwinConfig, operations=nn):
        super().__init__()
        self.img_size = cfg.img_size
        self.proj = operations.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)
        self.norm = operations.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps) if cfg.patch_norm else None

    def forward(self, x):
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(f"RAM's Swin expects {self.img_size}x{self.img_size} inputs, got {tuple(x.shape[-2:])}")
        x = self.proj(x).flatten(2).transpose(1, 2)
        return x if self.norm is None else self.norm(x)


class SwinTransformer(nn.Module):
    """[B,3,S,S] ImageNet-normalised -> [B, 1 + (S/32)^2, num_features]: the mean token, then all
    final-stage tokens row-major, both after the final LayerNorm (official ``forward``)."""

    def __init__(self, cfg: SwinConfig, operations=None):
        super().__init__()
        ops = resolve_operations(operations)
        self.config = cfg
        self.patch_embed = PatchEmbed(cfg, ops)
        self.layers = nn.ModuleList(BasicLayer(cfg, i, ops) for i in range(len(cfg.depths)))
        self.norm = ops.LayerNorm(cfg.num_features, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        return torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)

    @torch.no_grad()
    def rebuild_buffers(self, device=None) -> None:
        """Recompute the geometry buffers on ``device`` (default: where the weights are, or CPU if on meta)."""
        if device is None:
            device = self.norm.weight.device
            device = torch.device("cpu") if device.type == "meta" else device
        for module in self.modules():
            if isinstance(module, WindowAttention):
                module.relative_position_index = relative_position_index(module.window, device)
            elif isinstance(module, SwinTransformerBlock):
                module.attn_mask = module._mask(device)
