"""Adapters from networks to the samplers' ``denoise(z_t, t, spatial, *rest) -> model output``.

Every family's denoiser takes the latent, the timestep and one SPATIAL condition (AddSR and SeeSR:
the control image at 8x the latent; StableSR: the LR latent), then whatever stays global (RAM
tokens, text conditioning; the text conditioning LAST, where :class:`CFGDenoiser` looks for it).
"""
from __future__ import annotations

import torch

from ..errors import OptionsError
from ..models import ControlNetModel, UNet2DConditionModel
from ..precision import unit_float


class ControlNetDenoiser:
    """AddSR's ControlNet + UNet as one epsilon predictor."""

    def __init__(self, unet: UNet2DConditionModel, controlnet: ControlNetModel, conditioning_scale: float = 1.0):
        self.unet, self.controlnet, self.conditioning_scale = unet, controlnet, conditioning_scale

    def __call__(self, z, t, control_image, tokens, prompt_embeds):
        dtype = self.unet.dtype
        z, tokens, prompt_embeds = (x.to(dtype) for x in (z, tokens, prompt_embeds))
        control_image = unit_float(control_image, dtype)  # a uint8 condition becomes float per call (per tile)
        down, mid, _, _ = self.controlnet(
            z, t, prompt_embeds, control_image, self.conditioning_scale, image_encoder_hidden_states=tokens
        )
        return self.unet(z, t, prompt_embeds, tokens, down, mid).float()


class CFGDenoiser:
    """Classifier-free guidance as a denoiser wrapper (k-diffusion's ``CFGDenoiser``, ComfyUI's
    ``samplers.cfg_function``), for any denoiser whose LAST argument is the conditioning.

    ``guidance_scale <= 1``: one plain call. Above: one batched call on [negative; positive]
    with every other input (latent, timestep, control image / LR latent, RAM tokens) duplicated,
    then ``neg + s * (pos - neg)``, as the official AddSR and SeeSR pipelines do it. It wraps the
    tiled denoiser (``CFGDenoiser(TiledDenoiser(...))``): each tile sees both halves at once.
    """

    def __init__(self, denoise, guidance_scale: float, negative=None):
        if guidance_scale > 1.0 and negative is None:
            raise ValueError("guidance_scale > 1 needs the negative conditioning")
        self.denoise, self.guidance_scale, self.negative = denoise, guidance_scale, negative

    def __call__(self, *args):
        if self.guidance_scale <= 1.0:
            return self.denoise(*args)
        *inputs, cond = args
        out_neg, out_pos = self.denoise(*(torch.cat([x, x]) for x in inputs), torch.cat([self.negative, cond])).chunk(2)
        return out_neg + self.guidance_scale * (out_pos - out_neg)


def match_batch(tensor: torch.Tensor, batch: int, what: str = "conditioning") -> torch.Tensor:
    """``tensor`` [1 or batch, ...] for a batch of ``batch``: one shared row is expanded (a view),
    one row per item is kept; any other count is refused (the one batch rule of every sampler)."""
    rows = tensor.shape[0]
    if rows == batch:
        return tensor
    if rows == 1:
        return tensor.expand(batch, *tensor.shape[1:])
    raise OptionsError(f"{what} has {rows} rows; give 1 (shared) or one per image ({batch})")


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

    The spatial condition is cropped to the same region at ``scale`` x the latent (8: the control
    image; 1: StableSR's LR latent, so its time-aware encoder sees each tile's own crop, as the
    official canvas sampler does); the rest (RAM tokens, text) stays global, as in the official
    tiled paths. ``square=True`` keeps the official square tile ``min(tile, h, w)`` (SeeSR,
    StableSR); by default the tile is clamped per axis.
    """

    def __init__(self, denoise, tile: int, overlap: int, scale: int = 8, on_tile=None, square: bool = False):
        # A (h, w) pair may already be clamped to a thin side; tiling halves the overlap there.
        if max(tile if isinstance(tile, tuple) else (tile,)) <= overlap:
            raise OptionsError(f"latent tile ({tile}) must be larger than the overlap ({overlap}); lower the overlap or raise the tile")
        self.denoise, self.tile, self.overlap, self.scale, self.on_tile = denoise, tile, overlap, scale, on_tile
        self.square = square

    def __call__(self, z, t, spatial, *rest):
        from .tiling import aggregate_tiles

        s = self.scale

        def run(y0, x0, th, tw):
            return self.denoise(z[..., y0 : y0 + th, x0 : x0 + tw], t,
                                spatial[..., s * y0 : s * (y0 + th), s * x0 : s * (x0 + tw)], *rest)

        # A (tile, tile) pair is clamped per axis: a 64x300 latent with tile 128 takes 3 calls, not
        # the 9 square 64-tiles the official clamp would make.
        tile = self.tile if self.square or isinstance(self.tile, tuple) else (self.tile, self.tile)
        return aggregate_tiles(run, z.shape[-2:], tile, self.overlap, on_tile=self.on_tile)
