"""Tiled encode and decode: the whole-image context estimated on a shrunk copy, then the tiles run and blended."""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ...models.operations import compute_device
from .attention import TileRegion, tiled_context
from .geometry import (Span, _feather_sum, _latent_factor, _span_feather, decoder_attention_reach, decoder_receptive_px,
                       decoder_trim_margins, encoder_attention_reach, encoder_receptive_px, plan_spans)
from .statistics import GlobalTokens, WholeImageContext, record_whole_image_context

# The default tile of both directions, in image pixels: the official decoder tile is 1792 px; 1024 px
# bounds each full-resolution 128-channel fp32 feature map at ~0.55 GB (1.7 GB at 1792 px), so the
# decoder's memory stops growing with the image past one tile (docs/performance.md).
DEFAULT_VAE_TILE_PX = 1024
DEFAULT_VAE_OVERLAP_PX = 64


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
