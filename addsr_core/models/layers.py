"""Building blocks shared by the UNet, the ControlNet and the VAE (diffusers parameter names).

Each takes ``operations`` (default :mod:`torch.nn`), the namespace its layers are built from; see
:mod:`addsr_core.models.operations`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .subpixel import upsample_conv as subpixel_upsample_conv


def in_weight_layout(x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    """``x`` in the memory format of ``conv``'s weight (no copy when it already is).

    A conv whose input and weight layouts differ runs in the input's layout and reorders its weight
    at every call, and its output carries that layout on through the network: an NHWC latent from a
    channels_last VAE would make every conv of an NCHW UNet reorder its weight.
    """
    weight = getattr(conv, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4 or x.dim() != 4:
        return x
    nhwc = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    return x.contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)


def timestep_embedding(timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, [B] -> [B, dim] in float32."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / (half - freq_shift)
    args = timesteps[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def broadcast_timesteps(timestep, batch: int, device) -> torch.Tensor:
    """Accept an int, a 0-d tensor or a [B] tensor, as the official models do."""
    if not torch.is_tensor(timestep):
        timestep = torch.tensor([timestep], device=device)
    timestep = timestep.to(device)
    if timestep.ndim == 0:
        timestep = timestep[None]
    return timestep.expand(batch)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels: int, time_embed_dim: int, operations=nn):
        super().__init__()
        self.linear_1 = operations.Linear(in_channels, time_embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = operations.Linear(time_embed_dim, time_embed_dim)

    def forward(self, x):
        return self.linear_2(self.act(self.linear_1(x)))

    def embed_timesteps(self, timestep, batch: int, device, dtype, flip_sin_to_cos=True, freq_shift=0.0):
        """Raw timesteps (int, 0-d or [B]) -> [B, time_embed_dim], as the UNet and ControlNet need."""
        t = broadcast_timesteps(timestep, batch, device)
        emb = timestep_embedding(t, self.linear_1.in_features, flip_sin_to_cos, freq_shift)
        return self(emb.to(dtype))


class ResnetBlock2D(nn.Module):
    """GroupNorm-SiLU-conv twice, with an optional timestep injection and 1x1 shortcut.

    ``spade`` is an optional feature modulation (StableSR's SFT layer) applied to the residual
    branch before the skip is added; it takes ``(h, struct_cond)``.
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int | None, groups: int, eps: float,
                 operations=nn):
        super().__init__()
        ops = operations
        self.norm1 = ops.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = ops.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = ops.Linear(temb_channels, out_channels) if temb_channels else None
        self.norm2 = ops.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = ops.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = ops.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.spade: nn.Module | None = None

    def forward(self, x, temb=None, struct_cond=None):
        # Without autograd the SiLUs and the skip work in place on tensors this block just made (the
        # norms' and the last layer's outputs): the same numbers without fresh full-size buffers,
        # ~10 % faster for a bf16 VAE on a CPU (measured). Autograd keeps them: it needs the inputs.
        inplace = not torch.is_grad_enabled()
        h = self.conv1(F.silu(self.norm1(x), inplace=inplace))
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h), inplace=inplace)))
        if self.spade is not None and struct_cond is not None:
            h = self.spade(h, struct_cond)
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        if inplace and h.shape == x.shape and h.dtype == x.dtype:
            return h.add_(x)  # x + h: addition commutes, so the same bits
        return x + h


class Downsample2D(nn.Module):
    """Stride-2 conv. ``padding=0`` is the VAE variant that pads right/bottom by one first."""

    def __init__(self, channels: int, padding: int = 1, operations=nn):
        super().__init__()
        self.padding = padding
        self.conv = operations.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x):
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    """2x nearest upsampling and a 3x3 conv. ``subpixel`` (set by the precision policy,
    :func:`addsr_core.precision.apply_layout`) computes a plain 2x on the small grid instead
    (:mod:`.subpixel`: 4/9 of the work, other rounding)."""

    subpixel = False

    def __init__(self, channels: int, operations=nn):
        super().__init__()
        self.conv = operations.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, size=None):
        if self.subpixel and size is None and type(self.conv) is nn.Conv2d:  # a host's layer class casts per call
            return subpixel_upsample_conv(x, self.conv.weight, self.conv.bias)
        # Upsampling to the skip's size (not a blind 2x) keeps odd latent sizes working.
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


class Attention(nn.Module):
    """Multi-head attention with diffusers' to_q/to_k/to_v/to_out.0 names, on [B, N, C] tokens."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None, bias: bool = False,
                 operations=nn):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = operations.Linear(query_dim, inner, bias=bias)
        self.to_k = operations.Linear(context_dim or query_dim, inner, bias=bias)
        self.to_v = operations.Linear(context_dim or query_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([operations.Linear(inner, query_dim), nn.Dropout(0.0)])

    def forward(self, x, context=None):
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        b = q.shape[0]
        q, k, v = (t.view(b, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, -1, q.shape[1] * q.shape[3])
        return self.to_out[1](self.to_out[0](out))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, operations=nn):
        super().__init__()
        self.proj = operations.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4, operations=nn):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult, operations), nn.Dropout(0.0), operations.Linear(dim * mult, dim)])

    def forward(self, x):
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention to ``context``, GEGLU feed-forward; pre-LayerNorm residuals."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, operations=nn):
        super().__init__()
        self.norm1 = operations.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dim_head, operations=operations)
        self.norm2 = operations.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, dim_head, context_dim=context_dim, operations=operations)
        self.norm3 = operations.LayerNorm(dim)
        self.ff = FeedForward(dim, operations=operations)

    def forward(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nn.Module):
    """SD2's spatial transformer with linear projections in and out."""

    def __init__(self, heads: int, dim_head: int, channels: int, context_dim: int, groups: int, num_layers: int = 1,
                 operations=nn):
        super().__init__()
        self.norm = operations.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = operations.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(channels, heads, dim_head, context_dim, operations) for _ in range(num_layers)]
        )
        self.proj_out = operations.Linear(channels, channels)

    def forward(self, x, context):
        b, c, h, w = x.shape
        residual = x
        x = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
        x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        x = self.proj_out(x).reshape(b, h, w, c).permute(0, 3, 1, 2)
        # The residual goes first: an add's output takes its first input's layout, so the block's
        # output keeps the input's memory format. ``x + residual`` made every map after the first
        # attention NHWC under NCHW weights, and each conv then copied its weight per call.
        return residual + x


class SpatialSelfAttention(nn.Module):
    """The VAE mid-block's single-head attention over all pixels, with its own GroupNorm."""

    def __init__(self, channels: int, groups: int, eps: float, operations=nn):
        super().__init__()
        self.group_norm = operations.GroupNorm(groups, channels, eps=eps)
        self.to_q = operations.Linear(channels, channels)
        self.to_k = operations.Linear(channels, channels)
        self.to_v = operations.Linear(channels, channels)
        self.to_out = nn.ModuleList([operations.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x):
        b, c, h, w = x.shape
        t = self.group_norm(x).view(b, c, h * w).transpose(1, 2)
        q, k, v = (m(t)[:, None] for m in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)[:, 0]
        out = self.to_out[1](self.to_out[0](out))
        return x + out.transpose(1, 2).reshape(b, c, h, w)  # x first: the output keeps x's layout
