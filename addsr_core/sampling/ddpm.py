"""diffusers' ``DDPMScheduler`` (0.21, the version SeeSR pins) as plain functions, and a small
k-diffusion-style loop over an epsilon model.

SeeSR builds the scheduler with ``DDPMScheduler.from_pretrained(<SD2 base>, subfolder="scheduler")``.
That file is SD2's PNDM config; the fields DDPM reads from it are the scaled-linear betas
(0.00085..0.012), ``steps_offset`` 1, ``clip_sample`` false, epsilon prediction; the rest are DDPM's
defaults: ``timestep_spacing`` "leading" and ``variance_type`` "fixed_small". SD-Turbo's config
(SeeSR-Turbo) differs only in ``timestep_spacing`` "trailing".

All schedule arithmetic is float32 on 0-d tensors, in diffusers' order, so the loop matches the
official one to float rounding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from ..errors import OptionsError
from .noise import NoiseSource
from .schedule import NUM_TRAIN_TIMESTEPS, scaled_linear_alphas_cumprod

SPACINGS = ("leading", "trailing", "linspace")
SD2_STEPS_OFFSET = 1  # stable-diffusion-2-base/scheduler/scheduler_config.json

EpsModel = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class DDPMSchedule:
    timesteps: tuple  # descending, as ``scheduler.timesteps``
    alphas_cumprod: torch.Tensor  # float32 [num_train_timesteps]
    step_ratio: int  # ``prev_t = t - step_ratio`` (diffusers' ``previous_timestep``)

    def alpha_bar(self, t: int) -> torch.Tensor:
        """``alphas_cumprod[t]``, or diffusers' ``one`` (1.0) for t < 0."""
        return self.alphas_cumprod[t] if t >= 0 else torch.tensor(1.0)


def ddpm_timesteps(steps: int, *, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, spacing: str = "leading",
                   steps_offset: int = SD2_STEPS_OFFSET) -> list[int]:
    """``DDPMScheduler.set_timesteps(steps)``: 50 leading steps with offset 1 are 981, 961, ..., 1."""
    if not 1 <= steps <= num_train_timesteps:
        raise OptionsError(f"steps must be between 1 and {num_train_timesteps}, got {steps}")
    if spacing == "leading":
        ratio = num_train_timesteps // steps
        ts = (np.arange(0, steps) * ratio).round()[::-1].astype(np.int64) + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / steps)).astype(np.int64) - 1
    elif spacing == "linspace":
        ts = np.linspace(0, num_train_timesteps - 1, steps).round()[::-1].astype(np.int64)
    else:
        raise OptionsError(f"timestep spacing must be one of {SPACINGS}, got {spacing!r}")
    return [int(t) for t in ts]


def ddpm_schedule(steps: int, *, spacing: str = "leading", steps_offset: int = SD2_STEPS_OFFSET,
                  alphas_cumprod: Optional[torch.Tensor] = None) -> DDPMSchedule:
    ac = (alphas_cumprod if alphas_cumprod is not None else scaled_linear_alphas_cumprod()).float().cpu()
    n = ac.shape[0]
    timesteps = ddpm_timesteps(steps, num_train_timesteps=n, spacing=spacing, steps_offset=steps_offset)
    return DDPMSchedule(tuple(timesteps), ac, n // steps)


def ddpm_step(schedule: DDPMSchedule, eps: torch.Tensor, t: int, sample: torch.Tensor,
              noise: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``DDPMScheduler.step`` (epsilon, fixed_small, no clipping): (x_{t-1}, predicted x0).

    ``noise`` is the step's standard-normal draw, needed when t > 0 (diffusers draws it even at the
    last step t=1, where its standard deviation is 1e-10).
    """
    a_t, a_prev = schedule.alpha_bar(t), schedule.alpha_bar(t - schedule.step_ratio)
    a_t, a_prev = a_t.to(sample.device), a_prev.to(sample.device)
    beta_t, beta_prev = 1 - a_t, 1 - a_prev
    current_alpha = a_t / a_prev
    current_beta = 1 - current_alpha
    x0 = (sample - beta_t ** 0.5 * eps) / a_t ** 0.5
    prev = (a_prev ** 0.5 * current_beta) / beta_t * x0 + current_alpha ** 0.5 * beta_prev / beta_t * sample
    if t > 0:
        if noise is None:
            raise ValueError(f"the DDPM step at t={t} needs a noise draw")
        variance = torch.clamp((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev), min=1e-20)
        prev = prev + variance ** 0.5 * noise
    return prev, x0


def sample_ddpm(model: EpsModel, x: torch.Tensor, schedule: DDPMSchedule, *, noise: NoiseSource,
                start_step: Optional[int] = None, callback=None) -> torch.Tensor:
    """Ancestral DDPM from ``x`` over ``schedule.timesteps``; ``model(x, t) -> eps`` (guidance inside).

    Timesteps above ``start_step`` are skipped, as the official loop skips ``t > start_steps``.
    ``callback(i, total, t, x, x0)`` runs after every step (traces, previews, cancellation).
    """
    timesteps = [t for t in schedule.timesteps if start_step is None or t <= start_step]
    for i, t in enumerate(timesteps):
        eps = model(x, t)
        draw = noise.draw(f"step_noise_t{t}", eps.shape, device=eps.device, dtype=eps.dtype) if t > 0 else None
        x, x0 = ddpm_step(schedule, eps, t, x, draw)
        if callback is not None:
            callback(i, len(timesteps), t, x, x0)
    return x
