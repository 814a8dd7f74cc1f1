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
from .attention import TileRegion, tiled_context
from .codec import (DEFAULT_VAE_OVERLAP_PX, DEFAULT_VAE_TILE_PX, MAX_RECORDED_TOKENS, coarsened_tokens, decoder_context,
                    encoder_context, tiled_decode, tiled_encode)
from .geometry import (Span, decoder_attention_reach, decoder_receptive_px, decoder_trim_margins, encoder_attention_reach,
                       encoder_receptive_px, feather, plan_spans)
from .statistics import (GlobalTokens, GroupNormStats, WholeImageContext, fixed_group_norm_stats, group_stats,
                         record_group_norm_stats, record_whole_image_context)

__all__ = [
    "DEFAULT_VAE_OVERLAP_PX", "DEFAULT_VAE_TILE_PX", "MAX_RECORDED_TOKENS",
    "tiled_decode", "tiled_encode", "decoder_context", "encoder_context", "coarsened_tokens",
    "TileRegion", "tiled_context",
    "Span", "plan_spans", "feather", "decoder_receptive_px", "decoder_trim_margins", "decoder_attention_reach",
    "encoder_receptive_px", "encoder_attention_reach",
    "GroupNormStats", "GlobalTokens", "WholeImageContext", "group_stats", "record_group_norm_stats",
    "fixed_group_norm_stats", "record_whole_image_context",
]
