"""GPU-aware tile defaults: the largest tiles whose activations fit the GPU's free memory.

On a CPU the defaults stay the measured ones (``stages.DEFAULT_*``). On a CUDA device a tile left to
the device (:data:`AUTO`) is chosen from what the device has free once the networks are loaded, and
what one tile costs, like ComfyUI's ``memory_used_encode/decode``. The costs are linear in a tile's
pixels (the attention runs fused: no [tokens x tokens] matrix), measured on the full-size networks on
fake CUDA (``tools/gpu_tile_costs.py``, see docs/gpu.md), per bytes of the compute dtype:

- one ControlNet + UNet call (AddSR's denoiser), batch 1 (CFG doubles it);
- one VAE decoder tile (its core at full resolution; the statistics pass is at most one tile);
- one VAE encoder tile, which runs its core plus the encoder's halo on every side.

The choice keeps :data:`FREE_FRACTION` of the free memory for the tile and subtracts the full-size
buffers of the image (condition, latents, the decode's float32 blend), so what the accounting cannot
see (cuDNN workspaces, allocator fragmentation, kernels' scratch) has room. Out-of-memory halving
(the nodes) stays the fallback. The diffusion tile is capped at the family's own default: past it the
attention's cost per pixel grows with the tile (a FLOP count, whatever the device).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

AUTO = 0  # a tile option left to the device

# Bytes a tile adds per output pixel of the tile, by bytes per element of the compute dtype
# (tools/gpu_tile_costs.py: the same figure at 512-2048 px tiles, within 0.5 %).
DENOISE_BYTES_PER_PX = {2: 370, 4: 740}
VAE_DECODE_BYTES_PER_PX = {2: 1537, 4: 3073}
VAE_ENCODE_BYTES_PER_PX = {2: 1287, 4: 2573}
ENCODER_HALO_PX = 120  # per side: the SD VAE encoder's receptive field (tiled_vae.encoder_receptive_px), rounded up
# Full-size buffers per output pixel that live beside a tile: the uint8 condition, the [-1,1] image for
# the encode and its float32 copy for the statistics pass, the decode's float32 blend (at most ~40 B/px
# in the 4096² dry runs; budgeted with room).
IMAGE_BYTES_PER_PX = 64
FREE_FRACTION = 0.8  # of the free memory, for the tile; the rest for what the accounting does not see
TILE_STEP = 64  # tiles are multiples of this (px)
MIN_TILE_PX = 256
MAX_VAE_TILE_PX = 4096  # a VAE tile as large as the image runs untiled: exact, no statistics pass


@dataclass(frozen=True)
class GPUTiles:
    latent_tile_px: int
    vae_encode_tile_px: int
    vae_decode_tile_px: int


def cuda_free_bytes(device: torch.device) -> int:
    """What the device can still give this process: free device memory plus what PyTorch's caching
    allocator holds unused (ComfyUI's ``get_free_memory``)."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free) + max(0, int(torch.cuda.memory_reserved(device)) - int(torch.cuda.memory_allocated(device)))


def largest_tile(budget: float, cost_of, lo: int = MIN_TILE_PX, hi: int = MAX_VAE_TILE_PX) -> int:
    """The largest multiple of :data:`TILE_STEP` in [lo, hi] with ``cost_of(tile) <= budget`` (``lo``
    when none fits: the out-of-memory fallback takes over from there)."""
    best = lo
    for tile in range(lo, hi + 1, TILE_STEP):
        if cost_of(tile) <= budget:
            best = tile
    return best


def gpu_tiles(free_bytes: int, dtype: torch.dtype, output_px: int, *, max_latent_tile_px: int,
              cfg_batch: int = 1) -> GPUTiles:
    """Tiles for an upscale to ``output_px`` output pixels computing in ``dtype`` with ``free_bytes``
    free on the GPU (networks loaded); the diffusion tile at most ``max_latent_tile_px``."""
    size = 2 if dtype in (torch.float16, torch.bfloat16) else 4
    budget = FREE_FRACTION * free_bytes - IMAGE_BYTES_PER_PX * output_px
    return GPUTiles(
        latent_tile_px=largest_tile(budget, lambda t: cfg_batch * DENOISE_BYTES_PER_PX[size] * t * t,
                                    hi=max_latent_tile_px),
        vae_encode_tile_px=largest_tile(budget, lambda t: VAE_ENCODE_BYTES_PER_PX[size] * (t + 2 * ENCODER_HALO_PX) ** 2),
        vae_decode_tile_px=largest_tile(budget, lambda t: VAE_DECODE_BYTES_PER_PX[size] * t * t),
    )


def device_free_bytes(device: torch.device) -> Optional[int]:
    """Free bytes on a CUDA device, None elsewhere (CPU and other devices keep the fixed defaults)."""
    return cuda_free_bytes(device) if torch.device(device).type == "cuda" else None
