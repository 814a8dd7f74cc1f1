"""Tiled VAE encode and decode: invisible seams, activation memory bounded by the tile size.

How a tile is made exact, and what stays approximate:

- **Halo.** Each tile runs on its core region plus a margin as wide as the network's
  receptive field (counted from the config: every 3x3 conv at every resolution), and only the
  core is kept. The zero padding at a tile's cut edges therefore never reaches the kept pixels;
  at the image border the tile edge *is* the image edge, so the padding is the real one.
  Tiles start on the latent grid, so the encoder's stride-2 convs and the decoder's nearest
  upsampling see the same pixels as in the untiled run.
- **Whole-image context.** Two operations see the whole image: every GroupNorm (per-tile
  statistics would give each tile its own colour cast) and the mid-block self-attention. One
  whole-image pass records, per sample, every GroupNorm's mean and variance and the attention
  layer's keys and values (``WholeImageContext``). The tiles then run with those fixed
  statistics, and each tile's attention uses its own exact keys plus the recorded keys of the
  rest of the image, each weighted by the area it stands for. Recorded at full size this is
  exactly the untiled VAE (the tests check it).
- **The one approximation.** To keep memory and work bounded, the whole-image pass runs on a
  copy shrunk to ``stats_px``^2 pixels (area-averaged latent for the decoder, antialiased image
  for the encoder). By default that is a quarter of the image, at most what one tile computes at
  full resolution (the decoder's trimmed core, the encoder's core with its halo): the pass then
  never needs more memory than a tile, nor more than a quarter of the image's own work. An image
  that fits is handled exactly; a larger one gets statistics and distant attention keys
  estimated at a lower resolution, the keys then averaged down to at most
  ``MAX_RECORDED_TOKENS`` cells (each weighted by its area: the estimate stays as good, and a
  tile's attention costs little more than its own tokens). By default an image that fits is
  not tiled at all: the pass would run it whole anyway, and tiles after it would double the
  work (a thin strip longer than a tile is the common case). (Tried and measured worse: the
  statistics of full-resolution crops spread over the image instead of a shrunk copy.)
- **Blending.** Neighbouring cores overlap by ``overlap_px``; outputs are blended with a linear
  feather across each overlap, so what differences remain fade out instead of forming seams.
  Cores are balanced: equal along each axis, as small as covers it with the fixed stride's count.
- **Trimmed decoder tiles.** The decoder's costly layers are its last, at full resolution, and by
  then most of the halo is spent: after each up block a tile keeps only its core plus the reach
  of the layers still to come (8 px at full resolution instead of 138 for the SD VAE). The same
  pixels, 28 % less time for a 1024 px tile (measured, bench/bench_tiles.py --vae-tiles 1024). (The encoder's costly layers come first,
  where nearly the whole halo is still needed, so it is not trimmed.)

Memory: each tile holds activations of one (tile + halo) input (a trimmed decoder tile: of its
core, at full resolution), and the shrunk whole-image pass no more; the attention of a tile
spans its own tokens plus at most as many recorded ones. The full-size result buffer lives on
the input's device (pass CPU tensors to keep it off the accelerator). When one tile covers the
whole input, or (with the default context) its area is at most the statistics pass's cap, the
plain untiled call runs (bit-identical).
The official AddSR code tiles only the decoder (and never the encoder, which runs out of
memory at 4320x7680); here both are tiled.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.operations import compute_device
from ..sampling.tiling import axis_origins, balanced_tile

# The default tile of both directions, in image pixels: the official decoder tile is 1792 px; 1024 px
# bounds each full-resolution 128-channel fp32 feature map at ~0.55 GB (1.7 GB at 1792 px), so the
# decoder's memory stops growing with the image past one tile (docs/performance.md).
DEFAULT_VAE_TILE_PX = 1024
DEFAULT_VAE_OVERLAP_PX = 64

# --- Whole-image context: GroupNorm statistics and attention tokens -------------------------------


@dataclass
class GroupNormStats:
    """Per GroupNorm module: its (mean, var) per call, each [B, groups] float32 (biased variance)."""

    entries: dict = field(default_factory=dict)  # nn.GroupNorm -> list[(mean, var)]

    def __len__(self) -> int:
        return sum(len(v) for v in self.entries.values())


@dataclass
class GlobalTokens:
    """An attention layer's keys and values over the whole (possibly shrunk) image: [B, hs*ws, C] each."""

    keys: torch.Tensor
    values: torch.Tensor
    grid_hw: tuple  # (hs, ws) of the recorded tokens


@dataclass
class WholeImageContext:
    """What a tile needs from the rest of the image: GroupNorm statistics and attention tokens.

    ``full_hw`` is the whole input's size at the attention layers' resolution (latent units).
    """

    norms: GroupNormStats
    tokens: dict  # attention module -> GlobalTokens
    full_hw: tuple


def _group_norms(module: nn.Module) -> list[nn.GroupNorm]:
    return [m for m in module.modules() if isinstance(m, nn.GroupNorm)]


def _attentions(module: nn.Module) -> list[nn.Module]:
    """Spatial self-attention layers in the diffusers VAE layout (group_norm, to_q/k/v, to_out)."""
    names = ("group_norm", "to_q", "to_k", "to_v", "to_out")
    return [m for m in module.modules() if all(hasattr(m, n) for n in names)]


def _float32_at_least(x: torch.Tensor) -> torch.Tensor:
    # Statistics in float32 at least: half-precision sums over megapixels are not usable.
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


@contextmanager
def _patched_forwards(patches: dict):
    """Temporarily give modules an instance-level ``forward``; restores exactly what was there."""
    saved = {m: m.__dict__.get("forward") for m in patches}
    try:
        for m, fwd in patches.items():
            m.forward = fwd
        yield
    finally:
        for m, old in saved.items():
            if old is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = old


def _float32_affine(gn: nn.GroupNorm, device) -> tuple:
    # The weights go to the activations' device: a partial (lowvram) load may leave them offloaded.
    return tuple(None if p is None else p.to(device, torch.float32) for p in (gn.weight, gn.bias))


def _dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` with the canonical strides of its layout (NCHW or NHWC), as the native norm kernels need.

    A dense NHWC map can carry an odd stride on a size-1 dim (a batch of one), which the kernels'
    layout check does not accept; restriding it moves no data."""
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        _, c, h, w = x.shape
        return x.as_strided(x.shape, (c * h * w, 1, w * c, c))
    return x.contiguous()


def _recording_norm(gn: nn.GroupNorm, stats: GroupNormStats):
    def forward(x):
        if x.device.type == "cpu":
            # One pass for the output and the statistics, in float32 for any input dtype and on NHWC
            # maps as they are: on a bf16 NHWC map 17x faster than the reshape below (an NHWC -> NCHW
            # copy) plus var_mean plus group_norm (measured on CPU, where it is used).
            b, c = x.shape[:2]
            x = _dense(x)
            out, mean, rstd = torch.native_group_norm(x, *_float32_affine(gn, x.device), b, c, x[0, 0].numel(),
                                                      gn.num_groups, gn.eps)
            stats.entries.setdefault(gn, []).append((mean.float(), (rstd.float().pow(-2) - gn.eps).clamp_min_(0)))
            return out
        mean, var = group_stats(gn, x)
        stats.entries.setdefault(gn, []).append((mean, var))
        weight = None if gn.weight is None else gn.weight.to(x.device)
        bias = None if gn.bias is None else gn.bias.to(x.device)
        return F.group_norm(x, gn.num_groups, weight, bias, gn.eps)

    return forward


def group_stats(gn: nn.GroupNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample and group, (mean, biased variance) of ``x`` in float32, [B, groups] each, computed
    a group at a time: a float32 copy of one group's channels at most, never of the whole map (a
    half-precision map's float32 copy is twice its size; on a GPU that was the statistics pass's peak)."""
    b, c = x.shape[:2]
    per = c // gn.num_groups
    parts = [torch.var_mean(_float32_at_least(x[:, g * per : (g + 1) * per]).reshape(b, -1), dim=-1, unbiased=False)
             for g in range(gn.num_groups)]
    return torch.stack([m for _, m in parts], 1), torch.stack([v for v, _ in parts], 1)


def _fixed_norm(gn: nn.GroupNorm, stats: GroupNormStats):
    entries, calls = stats.entries.get(gn), [0]

    def forward(x):
        if not entries:
            raise ValueError("a GroupNorm layer ran that had no recorded statistics; record them on the same path")
        mean, var = entries[calls[0] % len(entries)]
        calls[0] += 1
        if mean.shape[0] != x.shape[0]:
            raise ValueError(f"statistics were recorded for batch {mean.shape[0]}, got batch {x.shape[0]}")
        b, c = x.shape[:2]
        mean = mean.to(x.device).repeat_interleave(c // gn.num_groups, dim=1)  # [B, C]
        var = var.to(x.device).repeat_interleave(c // gn.num_groups, dim=1)
        weight, bias = _float32_affine(gn, x.device)
        if x.device.type in ("cpu", "cuda") and b == 1 and not (mean.requires_grad or var.requires_grad):
            # A per-channel normalisation with given statistics is an inference-mode batch norm: one
            # fused pass on any layout, in float32 for any input dtype (float32 statistics and affine);
            # on a bf16 NHWC map 4.6x faster than the form below (measured on CPU). On a GPU the same
            # kernel (mixed half/float32 batch norm) spares the form below's float32 copy and float32
            # result of every map (the fake-CUDA dry run: the tiled decode's peak, tools/gpu_dryrun.py).
            # Its statistics take no gradient: statistics recorded under autograd take the form below.
            return F.batch_norm(x, mean[0], var[0], weight, bias, False, 0.0, gn.eps)
        # ((x - mean) * rsqrt(var + eps)) * weight + bias folded into one per-channel scale and
        # shift, applied in one fused pass (float32 at least): the same map to float rounding.
        inv = torch.rsqrt(var + gn.eps)
        shift = -mean * inv
        if weight is not None:
            inv, shift = inv * weight, shift * weight + bias
        view = (b, c) + (1,) * (x.ndim - 2)
        xf = _float32_at_least(x)
        return torch.addcmul(shift.to(xf.dtype).view(view), xf, inv.to(xf.dtype).view(view)).to(x.dtype)

    return forward


@contextmanager
def record_group_norm_stats(module: nn.Module):
    """Run ``module`` normally while recording every GroupNorm's statistics; yields ``GroupNormStats``."""
    stats = GroupNormStats()
    with _patched_forwards({gn: _recording_norm(gn, stats) for gn in _group_norms(module)}):
        yield stats


def _check_same_module(module: nn.Module, stats: GroupNormStats) -> list[nn.GroupNorm]:
    norms = _group_norms(module)
    if not any(gn in stats.entries for gn in norms):
        raise ValueError("the statistics were recorded on another module; record them on the one being tiled")
    return norms


@contextmanager
def fixed_group_norm_stats(module: nn.Module, stats: GroupNormStats):
    """Make every GroupNorm in ``module`` normalise with recorded statistics instead of its input's.

    Calls are matched per module in order (cycling), so a module used once per forward reuses
    its single entry for every tile.
    """
    norms = _check_same_module(module, stats)
    with _patched_forwards({gn: _fixed_norm(gn, stats) for gn in norms}):
        yield


def _tokens(attn: nn.Module, x: torch.Tensor):
    b, c, h, w = x.shape
    t = attn.group_norm(x).reshape(b, c, h * w).transpose(1, 2)
    return attn.to_q(t), attn.to_k(t), attn.to_v(t)


def _attention_out(attn: nn.Module, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    out = attn.to_out[1](attn.to_out[0](out))
    return out.transpose(1, 2).reshape(x.shape) + x


def _recording_attention(attn: nn.Module, tokens: dict):
    def forward(x):
        q, k, v = _tokens(attn, x)
        tokens[attn] = GlobalTokens(k.detach(), v.detach(), tuple(x.shape[-2:]))
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return _attention_out(attn, out, x)

    return forward


@contextmanager
def record_whole_image_context(module: nn.Module, full_hw: Sequence[int]):
    """Run ``module`` normally (on the whole, possibly shrunk, input) recording a ``WholeImageContext``.

    ``full_hw`` is the size of the real input at the attention layers' resolution.
    """
    context = WholeImageContext(GroupNormStats(), {}, tuple(int(v) for v in full_hw))
    patches = {gn: _recording_norm(gn, context.norms) for gn in _group_norms(module)}
    patches.update({a: _recording_attention(a, context.tokens) for a in _attentions(module)})
    with _patched_forwards(patches):
        yield context


class TileRegion:
    """Where the tile being run sits: (y0, y1, x0, x1) of its context, in latent units."""

    def __init__(self):
        self.box = None


def _valid_box(box, full_hw, reach: int):
    """The part of a context whose attention inputs are exact: ``reach`` in from every cut edge."""
    y0, y1, x0, x1 = box
    h, w = full_hw
    return (y0 + reach if y0 > 0 else 0, y1 - reach if y1 < h else h, x0 + reach if x0 > 0 else 0, x1 - reach if x1 < w else w)


def _tiled_attention(attn: nn.Module, recorded: Optional[GlobalTokens], full_hw: tuple, region: TileRegion, reach: int):
    """Attention of the tile's queries over exact local keys plus recorded whole-image keys elsewhere.

    Near a context's cut edges the attention inputs are corrupted by the zero padding (within
    ``reach`` latents); those keys, and everything outside the context, come from the recorded
    tokens instead. Each recorded token stands for the area it covers: its logit gets
    + log(area), carried by an extra key channel so the fused SDPA kernels still apply. With
    tokens recorded at full size this is exactly the untiled attention.
    """

    def forward(x):
        q, k, v = _tokens(attn, x)
        b, n, c = q.shape
        if recorded is None:
            out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
            return _attention_out(attn, out, x)
        box = region.box
        vy0, vy1, vx0, vx1 = _valid_box(box, full_hw, reach)
        ly0, lx0 = vy0 - box[0], vx0 - box[2]  # valid box inside the context
        hc, wc = x.shape[-2:]
        if vy1 <= vy0 or vx1 <= vx0:
            local = torch.zeros(0, dtype=torch.long, device=q.device)
        else:
            grid = torch.arange(hc * wc, device=q.device).view(hc, wc)
            local = grid[ly0 : ly0 + vy1 - vy0, lx0 : lx0 + vx1 - vx0].flatten()
        k_loc, v_loc = k[:, local], v[:, local]
        outside = _outside_tokens(recorded, full_hw, (vy0, vy1, vx0, vx1))
        if outside is None:
            out = F.scaled_dot_product_attention(q[:, None], k_loc[:, None], v_loc[:, None])[:, 0]
            return _attention_out(attn, out, x)
        keep, log_area = outside
        kg = recorded.keys[:, keep].to(q.device, q.dtype)
        vg = recorded.values[:, keep].to(q.device, q.dtype)
        scale = 1.0 / math.sqrt(c)
        pad = 8  # one bias channel, padded so fused kernels keep aligned head sizes
        q_ext = torch.cat([q, q.new_ones(b, n, 1), q.new_zeros(b, n, pad - 1)], -1)
        k_ext = torch.cat([
            torch.cat([k_loc, k_loc.new_zeros(b, k_loc.shape[1], pad)], -1),
            torch.cat([kg, kg.new_full((b, kg.shape[1], 1), log_area / scale), kg.new_zeros(b, kg.shape[1], pad - 1)], -1),
        ], 1)
        # Values padded to the keys' width: the fused (flash) kernels need one head size for q, k and
        # v, and the unfused fallback holds the whole [queries x keys] matrix (8x slower in bf16).
        v_all = torch.cat([torch.cat([v_loc, vg], 1), v.new_zeros(b, v_loc.shape[1] + vg.shape[1], pad)], -1)
        out = F.scaled_dot_product_attention(q_ext[:, None], k_ext[:, None], v_all[:, None], scale=scale)[:, 0, :, :c]
        return _attention_out(attn, out, x)

    return forward


def _outside_tokens(recorded: GlobalTokens, full_hw: tuple, box):
    """Recorded tokens whose cell centre lies outside ``box``, and the log of the area each stands for."""
    h, w = full_hw
    y0, y1, x0, x1 = box
    local_area = max(0, y1 - y0) * max(0, x1 - x0)
    if local_area >= h * w:
        return None
    # Index geometry on the host (numpy): no tensor op whose result size depends on values, so
    # nothing waits on a GPU; the index goes to the keys' device once per call.
    hs, ws = recorded.grid_hw
    cy = (np.arange(hs, dtype=np.float64) + 0.5) * (h / hs)
    cx = (np.arange(ws, dtype=np.float64) + 0.5) * (w / ws)
    inside = ((cy >= y0) & (cy < y1))[:, None] & ((cx >= x0) & (cx < x1))[None, :]
    keep = np.flatnonzero(~inside)
    if keep.size == 0:
        return None
    area = (h * w - local_area) / keep.size
    return torch.from_numpy(keep).to(recorded.keys.device), math.log(max(area, 1e-6))


@contextmanager
def tiled_context(module: nn.Module, context: WholeImageContext, region: TileRegion, attention_reach: int):
    """Run ``module`` tile by tile with the whole image's GroupNorm statistics and attention tokens.

    ``attention_reach``: how far (latents) zero padding at a cut edge reaches by the attention.
    """
    norms = _check_same_module(module, context.norms)
    patches = {gn: _fixed_norm(gn, context.norms) for gn in norms}
    for attn in _attentions(module):
        patches[attn] = _tiled_attention(attn, context.tokens.get(attn), context.full_hw, region, attention_reach)
    with _patched_forwards(patches):
        yield


# --- Geometry -----------------------------------------------------------------------------------------


def _latent_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def decoder_receptive_px(vae) -> int:
    """Reach of the decoder, in output pixels, from one latent: every 3x3 conv at its scale."""
    levels, per_block = len(vae.config.block_out_channels), vae.config.layers_per_block + 1
    scale = 2 ** (levels - 1)
    reach = scale * (1 + 4 + 2 * per_block)  # conv_in, mid-block resnets, first up block
    for _ in range(levels - 1):
        scale //= 2
        reach += scale * (1 + 2 * per_block)  # upsample conv, resnets
    return reach + 1  # conv_out


def decoder_trim_margins(vae) -> list[tuple[int, int]]:
    """Per up block of the decoder: (output px per feature px after it, the reach of everything
    after it in output px). A tile needs only that much context past its core once the block has
    run; the rest of the halo is spent (same count as :func:`decoder_receptive_px`)."""
    levels, per_block = len(vae.config.block_out_channels), vae.config.layers_per_block + 1
    scales = [2 ** (levels - 1 - i) for i in range(levels)]  # each block's resnets
    margins = []
    for i in range(levels):
        after = scales[i + 1] if i + 1 < levels else scales[i]  # its upsampler (and conv) ran: one level up
        reach = 1  # conv_out
        for j in range(i + 1, levels):
            # block j's resnets, and the conv of block j-1's upsampler (block i's own already ran)
            reach += scales[j] * 2 * per_block + (scales[j] if j > i + 1 else 0)
        margins.append((after, reach))
    return margins


def decoder_attention_reach(vae) -> int:
    """Latents from a cut edge whose mid-block attention input is affected: conv_in + one resnet."""
    return 3


def encoder_receptive_px(vae) -> int:
    """Reach of the encoder, in input pixels: convs per level (stride-2 convs reach 2 px), mid block, conv_out."""
    return _encoder_reach_px(vae, to_attention=False)


def encoder_attention_reach(vae) -> int:
    """Latents from a cut edge whose mid-block attention input is affected."""
    return math.ceil(_encoder_reach_px(vae, to_attention=True) / _latent_factor(vae))


def _encoder_reach_px(vae, to_attention: bool) -> int:
    levels, per_block = len(vae.config.block_out_channels), vae.config.layers_per_block
    reach, scale = 1, 1  # conv_in
    for _ in range(levels - 1):
        reach += scale * (2 * per_block + 2)
        scale *= 2
    mid = 2 if to_attention else 4 + 1  # first mid resnet, or both plus conv_out
    return reach + scale * (2 * per_block + mid)


@dataclass(frozen=True)
class Span:
    """One tile along one axis, in latent units: the core [start, end) and its context [ctx_start, ctx_end)."""

    start: int
    end: int
    ctx_start: int
    ctx_end: int
    ramp_before: int  # overlap with the previous tile (0 at the border)
    ramp_after: int


def plan_spans(size: int, tile: int, overlap: int, halo: int, balanced: bool = True) -> list[Span]:
    """Cores as in the latent tiling (last one flush with the edge), each with a halo of context.

    ``balanced``: equal cores, the smallest that cover ``size`` with as many tiles as ``tile``
    needs (:func:`~addsr_core.sampling.tiling.balanced_tile`), instead of a last core that mostly
    repeats its neighbour; the work is what the pixels need, whatever the image size."""
    tile = min(tile, size)
    overlap = min(overlap, tile // 2)
    if balanced:
        tile = balanced_tile(size, tile, overlap)
    starts = axis_origins(size, tile, overlap)
    spans = []
    for i, s in enumerate(starts):
        before = (starts[i - 1] + tile - s) if i > 0 else 0
        after = (s + tile - starts[i + 1]) if i + 1 < len(starts) else 0
        spans.append(Span(s, s + tile, max(0, s - halo), min(size, s + tile + halo), before, after))
    return spans


def feather(length: int, ramp_before: int, ramp_after: int) -> torch.Tensor:
    """1 inside, a linear ramp across each overlap (sums to 1 with the neighbour's ramp), never 0."""
    i = torch.arange(length, dtype=torch.float32) + 0.5
    w = torch.ones(length)
    if ramp_before > 0:
        w = torch.minimum(w, i / ramp_before)
    if ramp_after > 0:
        w = torch.minimum(w, (length - i) / ramp_after)
    return w


# --- Tiled runs ---------------------------------------------------------------------------------------


def _vae_device_dtype(vae):
    """Where the VAE runs (its host's load device, see compute_device) and its weights' dtype."""
    return compute_device(vae), next(vae.parameters()).dtype


def _check_tiling_args(tile_px: int, overlap_px: int, factor: int) -> tuple[int, int]:
    if tile_px < factor:
        raise ValueError(f"tile size must be at least {factor} px, got {tile_px}")
    if overlap_px < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap_px}")
    return tile_px // factor, overlap_px // factor


def _run_tiles(
    run: Callable[[torch.Tensor], torch.Tensor],
    source: torch.Tensor,
    ys: Sequence[Span],
    xs: Sequence[Span],
    in_scale: int,
    out_scale: int,
    region: TileRegion,
    on_tile: Optional[Callable[[], None]] = None,
    out_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Blend ``run(context, span_y, span_x)`` (the tile's core, from its context) over the tile grid.
    Spans are in latent units; ``*_scale`` = px per latent. Returns the blend in ``out_dtype``
    (default: the tiles' dtype); in float32 it is the accumulator itself, no full-size copy."""
    # The tiles form a grid and each tile's weight is an outer product of its two feathers, so the
    # weights' sum is the outer product of the per-axis sums: no full-size weight plane.
    sum_y, sum_x = (_feather_sum(spans, out_scale) for spans in (ys, xs))
    out = None
    for sx in xs:
        for sy in ys:
            region.box = (sy.ctx_start, sy.ctx_end, sx.ctx_start, sx.ctx_end)
            ctx = source[..., sy.ctx_start * in_scale : sy.ctx_end * in_scale, sx.ctx_start * in_scale : sx.ctx_end * in_scale]
            result = run(ctx, sy, sx)
            th, tw = (sy.end - sy.start) * out_scale, (sx.end - sx.start) * out_scale
            if tuple(result.shape[-2:]) != (th, tw):
                raise RuntimeError(f"a VAE tile returned {tuple(result.shape[-2:])}, expected its core {(th, tw)}")
            if out is None:
                out = torch.zeros(*result.shape[:2], sum_y.numel(), sum_x.numel(), device=source.device)
                out_dtype = out_dtype or result.dtype
            ys0, xs0 = sy.start * out_scale, sx.start * out_scale
            weight = torch.outer(_span_feather(sy, out_scale), _span_feather(sx, out_scale)).to(result.device)
            out[..., ys0 : ys0 + th, xs0 : xs0 + tw] += (result.float() * weight).to(source.device)
            del result
            if on_tile is not None:
                on_tile()
    out.div_(sum_y.to(out.device)[:, None]).div_(sum_x.to(out.device))
    return out if out_dtype == torch.float32 else out.to(out_dtype)


def _span_feather(span: Span, scale: int) -> torch.Tensor:
    """One tile's blend weight along one axis (``feather`` over its core, ``scale`` px per latent)."""
    return feather((span.end - span.start) * scale, span.ramp_before * scale, span.ramp_after * scale)


def _feather_sum(spans: Sequence[Span], scale: int) -> torch.Tensor:
    """Along one axis, the sum of the tiles' feathers at each output pixel."""
    total = torch.zeros(spans[-1].end * scale)
    for s in spans:
        total[s.start * scale : s.end * scale] += _span_feather(s, scale)
    return total


def _runs_untiled(hw, tile: int, whole_area: int, context: Optional[WholeImageContext]) -> bool:
    """One tile covers the input, or (with the default context) the statistics pass would run it
    whole: its area is at most ``whole_area``."""
    h, w = hw
    return (h <= tile and w <= tile) or (context is None and h * w <= whole_area)


def _statistics_area(hw, tile_area: int, stats: Optional[int]) -> tuple[int, int]:
    """(the statistics pass's area, the largest input run whole): ``stats``^2 for both when given;
    by default a quarter of the input, at most ``tile_area`` (what one tile computes at full
    resolution), and inputs up to ``tile_area`` run whole. So the pass never needs more memory
    than a tile, nor more than a quarter of the image's own work."""
    if stats is not None:
        return stats * stats, stats * stats
    return min(tile_area, hw[0] * hw[1] // 4), tile_area


def _shrunk_size(h: int, w: int, max_area: int, multiple: int = 1) -> tuple[int, int]:
    if h * w <= max_area:
        return h, w
    f = math.sqrt(max_area / (h * w))
    return max(multiple, int(h * f) // multiple * multiple), max(multiple, int(w * f) // multiple * multiple)


# Recorded attention tokens kept for the tiles of an image whose context is estimated (shrunk):
# each tile attends to its own tokens plus these, so their count is a tile's attention cost. 64²
# tokens (each standing for its area) instead of the shrunk pass's ~164²: measured, a 1016 px tile's
# attention takes 19.2 s with 35,500 keys and 7.1 s with its own 14,641.
MAX_RECORDED_TOKENS = 64 * 64


def coarsened_tokens(tokens: GlobalTokens, max_tokens: int) -> GlobalTokens:
    """The same keys and values averaged over cells, at most ``max_tokens`` of them (aspect kept);
    each then stands for a larger area, which the tiled attention weights it by."""
    hs, ws = tokens.grid_hw
    if hs * ws <= max_tokens:
        return tokens
    f = math.sqrt(max_tokens / (hs * ws))
    grid = (max(1, int(hs * f)), max(1, int(ws * f)))
    b, _, c = tokens.keys.shape

    def pool(t):
        cells = F.adaptive_avg_pool2d(t.transpose(1, 2).reshape(b, c, hs, ws).float(), grid)
        return cells.reshape(b, c, -1).transpose(1, 2).to(t.dtype)

    return GlobalTokens(pool(tokens.keys), pool(tokens.values), grid)


def _estimated(context: WholeImageContext, max_tokens: Optional[int]) -> WholeImageContext:
    if max_tokens is not None:
        context.tokens = {a: coarsened_tokens(t, max_tokens) for a, t in context.tokens.items()}
    return context


def decoder_context(vae, latent: torch.Tensor, max_latent_area: Optional[int] = None,
                    max_tokens: Optional[int] = MAX_RECORDED_TOKENS) -> WholeImageContext:
    """Record the decoder's whole-image context, on the latent shrunk (area average) to ``max_latent_area``.

    ``None`` records at full size: exact, but with whole-image activations (for checks). A shrunk
    (estimated) context keeps at most ``max_tokens`` attention tokens (:func:`coarsened_tokens`).
    """
    device, dtype = _vae_device_dtype(vae)
    full = tuple(latent.shape[-2:])
    size = full if max_latent_area is None else _shrunk_size(*full, max_latent_area)
    small = latent if size == full else F.interpolate(latent.float(), size=size, mode="area")
    with record_whole_image_context(vae.decoder, full) as context:
        vae.decode(small.to(device, dtype))
    return context if size == full else _estimated(context, max_tokens)


def encoder_context(vae, image: torch.Tensor, max_pixel_area: Optional[int] = None,
                    max_tokens: Optional[int] = MAX_RECORDED_TOKENS) -> WholeImageContext:
    """Record the encoder's whole-image context, on the image shrunk (antialiased) to ``max_pixel_area``
    (``max_tokens`` as for :func:`decoder_context`)."""
    device, dtype = _vae_device_dtype(vae)
    factor = _latent_factor(vae)
    full = tuple(image.shape[-2:])
    size = full if max_pixel_area is None else _shrunk_size(*full, max_pixel_area, factor)
    small = image
    if size != full:
        small = F.interpolate(image.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    with record_whole_image_context(vae.encoder, (full[0] // factor, full[1] // factor)) as context:
        vae.encode_moments(small.to(device, dtype))
    return context if size == full else _estimated(context, max_tokens)


def tiled_decode(
    vae,
    latent: torch.Tensor,
    tile_px: int = DEFAULT_VAE_TILE_PX,
    overlap_px: int = DEFAULT_VAE_OVERLAP_PX,
    *,
    halo_px: Optional[int] = None,
    stats_px: Optional[int] = None,
    context: Optional[WholeImageContext] = None,
    on_tile: Optional[Callable[[], None]] = None,
    balanced: bool = True,
    trim: bool = True,
    out_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """``vae.decode`` of an UNSCALED latent [B,C,h,w] in tiles of ``tile_px`` output pixels.

    Returns the raw decoder output [B,3,8h,8w] on the latent's device (tiles run on the VAE's,
    so a CPU latent keeps the full-size result off the accelerator). ``halo_px`` defaults to the
    decoder's receptive field. ``context`` defaults to ``decoder_context`` on the latent shrunk
    to at most ``stats_px``^2 output pixels (default: a quarter of the image, at most the core
    of a tile, or its whole context when untrimmed: no more memory than a tile; larger is more
    faithful). Without ``context``, a latent no larger than that cap (or ``stats_px``^2) runs
    untiled. ``on_tile()`` is called after each tile. ``balanced`` (on): equal tiles per axis, see
    :func:`plan_spans` (off: fixed stride, the last tile flush with the edge). ``trim`` (on): the
    decoder drops each tile's spent halo after every up block (:class:`_KeptWindow`; the same
    pixels, far less work at full resolution). ``out_dtype``: the result's dtype (default: the
    VAE's, as ``vae.decode``); float32 returns the tiles' accumulator itself, no full-size copy.
    """
    factor = _latent_factor(vae)
    tile, overlap = _check_tiling_args(tile_px, overlap_px, factor)
    h, w = latent.shape[-2:]
    device, dtype = _vae_device_dtype(vae)
    halo = math.ceil((decoder_receptive_px(vae) if halo_px is None else halo_px) / factor)
    # a trimmed tile computes its core at full resolution, an untrimmed one its whole context
    full_res = tile if trim else tile + 2 * halo
    area, whole = _statistics_area((h, w), full_res * full_res, None if stats_px is None else max(1, stats_px // factor))
    if _runs_untiled((h, w), tile, whole, context):
        return vae.decode(latent.to(device, dtype)).to(latent.device, out_dtype or dtype)
    if context is None:
        context = decoder_context(vae, latent, area)

    margins = decoder_trim_margins(vae) if trim else None

    def run(ctx, sy, sx):
        kept = _KeptWindow(sy, sx, margins, factor)
        out = vae.decoder(vae.post_quant_conv(ctx.to(device, dtype)), trim=kept.trim if trim else None)
        return kept.core(out)

    region = TileRegion()
    ys, xs = plan_spans(h, tile, overlap, halo, balanced), plan_spans(w, tile, overlap, halo, balanced)
    with tiled_context(vae.decoder, context, region, decoder_attention_reach(vae)):
        return _run_tiles(run, latent, ys, xs, 1, factor, region, on_tile, out_dtype)


class _KeptWindow:
    """What part of a decoder tile's context is still computed: after each up block, the core plus
    the reach of the layers still to run (:func:`decoder_trim_margins`); the margin spent is cut, so
    the full-resolution layers run on little more than the core. Exact: the zero padding at the new
    cut edge reaches only the margin kept, never the core. Tracks the window's origin in output px."""

    def __init__(self, sy: Span, sx: Span, margins, factor: int):
        self.spans, self.margins, self.factor = (sy, sx), margins, factor
        self.origin = [sy.ctx_start * factor, sx.ctx_start * factor]  # output px of the features' (0, 0)

    def trim(self, h: torch.Tensor, i: int) -> torch.Tensor:
        scale, reach = self.margins[i]  # output px per feature px, reach still to come (output px)
        margin = -(-reach // scale)
        for axis, span in enumerate(self.spans):
            dim = h.ndim - 2 + axis
            start = self.origin[axis] // scale  # features index [start, start + size) in this scale's px
            lo = max(start, span.start * self.factor // scale - margin)
            hi = min(start + h.shape[dim], span.end * self.factor // scale + margin)
            if span.ctx_start == span.start:  # an image edge: its real padding is kept as it is
                lo = start
            if span.ctx_end == span.end:
                hi = start + h.shape[dim]
            h = h.narrow(dim, lo - start, hi - lo)
            self.origin[axis] = lo * scale
        return h

    def core(self, out: torch.Tensor) -> torch.Tensor:
        (sy, sx), f = self.spans, self.factor
        oy, ox = sy.start * f - self.origin[0], sx.start * f - self.origin[1]
        return out[..., oy : oy + (sy.end - sy.start) * f, ox : ox + (sx.end - sx.start) * f]


def tiled_encode(
    vae,
    image: torch.Tensor,
    tile_px: int = DEFAULT_VAE_TILE_PX,
    overlap_px: int = DEFAULT_VAE_OVERLAP_PX,
    *,
    halo_px: Optional[int] = None,
    stats_px: Optional[int] = None,
    context: Optional[WholeImageContext] = None,
    on_tile: Optional[Callable[[], None]] = None,
    balanced: bool = True,
) -> torch.Tensor:
    """``vae.encode_moments`` of an image [B,3,H,W] in [-1,1], in tiles of ``tile_px`` pixels.

    Returns the moments [B, 2*latent_channels, H/8, W/8] (mean, raw logvar) on the image's
    device. H and W must be multiples of 8 once more than one tile is needed. Options as for
    ``tiled_decode`` (``encoder_context`` for ``context``).
    """
    factor = _latent_factor(vae)
    tile, overlap = _check_tiling_args(tile_px, overlap_px, factor)
    H, W = image.shape[-2:]
    device, dtype = _vae_device_dtype(vae)
    halo = math.ceil((encoder_receptive_px(vae) if halo_px is None else halo_px) / factor)
    area, whole = _statistics_area((H, W), ((tile + 2 * halo) * factor) ** 2, stats_px)  # a tile runs its context
    if _runs_untiled((H, W), tile * factor, whole, context):
        return vae.encode_moments(image.to(device, dtype)).to(image.device)
    if H % factor or W % factor:
        raise ValueError(f"tiled encoding needs a size that is a multiple of {factor}, got {W}x{H}; crop or resize the image first")
    if context is None:
        context = encoder_context(vae, image, area)

    def run(ctx, sy, sx):
        out = vae.quant_conv(vae.encoder(ctx.to(device, dtype)))
        oy, ox = sy.start - sy.ctx_start, sx.start - sx.ctx_start
        return out[..., oy : oy + sy.end - sy.start, ox : ox + sx.end - sx.start]

    region = TileRegion()
    ys, xs = plan_spans(H // factor, tile, overlap, halo, balanced), plan_spans(W // factor, tile, overlap, halo, balanced)
    with tiled_context(vae.encoder, context, region, encoder_attention_reach(vae)):
        return _run_tiles(run, image, ys, xs, factor, 1, region, on_tile)
