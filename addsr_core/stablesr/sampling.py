"""StableSR's sampler: DDPM respaced to N steps, as a plain function over a denoise callable.

Official recipe (``sr_val_ddpm_text_T_vqganfin_oldcanvas*.py`` + ``LatentDiffusionSRTextWT``):

- the 1000-step SD2 schedule (betas linear in sqrt, float64, kept as float32 buffers) is
  respaced to ``steps`` timesteps with guided-diffusion's ``space_timesteps`` (200 by default;
  4 for StableSR-Turbo, giving 999, 666, 333, 0);
- the start is the LR latent noised to t=999 with the ORIGINAL schedule, ``x_T =
  sqrt(a_999)·z_lr + sqrt(1-a_999)·eps`` (the plain ``_old`` script starts from pure noise
  instead: ``start="noise"``);
- at respaced step k the UNet and the time-aware encoder see the original timestep t_k, and the
  posterior ``q(x_{k-1} | x_k, x0)`` uses the respaced schedule at index k; no noise at k = 0;
- x0 from epsilon (512 and Turbo models) or from v (768-v model);
- the prompt is empty; the official DDPM scripts do no classifier-free guidance (offered here as
  an option, off by default).

``denoise(z_t, t, lr_latent, context) -> model output`` is the UNet + encoder (optionally tiled
with :class:`~addsr_core.sampling.denoisers.TiledDenoiser` at scale 1, which re-runs the encoder on
each tile's LR crop, as the official canvas sampler does; ``LatentTiling(rule="square")``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..errors import OptionsError
from ..sampling.denoisers import CFGDenoiser, match_batch
from ..sampling.noise import NoiseSource, SeededNoise
from ..sampling.schedule import NUM_TRAIN_TIMESTEPS, SD2_BETA_END, SD2_BETA_START
from .model import PREDICTION_TYPES

DEFAULT_STEPS = 200
TURBO_STEPS = 4
START_MODES = ("lr_noised", "noise")
# The image size each release was trained at (official --input_size); the latent tile is 1/8 of it.
NATIVE_SIZE = {"epsilon": 512, "v_prediction": 768}  # 512 + Turbo: eps; 768-v: v


def native_size(prediction_type: str) -> int:
    """512 for the 512 and Turbo models (epsilon), 768 for the 768-v model (v-prediction)."""
    if prediction_type not in NATIVE_SIZE:
        raise OptionsError(f"prediction_type must be one of {tuple(NATIVE_SIZE)}, got {prediction_type!r}")
    return NATIVE_SIZE[prediction_type]


def native_latent_tile(prediction_type: str) -> int:
    """The official latent tile: 64 (512 and Turbo models) or 96 (768-v model)."""
    return native_size(prediction_type) // 8

Denoise = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Trace = Callable[[str, torch.Tensor], None]


def ldm_alphas_cumprod(num_steps: int = NUM_TRAIN_TIMESTEPS, start: float = SD2_BETA_START, end: float = SD2_BETA_END) -> np.ndarray:
    """float64 cumprod of the LDM "linear" schedule (linear in sqrt(beta)): SD 2's schedule, kept in
    float64 as the official ``register_schedule`` builds it."""
    betas = torch.linspace(start**0.5, end**0.5, num_steps, dtype=torch.float64).numpy() ** 2
    return np.cumprod(1.0 - betas)


def space_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """guided-diffusion's ``space_timesteps(n, [steps])``, sorted: evenly strided, both ends kept."""
    if not 1 <= steps <= num_timesteps:
        raise OptionsError(f"steps must be between 1 and {num_timesteps}, got {steps}")
    stride = 1 if steps <= 1 else (num_timesteps - 1) / (steps - 1)
    taken, position = set(), 0.0
    for _ in range(steps):  # accumulated, and Python's (banker's) round, exactly as official
        taken.add(round(position))
        position += stride
    return sorted(taken)


@dataclass(frozen=True)
class RespacedSchedule:
    """The respaced buffers the official ``register_schedule(given_betas=...)`` builds (float32)."""

    timesteps: tuple  # original timesteps, ascending
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    start_signal: float  # sqrt(a_999) of the ORIGINAL schedule (float32), for the LR start
    start_noise: float  # sqrt(1 - a_999)


def respaced_schedule(steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> RespacedSchedule:
    base = ldm_alphas_cumprod(num_train_timesteps)
    ac32 = base.astype(np.float32)  # the model's float32 ``alphas_cumprod`` buffer
    timesteps = space_timesteps(num_train_timesteps, steps)
    betas, last = [], np.float32(1.0)
    for t in timesteps:  # float32 arithmetic on float32 buffers, as the official loop over the tensor
        betas.append(np.float32(1.0) - ac32[t] / last)
        last = ac32[t]
    betas = np.array(betas, dtype=np.float32)
    # From here the official numpy code: float32 where it stays float32, float64 once mixed with 1.0.
    alphas = 1.0 - betas
    ac = np.cumprod(alphas, axis=0)
    ac_prev = np.append(1.0, ac[:-1])
    posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
    f32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    t_start = timesteps[-1]
    return RespacedSchedule(
        timesteps=tuple(timesteps),
        sqrt_alphas_cumprod=f32(np.sqrt(ac)),
        sqrt_one_minus_alphas_cumprod=f32(np.sqrt(1.0 - ac)),
        sqrt_recip_alphas_cumprod=f32(np.sqrt(1.0 / ac)),
        sqrt_recipm1_alphas_cumprod=f32(np.sqrt(1.0 / ac - 1)),
        posterior_mean_coef1=f32(betas * np.sqrt(ac_prev) / (1.0 - ac)),
        posterior_mean_coef2=f32((1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac)),
        posterior_log_variance_clipped=f32(np.log(np.maximum(posterior_variance, 1e-20))),
        start_signal=float(np.float32(np.sqrt(base[t_start]))),
        start_noise=float(np.float32(np.sqrt(1.0 - base[t_start]))),
    )


@dataclass
class StableSRSampling:
    """Sampler options; the defaults are the official StableSR (512, eps) canvas scripts."""

    steps: int = DEFAULT_STEPS
    prediction_type: str = "epsilon"
    start: str = "lr_noised"
    guidance_scale: float = 1.0  # > 1: classifier-free guidance with negative_context (not official for DDPM)

    def validate(self) -> None:
        if not 1 <= self.steps <= NUM_TRAIN_TIMESTEPS:
            raise OptionsError(f"steps must be between 1 and {NUM_TRAIN_TIMESTEPS}, got {self.steps}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise OptionsError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.start not in START_MODES:
            raise OptionsError(f"start must be one of {START_MODES}, got {self.start!r}")

    @classmethod
    def turbo(cls, **kwargs) -> "StableSRSampling":
        """StableSR-Turbo: the same sampler with 4 respaced steps (official README)."""
        return cls(steps=TURBO_STEPS, **kwargs)


def predict_x0(schedule: RespacedSchedule, k: int, z: torch.Tensor, out: torch.Tensor, prediction_type: str) -> torch.Tensor:
    if prediction_type == "epsilon":
        return schedule.sqrt_recip_alphas_cumprod[k] * z - schedule.sqrt_recipm1_alphas_cumprod[k] * out
    return schedule.sqrt_alphas_cumprod[k] * z - schedule.sqrt_one_minus_alphas_cumprod[k] * out


def sample_stablesr(
    *,
    denoise: Denoise,
    lr_latent: torch.Tensor,
    context: torch.Tensor,
    negative_context: torch.Tensor | None = None,
    options: StableSRSampling | None = None,
    noise: NoiseSource | None = None,
    trace: Trace | None = None,
    on_step: Callable[[int, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run StableSR from the scaled LR latent [B,4,h,w]; returns the scaled x0 latent (float32).

    ``context`` is the text embedding (the official prompt is empty), batch 1 or B. ``on_step``
    gets (index, total, predicted x0) after every step, for previews and cancellation.
    """
    options = options or StableSRSampling()
    options.validate()
    noise = noise or SeededNoise(0)
    trace = trace or (lambda name, value: None)
    schedule = respaced_schedule(options.steps)
    cfg = options.guidance_scale > 1.0
    if cfg and negative_context is None:
        raise OptionsError("guidance_scale > 1 needs negative_context (the negative prompt's embedding); pass it, or set guidance_scale to 1")
    lr_latent = lr_latent.float()
    batch, device = lr_latent.shape[0], lr_latent.device
    context = match_batch(context, batch, "context")
    negative_context = match_batch(negative_context, batch, "negative_context") if negative_context is not None else None

    eps = noise.draw("initial_noise", lr_latent.shape, device=device, dtype=torch.float32)
    z = eps if options.start == "noise" else schedule.start_signal * lr_latent + schedule.start_noise * eps
    trace("x_T", z)

    # CFG (off by default) around the (tiled) denoiser, combining the float32 outputs.
    guided = CFGDenoiser(lambda *args: denoise(*args).float(), options.guidance_scale, negative_context)
    total = len(schedule.timesteps)
    x0 = z
    for i, k in enumerate(reversed(range(total))):
        t = schedule.timesteps[k]
        t_batch = torch.full((batch,), t, device=device, dtype=torch.long)
        out = guided(z, t_batch, lr_latent, context)
        x0 = predict_x0(schedule, k, z, out, options.prediction_type)
        mean = schedule.posterior_mean_coef1[k] * x0 + schedule.posterior_mean_coef2[k] * z
        if k > 0:
            step_noise = noise.draw(f"step_noise_t{t}", z.shape, device=device, dtype=torch.float32)
            z = mean + (0.5 * schedule.posterior_log_variance_clipped[k]).exp() * step_noise
        else:
            z = mean
        trace(f"t{t}.model_out", out)
        trace(f"t{t}.x0", x0)
        trace(f"t{t}.z", z)
        if on_step is not None:
            on_step(i, total, x0)
    return z




class StableSRDenoiser:
    """:class:`~addsr_core.stablesr.model.StableSRModel` as the sampler's ``denoise`` callable."""

    def __init__(self, model):
        self.model = model

    def __call__(self, z, t, lr_latent, context):
        dtype = self.model.dtype
        return self.model(z.to(dtype), t, lr_latent.to(dtype), context.to(dtype))
