"""The SD2 noise schedule and the closed-form moves between noise levels."""
from __future__ import annotations

import torch

SD2_BETA_START = 0.00085
SD2_BETA_END = 0.012
NUM_TRAIN_TIMESTEPS = 1000


def scaled_linear_alphas_cumprod(
    num_steps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = SD2_BETA_START, beta_end: float = SD2_BETA_END
) -> torch.Tensor:
    """float32 ``cumprod(1 - linspace(sqrt(b0), sqrt(b1), n)**2)``, as diffusers' DDPMScheduler builds it."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def add_noise(z0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    return alpha_bar.sqrt() * z0 + (1 - alpha_bar).sqrt() * noise


def predict_z0(z_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The official ``get_z0``: invert ``add_noise`` with the predicted epsilon."""
    return (z_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
