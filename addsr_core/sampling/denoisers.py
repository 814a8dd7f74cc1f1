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


def guided_eps(denoise, z, t, image, tokens, prompt_embeds, negative_embeds, guidance_scale: float):
    """Classifier-free guidance as both official pipelines do it: one batched call on [negative;
    positive] with the RAM tokens and control image shared, then ``neg + s * (pos - neg)``."""
    if guidance_scale <= 1.0:
        return denoise(z, t, image, tokens, prompt_embeds)
    eps_neg, eps_pos = denoise(
        torch.cat([z, z]), torch.cat([t, t]), torch.cat([image, image]), torch.cat([tokens, tokens]),
        torch.cat([negative_embeds, prompt_embeds]),
    ).chunk(2)
    return eps_neg + guidance_scale * (eps_pos - eps_neg)


def counting(denoise, on_tile=None):
    """``denoise`` calling ``on_tile()`` after each call (an untiled call is one "tile")."""
    if on_tile is None:
        return denoise

    def run(*args):
        out = denoise(*args)
        on_tile()
        return out

    return run


class TiledDenoiser:
    """Runs any denoiser on overlapping latent tiles and stitches with Gaussian weights.

    The control image is cropped to the same region at 8x; the RAM tokens stay global, as in the
    official tiled path (which crashes as shipped; see the reference README §9.6).
    ``square=True`` keeps the official square tile ``min(tile, h, w)`` (SeeSR); by default the
    tile is clamped per axis.
    """

    def __init__(self, denoise, tile: int, overlap: int, scale: int = 8, on_tile=None, square: bool = False):
        if tile <= overlap:
            raise ValueError(f"latent tile ({tile}) must be larger than the overlap ({overlap})")
        self.denoise, self.tile, self.overlap, self.scale, self.on_tile = denoise, tile, overlap, scale, on_tile
        self.square = square

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
        tile = self.tile if self.square else (self.tile, self.tile)
        return aggregate_tiles(run, z.shape[-2:], tile, self.overlap, on_tile=self.on_tile)
