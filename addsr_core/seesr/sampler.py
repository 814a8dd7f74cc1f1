"""SeeSR's sampler (the 50-step teacher AddSR was distilled from), as a plain function.

What the official ``test_seesr.py`` + ``pipelines/pipeline_seesr.py`` do, and we do by default:

- DDPM from SD2's scheduler config, ``num_inference_steps`` 50: timesteps 981, 961, ..., 1
  (:mod:`.ddpm`); the start is the LR latent (a VAE posterior *sample*) noised to ``start_steps``
  999 with the initial noise (``start_point="lr"``; ``"noise"`` starts from the noise itself);
  timesteps above ``start_steps`` are skipped;
- CFG 5.5 in one batched call [negative; positive]; the RAM tokens and the control image (the
  upscaled LR in [0,1]) go to the ControlNet and the UNet for both halves; guidance is applied
  after tile stitching, before the scheduler step;
- random draws: the initial latents, then one DDPM noise per step (also at t=1, where it is
  scaled by 1e-10), all from the user's generator; the posterior sample from the global RNG, drawn
  for the CFG-doubled batch (the VAE encodes the doubled control image) of which item 0 is used.

``denoise(z_t, t, control_image, tokens, prompt_embeds) -> eps`` is the ControlNet + UNet
(:class:`~.denoisers.ControlNetDenoiser`, optionally tiled), shared with the AddSR sampler.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..errors import OptionsError
from ..models.vae import sample_posterior
from ..sampling.ddpm import SPACINGS, SD2_STEPS_OFFSET, ddpm_schedule, sample_ddpm
from ..sampling.denoisers import CFGDenoiser, match_batch
from ..sampling.noise import NoiseSource, SeededNoise
from ..sampling.schedule import add_noise

DEFAULT_STEPS = 50
TURBO_STEPS = 2
DEFAULT_GUIDANCE = 5.5
START_POINTS = ("lr", "noise")
POSTERIOR_DRAW = "posterior_eps"  # the official global-RNG draw; every other draw is the generator's

Trace = Callable[[str, torch.Tensor], None]


@dataclass
class SeeSRSampling:
    """Sampler options; the defaults are ``test_seesr.py``'s.

    Deviation (on by default, as in the AddSR sampler): ``per_item_lr_latent`` starts each batch
    item from its own LR latent; the official pipeline starts all from item 0's, which only matters
    for batches (the official script runs one image at a time).
    """

    steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE
    start_point: str = "lr"
    start_steps: int = 999
    timestep_spacing: str = "leading"  # SD2's config; "trailing" is SD-Turbo's (SeeSR-Turbo)
    steps_offset: int = SD2_STEPS_OFFSET
    conditioning_scale: float = 1.0  # ControlNet residual scale (test_seesr.py: 1.0)
    per_item_lr_latent: bool = True
    alphas_cumprod: Optional[torch.Tensor] = None

    def validate(self) -> None:
        if not 1 <= self.steps <= 1000:
            raise OptionsError(f"steps must be between 1 and 1000, got {self.steps}")
        if self.start_point not in START_POINTS:
            raise OptionsError(f"start_point must be one of {START_POINTS}, got {self.start_point!r}")
        if not 0 <= self.start_steps <= 999:
            raise OptionsError(f"start_steps must be between 0 and 999, got {self.start_steps}")
        if self.timestep_spacing not in SPACINGS:
            raise OptionsError(f"timestep_spacing must be one of {SPACINGS}, got {self.timestep_spacing!r}")

    @classmethod
    def turbo(cls, **kwargs) -> "SeeSRSampling":
        """``test_seesr_turbo.py``: SD-Turbo's scheduler config (trailing), 2 steps, no CFG."""
        return cls(**{"steps": TURBO_STEPS, "guidance_scale": 1.0, "timestep_spacing": "trailing", **kwargs})

    def schedule(self):
        return ddpm_schedule(self.steps, spacing=self.timestep_spacing, steps_offset=self.steps_offset,
                             alphas_cumprod=self.alphas_cumprod)

    def timesteps(self) -> list[int]:
        """The timesteps that actually run (those not above ``start_steps``)."""
        return [t for t in self.schedule().timesteps if t <= self.start_steps]


def seesr_noise(seed: int) -> SeededNoise:
    """The seeded draws in the official streams (posterior apart from the generator's draws)."""
    return SeededNoise(seed, separate=(POSTERIOR_DRAW,))


def start_latent(moments: torch.Tensor | None, initial: torch.Tensor, options: SeeSRSampling, noise: NoiseSource,
                 scaling_factor: float, cfg_copies: int, trace: Trace) -> torch.Tensor:
    """The official start: the initial noise, or (``lr``) the LR latent noised to ``start_steps``."""
    if options.start_point == "noise":
        return initial
    batch = initial.shape[0]
    half = moments.shape[1] // 2
    shape = (moments.shape[0] * cfg_copies, half, *moments.shape[2:])
    eps = noise.draw(POSTERIOR_DRAW, shape, device=moments.device, dtype=moments.dtype)[: moments.shape[0]]
    lr_latent = sample_posterior(moments, eps) * scaling_factor
    trace("lr_latent", lr_latent)
    if not options.per_item_lr_latent or lr_latent.shape[0] != batch:
        lr_latent = lr_latent[0:1]
    ac = (options.alphas_cumprod if options.alphas_cumprod is not None else options.schedule().alphas_cumprod)
    return add_noise(lr_latent, initial, ac[options.start_steps].to(initial.device))


def sample_seesr(
    *,
    denoise,
    control_image: torch.Tensor,
    lr_tokens: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor | None = None,
    moments: torch.Tensor | None = None,
    options: SeeSRSampling | None = None,
    noise: NoiseSource | None = None,
    scaling_factor: float = 0.18215,
    trace: Trace | None = None,
    on_step: Callable[[int, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run SeeSR on ``control_image`` (the upscaled LR, [B,3,H,W] in [0,1]); returns the scaled latent.

    ``moments`` is the VAE posterior of the control image ([B,8,H/8,W/8]; needed for
    ``start_point="lr"``). ``on_step(index, total, pred_x0)`` runs after each step.
    """
    options = options or SeeSRSampling()
    options.validate()
    noise = noise or seesr_noise(0)
    trace = trace or (lambda name, value: None)
    cfg = options.guidance_scale > 1.0
    if cfg and negative_embeds is None:
        raise OptionsError("guidance_scale > 1 needs negative prompt embeddings; pass negative_embeds, or set guidance_scale to 1")
    if options.start_point == "lr" and moments is None:
        raise OptionsError("start_point 'lr' needs the VAE moments of the control image; pass moments, or use start_point 'noise'")
    batch, device = control_image.shape[0], control_image.device
    prompt_embeds, lr_tokens = match_batch(prompt_embeds, batch, "prompt_embeds"), match_batch(lr_tokens, batch, "lr_tokens")
    negative_embeds = match_batch(negative_embeds, batch, "negative_embeds") if negative_embeds is not None else None

    latent_hw = (control_image.shape[-2] // 8, control_image.shape[-1] // 8)
    initial = noise.draw("initial_latents", (batch, 4, *latent_hw), device=device, dtype=torch.float32)
    z = start_latent(moments, initial, options, noise, scaling_factor, 2 if cfg else 1, trace)
    trace("start_latent", z)

    guided = CFGDenoiser(denoise, options.guidance_scale, negative_embeds)

    def model(x, t):
        t_batch = torch.full((batch,), t, device=device, dtype=torch.long)
        eps = guided(x, t_batch, control_image, lr_tokens, prompt_embeds).float()
        trace(f"t{t}.noise_pred", eps)
        return eps

    def after(i, total, t, x, x0):
        trace(f"t{t}.pred_z0", x0)
        trace(f"t{t}.latent", x)
        if on_step is not None:
            on_step(i, total, x0)

    z = sample_ddpm(model, z, options.schedule(), noise=noise, start_step=options.start_steps, callback=after)
    trace("z0", z)
    return z
