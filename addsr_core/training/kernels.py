"""Random blur kernels of the Real-ESRGAN degradation (BasicSR ``degradations.py`` formulas).

Every draw comes from an explicit ``numpy.random.Generator`` so a sample is reproducible from its
seed alone, whatever process or DataLoader worker makes it.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

PADDED_KERNEL_SIZE = 21  # every kernel is zero-padded to 21x21, as the official code does


def mesh_grid(kernel_size: int) -> np.ndarray:
    """(K, K, 2) grid of (x, y) offsets centred on the middle tap."""
    ax = np.arange(-kernel_size // 2 + 1.0, kernel_size // 2 + 1.0)
    xx, yy = np.meshgrid(ax, ax)
    return np.stack([xx, yy], axis=-1)


def sigma_matrix(sig_x: float, sig_y: float, theta: float) -> np.ndarray:
    d = np.array([[sig_x**2, 0.0], [0.0, sig_y**2]])
    u = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return u @ d @ u.T


def _quadratic_form(kernel_size: int, sig_x: float, sig_y: float, theta: float, isotropic: bool) -> np.ndarray:
    cov = np.diag([sig_x**2, sig_x**2]) if isotropic else sigma_matrix(sig_x, sig_y, theta)
    grid = mesh_grid(kernel_size)
    return np.sum((grid @ np.linalg.inv(cov)) * grid, axis=2)


def gaussian_kernel(kernel_size, sig_x, sig_y=None, theta=0.0, isotropic=True) -> np.ndarray:
    q = _quadratic_form(kernel_size, sig_x, sig_y if sig_y is not None else sig_x, theta, isotropic)
    k = np.exp(-0.5 * q)
    return k / k.sum()


def generalized_gaussian_kernel(kernel_size, sig_x, sig_y, theta, beta, isotropic=True) -> np.ndarray:
    q = _quadratic_form(kernel_size, sig_x, sig_y, theta, isotropic)
    k = np.exp(-0.5 * np.power(q, beta))
    return k / k.sum()


def plateau_kernel(kernel_size, sig_x, sig_y, theta, beta, isotropic=True) -> np.ndarray:
    q = _quadratic_form(kernel_size, sig_x, sig_y, theta, isotropic)
    k = np.reciprocal(np.power(q, beta) + 1)
    return k / k.sum()


def bessel_j1(x: np.ndarray) -> np.ndarray:
    """J1 in float64 to ~1e-12 for x >= 0 (power series below 12, Hankel expansion above).

    Native so the kernels do not depend on SciPy (which the official uses); torch's bessel_j1 is
    only good to ~5e-7.
    """
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    small = x < 12
    xs = x[small]
    term = xs / 2
    acc = term.copy()
    quarter_sq = (xs / 2) ** 2
    for k in range(1, 60):
        term = -term * quarter_sq / (k * (k + 1))
        acc += term
    out[small] = acc
    xl = x[~small]
    coeff = [1.0]  # a_k(nu=1) = prod_{j<=k} (4 - (2j-1)^2) / (k! 8^k)
    for k in range(1, 28):
        coeff.append(coeff[-1] * (4.0 - (2 * k - 1) ** 2) / (k * 8))
    p = sum((-1) ** k * coeff[2 * k] / xl ** (2 * k) for k in range(14))
    q = sum((-1) ** k * coeff[2 * k + 1] / xl ** (2 * k + 1) for k in range(14))
    chi = xl - 0.75 * np.pi
    out[~small] = np.sqrt(2 / (np.pi * xl)) * (p * np.cos(chi) - q * np.sin(chi))
    return out


def circular_lowpass_kernel(cutoff: float, kernel_size: int, pad_to: int = 0) -> np.ndarray:
    """2-D sinc (circularly symmetric ideal low-pass): ``cutoff * J1(cutoff r) / (2 pi r)``."""
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}.")
    c = (kernel_size - 1) / 2
    y, x = np.meshgrid(np.arange(kernel_size) - c, np.arange(kernel_size) - c, indexing="ij")
    r = np.sqrt(x**2 + y**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = cutoff * bessel_j1(cutoff * r) / (2 * np.pi * r)
    kernel[int(c), int(c)] = cutoff**2 / (4 * np.pi)  # the limit at r = 0
    kernel = kernel / kernel.sum()
    if pad_to > kernel_size:
        p = (pad_to - kernel_size) // 2
        kernel = np.pad(kernel, ((p, p), (p, p)))
    return kernel


def _uniform(rng: np.random.Generator, lo_hi: Sequence[float]) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


def _beta(rng: np.random.Generator, beta_range: Sequence[float]) -> float:
    # The official draw: below or above 1 with equal probability (assumes low < 1 < high).
    if rng.uniform() < 0.5:
        return float(rng.uniform(beta_range[0], 1))
    return float(rng.uniform(1, beta_range[1]))


def random_mixed_kernel(
    rng: np.random.Generator,
    kernel_list: Sequence[str],
    kernel_prob: Sequence[float],
    kernel_size: int,
    sigma_range: Sequence[float],
    betag_range: Sequence[float],
    betap_range: Sequence[float],
) -> np.ndarray:
    """One of iso/aniso Gaussian, generalized Gaussian or plateau, picked with ``kernel_prob``."""
    p = np.asarray(kernel_prob, dtype=np.float64)
    kind = kernel_list[int(rng.choice(len(kernel_list), p=p / p.sum()))]
    isotropic = kind.endswith("iso") and not kind.endswith("aniso")
    sig_x = _uniform(rng, sigma_range)
    if isotropic:
        sig_y, theta = sig_x, 0.0
    else:
        sig_y = _uniform(rng, sigma_range)
        theta = _uniform(rng, (-math.pi, math.pi))
    if kind in ("iso", "aniso"):
        return gaussian_kernel(kernel_size, sig_x, sig_y, theta, isotropic)
    if kind.startswith("generalized"):
        return generalized_gaussian_kernel(kernel_size, sig_x, sig_y, theta, _beta(rng, betag_range), isotropic)
    return plateau_kernel(kernel_size, sig_x, sig_y, theta, _beta(rng, betap_range), isotropic)


def _pad_to_21(kernel: np.ndarray) -> np.ndarray:
    p = (PADDED_KERNEL_SIZE - kernel.shape[0]) // 2
    return np.pad(kernel, ((p, p), (p, p)))


def random_blur_kernel(rng, cfg, stage: int) -> torch.Tensor:
    """The first- (stage 1) or second-stage (stage 2) blur kernel, [21, 21] float32."""
    sfx = "" if stage == 1 else "2"
    size = int(rng.choice(cfg.kernel_sizes))
    if rng.uniform() < getattr(cfg, "sinc_prob" + sfx):
        # Small kernels get a higher minimum cutoff, as in the official code.
        omega = float(rng.uniform(np.pi / 3, np.pi)) if size < 13 else float(rng.uniform(np.pi / 5, np.pi))
        kernel = circular_lowpass_kernel(omega, size)
    else:
        kernel = random_mixed_kernel(
            rng,
            getattr(cfg, "kernel_list" + sfx),
            getattr(cfg, "kernel_prob" + sfx),
            size,
            getattr(cfg, "blur_sigma" + sfx),
            getattr(cfg, "betag_range" + sfx),
            getattr(cfg, "betap_range" + sfx),
        )
    return torch.from_numpy(_pad_to_21(kernel)).float()


def random_final_sinc_kernel(rng, cfg) -> torch.Tensor:
    """The final sinc filter with ``final_sinc_prob``, else a unit pulse (no blur)."""
    if rng.uniform() < cfg.final_sinc_prob:
        size = int(rng.choice(cfg.kernel_sizes))
        omega = float(rng.uniform(np.pi / 3, np.pi))
        return torch.from_numpy(circular_lowpass_kernel(omega, size, pad_to=PADDED_KERNEL_SIZE)).float()
    pulse = torch.zeros(PADDED_KERNEL_SIZE, PADDED_KERNEL_SIZE)
    pulse[PADDED_KERNEL_SIZE // 2, PADDED_KERNEL_SIZE // 2] = 1
    return pulse
