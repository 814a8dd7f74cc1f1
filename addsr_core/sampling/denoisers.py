"""Adapters from networks to the sampler's ``denoise(z_t, t, control_image, tokens, embeds) -> eps``."""
from __future__ import annotations

import torch

from ..models import ControlNetModel, UNet2DConditionModel


class ControlNetDenoiser:
    """AddSR's ControlNet + UNet as one epsilon predictor."""

    def __init__(self, unet: UNet2DConditionModel, controlnet: ControlNetModel, conditioning_scale: float = 1.0):
        self.unet, self.controlnet, self.conditioning_scale = unet, controlnet, conditioning_scale

    def __call__(self, z, t, control_image, tokens, prompt_embeds):
        dtype = self.unet.dtype
        z, control_image, tokens, prompt_embeds = (x.to(dtype) for x in (z, control_image, tokens, prompt_embeds))
        down, mid, _, _ = self.controlnet(
            z, t, prompt_embeds, control_image, self.conditioning_scale, image_encoder_hidden_states=tokens
        )
        return self.unet(z, t, prompt_embeds, tokens, down, mid).float()


class TiledDenoiser:
    """Runs any denoiser on overlapping latent tiles and stitches with Gaussian weights.

    The control image is cropped to the same region at 8x; the RAM tokens stay global, as in the
    official tiled path (which crashes as shipped; see the reference README §9.6).
    """

    def __init__(self, denoise, tile: int, overlap: int, scale: int = 8, on_tile=None):
        if tile <= overlap:
            raise ValueError(f"latent tile ({tile}) must be larger than the overlap ({overlap})")
        self.denoise, self.tile, self.overlap, self.scale, self.on_tile = denoise, tile, overlap, scale, on_tile

    def __call__(self, z, t, control_image, tokens, prompt_embeds):
        from .tiling import aggregate_tiles

        s = self.scale

        def run(y0, x0, th, tw):
            return self.denoise(
                z[..., y0 : y0 + th, x0 : x0 + tw], t,
                control_image[..., s * y0 : s * (y0 + th), s * x0 : s * (x0 + tw)], tokens, prompt_embeds,
            )

        # A (tile, tile) pair is clamped per axis: a 64x300 latent with tile 128 takes 3 calls, not
        # the 9 square 64-tiles the official clamp would make.
        return aggregate_tiles(run, z.shape[-2:], (self.tile, self.tile), self.overlap, on_tile=self.on_tile)
