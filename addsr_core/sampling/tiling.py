"""Gaussian-weighted tiling: tile positions and the one stitching routine, :func:`blend_tiles`.

It serves the diffusion networks' latent tiles (:func:`aggregate_tiles`), StableSR's pixel tiles
(:func:`pixel_tile_plan`, the whole-image pass and the CFW decode), the same weights and
accumulation everywhere. Laid out like ComfyUI's ``tiled_scale_multidim``: a plan of positions,
then one loop that runs the function on each tile and blends into an output buffer.

The latent tiles reproduce the official AddSR tiled-latent branch (reference README §10), which crashes as
shipped but whose geometry and weights are well defined:

- the tile is ``min(tile, h, w)`` (square), positions step by ``tile - overlap`` and the last one
  is flush with the far edge;
- tiles are visited with the outer loop over x and the inner loop over y;
- each prediction is weighted by an (asymmetric) Gaussian and the weighted sum is divided by the
  summed weights, accumulated in float32 as the official code does.

Extensions: a ``(tile_h, tile_w)`` tile is clamped per axis (an int tile keeps the official square
clamp), a progress callback per tile, and an overlap that would make the official loop spin
forever (overlap >= the clamped tile) is reduced to half the clamped tile.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from ..errors import OptionsError

GAUSSIAN_VAR = 0.01

TileSize = Union[int, Sequence[int]]


def gaussian_weights(tile_w: int, tile_h: int, device=None, dtype=torch.float64) -> torch.Tensor:
    """The official ``_gaussian_weights`` for one tile: [tile_h, tile_w], float64 by default.

    x is centred at (W-1)/2 but y at H/2 (the official asymmetry, kept for parity).
    """
    if tile_w < 1 or tile_h < 1:
        raise ValueError(f"tile size must be positive, got {tile_w}x{tile_h}")
    # numpy's exp and np.outer, as the official code (bit-identical on the same CPU path; numpy's exp
    # can differ in the last bit between AVX-512 and AVX2-only CPUs).
    norm = np.sqrt(2 * np.pi * GAUSSIAN_VAR)
    mx, my = (tile_w - 1) / 2, tile_h / 2
    xs = [np.exp(-(x - mx) * (x - mx) / (tile_w * tile_w) / (2 * GAUSSIAN_VAR)) / norm for x in range(tile_w)]
    ys = [np.exp(-(y - my) * (y - my) / (tile_h * tile_h) / (2 * GAUSSIAN_VAR)) / norm for y in range(tile_h)]
    weights = torch.from_numpy(np.outer(ys, xs))
    return weights.to(device=device, dtype=dtype)


def _pair(value: TileSize, what: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise OptionsError(f"{what} must be an int or (height, width), got {value!r}")
    return pair


def effective_tile(h: int, w: int, tile: TileSize, overlap: TileSize = 0) -> tuple[int, int, int, int]:
    """(tile_h, tile_w, overlap_y, overlap_x) actually used for a latent of size (h, w)."""
    if h < 1 or w < 1:
        raise ValueError(f"latent must be non-empty, got {h}x{w}")
    if isinstance(tile, int):
        th = tw = min(tile, h, w)  # the official square clamp
    else:
        th, tw = _pair(tile, "tile")
        th, tw = min(th, h), min(tw, w)
    if th < 1 or tw < 1:
        raise OptionsError(f"tile must be positive, got {tile!r}")
    oy, ox = _pair(overlap, "overlap")
    if oy < 0 or ox < 0:
        raise OptionsError(f"overlap must be >= 0, got {overlap!r}")
    oy = oy if oy < th else th // 2
    ox = ox if ox < tw else tw // 2
    return th, tw, oy, ox


def axis_origins(size: int, tile: int, overlap: int) -> list[int]:
    """Smallest n with (n-1)*stride + tile >= size; origins i*stride with the last flush to the edge."""
    stride = tile - overlap
    n = 1 if size <= tile else 1 + math.ceil((size - tile) / stride)
    return [i * stride for i in range(n - 1)] + [size - tile]


def balanced_tile(size: int, tile: int, overlap: int) -> int:
    """The smallest tile that covers ``size`` with as many tiles as ``tile`` needs (same overlap).

    The fixed-stride layout pads the last tile out to the edge: a 256-latent side in 128-tiles with 32
    overlap takes 3 tiles that could each be 107 wide. Diffusion cost grows faster than the tile's
    area (attention), so equal, smaller tiles cost less for the same calls and the same overlap."""
    tile = min(tile, size)
    n = len(axis_origins(size, tile, overlap))
    if n == 1:
        return tile
    return max(overlap + 1, math.ceil((size + (n - 1) * overlap) / n))


def tile_origins(h: int, w: int, tile: TileSize, overlap: TileSize = 0) -> list[tuple[int, int]]:
    """Tile origins (y0, x0) in the official visit order: outer loop over x, inner over y."""
    th, tw, oy, ox = effective_tile(h, w, tile, overlap)
    ys, xs = axis_origins(h, th, oy), axis_origins(w, tw, ox)
    return [(y0, x0) for x0 in xs for y0 in ys]


def tile_count(h: int, w: int, tile: TileSize, overlap: TileSize = 0) -> int:
    """Number of network calls ``aggregate_tiles`` makes for a latent of size (h, w)."""
    th, tw, oy, ox = effective_tile(h, w, tile, overlap)
    return len(axis_origins(h, th, oy)) * len(axis_origins(w, tw, ox))


def _weight_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one blended output go: the output size, the (clamped) tile size and the
    origins in visit order (outer loop over x, inner over y, as every official tiled path)."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    origins: tuple

    @property
    def count(self) -> int:
        return len(self.origins)

    @property
    def single(self) -> bool:
        """One tile covers the whole output (``blend_tiles`` then returns it unchanged)."""
        return self.count == 1 and (self.tile_h, self.tile_w) == (self.height, self.width)


def latent_tile_plan(h: int, w: int, tile: TileSize, overlap: TileSize = 0) -> TilePlan:
    """The official tiled-latent geometry (see the module docstring and :func:`effective_tile`)."""
    th, tw, oy, ox = effective_tile(h, w, tile, overlap)
    return TilePlan(h, w, th, tw, tuple(tile_origins(h, w, tile, overlap)))


def pixel_tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Official ``ImageSpliterTh.extract_starts``: stride steps, the overflowing ones flush to the end."""
    if length <= tile:
        return [0]
    starts = [min(s, length - tile) for s in range(0, length, stride)]
    return list(dict.fromkeys(starts))


def pixel_tile_plan(h: int, w: int, tile: int, stride: int) -> TilePlan:
    """StableSR's official pixel tiles (``ImageSpliterTh``): square ``tile`` clamped per axis to the
    image, stepping by ``stride``, the overflowing starts flush to the far edge."""
    if h < 1 or w < 1 or tile < 1 or stride < 1:
        raise OptionsError(f"image {h}x{w}, tile {tile} and stride {stride} must all be positive")
    ys, xs = pixel_tile_starts(h, tile, stride), pixel_tile_starts(w, tile, stride)
    return TilePlan(h, w, min(tile, h), min(tile, w), tuple((y0, x0) for x0 in xs for y0 in ys))


def blend_tiles(
    fn: Callable[[int, int, int, int], torch.Tensor],
    plan: TilePlan,
    *,
    device=None,
    on_tile: Optional[Callable[[], None]] = None,
) -> torch.Tensor:
    """The one Gaussian tile blend: ``fn(y0, x0, th, tw) -> [B,C,th,tw]`` on every tile of ``plan``,
    stitched with the official weights (:func:`gaussian_weights`) and divided by their sum.

    Official accumulation: ``pred * W`` in the weights' precision (float64; float32 on MPS) added
    into float32 buffers, tiles in the plan's order; the result is cast to the tiles' dtype. The
    buffers live on ``device`` (default: the first tile's). A plan of one tile covering the whole
    output returns ``fn``'s output unchanged. ``on_tile()`` is called after each tile.
    """
    if plan.single:
        out = fn(0, 0, plan.height, plan.width)
        _check_tile(out, 0, plan.height, plan.width)
        if on_tile is not None:
            on_tile()
        return out

    th, tw = plan.tile_h, plan.tile_w
    acc = weight_sum = weights = None
    for i, (y0, x0) in enumerate(plan.origins):
        pred = fn(y0, x0, th, tw)
        _check_tile(pred, i, th, tw)
        if acc is None:
            device = pred.device if device is None else torch.device(device)
            weights = gaussian_weights(tw, th, device=device, dtype=_weight_dtype(device))
            acc = torch.zeros(*pred.shape[:2], plan.height, plan.width, device=device, dtype=torch.float32)
            weight_sum = torch.zeros(plan.height, plan.width, device=device, dtype=torch.float32)
            out_dtype = pred.dtype
        elif pred.shape[:2] != acc.shape[:2]:
            raise ValueError(f"tile {i}: batch/channels {tuple(pred.shape[:2])} differ from tile 0's {tuple(acc.shape[:2])}")
        acc[..., y0 : y0 + th, x0 : x0 + tw] += pred.to(device) * weights
        weight_sum[y0 : y0 + th, x0 : x0 + tw] += weights
        if on_tile is not None:
            on_tile()
    return (acc / weight_sum).to(out_dtype)


def aggregate_tiles(
    fn: Callable[[int, int, int, int], torch.Tensor],
    latent_hw: Sequence[int],
    tile: TileSize,
    overlap: TileSize = 0,
    *,
    on_tile: Optional[Callable[[], None]] = None,
) -> torch.Tensor:
    """Latent tiles: :func:`blend_tiles` over :func:`latent_tile_plan` (the diffusion networks)."""
    h, w = (int(v) for v in latent_hw)
    return blend_tiles(fn, latent_tile_plan(h, w, tile, overlap), on_tile=on_tile)


def _check_tile(pred, index: int, th: int, tw: int) -> None:
    if not torch.is_tensor(pred) or pred.ndim != 4 or tuple(pred.shape[-2:]) != (th, tw):
        shape = tuple(pred.shape) if torch.is_tensor(pred) else type(pred).__name__
        raise ValueError(f"tile {index}: the tile function must return [B,C,{th},{tw}], got {shape}")
