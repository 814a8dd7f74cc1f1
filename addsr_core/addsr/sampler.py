"""AddSR's few-step sampler with prediction-based self-refinement (PSR), as a plain function.

The networks come in as small callables, so ComfyUI adapters, the trainer and tests share this
one loop:

- ``denoise(z_t, t, control_image, tokens, prompt_embeds) -> eps`` (ControlNet + UNet);
- ``encode(image in [-1,1]) -> VAE moments`` and ``decode(unscaled latent) -> image in ~[-1,1]``;
- ``represent(image in [0,1]) -> RAM tokens`` for the PSR steps.

Defaults reproduce the official pipeline; every deviation is an option in :class:`AddSRSampling`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from ..errors import OptionsError
from ..imaging.prepare import row_strips
from ..models.vae import sample_posterior
from ..precision import unit_float
from ..sampling.denoisers import CFGDenoiser, match_batch
from ..sampling.noise import NoiseSource, SeededNoise
from ..sampling.schedule import add_noise, predict_z0, scaled_linear_alphas_cumprod

TRAINED_TIMESTEPS = (999, 749, 499, 249)
STEP_SUBSETS = {1: (999,), 2: (999, 499), 3: (999, 749, 499), 4: TRAINED_TIMESTEPS}

Denoise = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Trace = Callable[[str, torch.Tensor], None]


@dataclass
class AddSRSampling:
    """Sampler options. The defaults are the official release's behaviour.

    Deviations we offer (all off by default unless noted):
    - ``timesteps``: any non-empty, decreasing subset of the trained timesteps (official: always 4);
    - ``psr_weight``: honoured (the official CLI option never reaches the pipeline; 0.4 is used);
    - ``recompute_tokens=False`` keeps the LR's RAM tokens at every step (cheaper);
    - ``guidance_scale > 1`` with negative prompt embeddings: working CFG (broken officially);
    - ``per_item_lr_latent=True`` (on by default): each batch item starts from its own LR latent;
      the official code starts every item from item 0's, which only matters for batches.
    """

    timesteps: Sequence[int] = TRAINED_TIMESTEPS
    psr_weight: float = 0.4
    recompute_tokens: bool = True
    guidance_scale: float = 0.0
    conditioning_scale: float = 1.0
    per_item_lr_latent: bool = True
    scaling_factor: float = 0.18215
    alphas_cumprod: Optional[torch.Tensor] = None

    def validate(self) -> None:
        ts = list(self.timesteps)
        if not ts or len(ts) > 4:
            raise OptionsError(f"AddSR samples with 1 to 4 steps, got {len(ts)}")
        if any(t not in TRAINED_TIMESTEPS for t in ts):
            raise OptionsError(f"timesteps must come from the trained set {TRAINED_TIMESTEPS}, got {ts}")
        if ts != sorted(ts, reverse=True) or len(set(ts)) != len(ts):
            raise OptionsError(f"timesteps must be strictly decreasing, got {ts}")
        if not 0.0 <= self.psr_weight <= 1.0:
            raise OptionsError(f"psr_weight must be in [0, 1], got {self.psr_weight}")

    @classmethod
    def with_steps(cls, steps: int, **kwargs) -> "AddSRSampling":
        if steps not in STEP_SUBSETS:
            raise OptionsError(f"steps must be 1, 2, 3 or 4, got {steps}")
        return cls(timesteps=STEP_SUBSETS[steps], **kwargs)


@dataclass
class AddSRResult:
    z0: torch.Tensor  # scaled latent (the diffusion model's space)
    control_image: torch.Tensor  # the last condition image, as held (uint8 0-255 or float [0,1])
    steps: list = field(default_factory=list)  # per step: dict(t, pred_z0)


def encode_lr_latent(encode, control_image: torch.Tensor, noise: NoiseSource, scaling_factor: float) -> torch.Tensor:
    """The official LR latent: a posterior SAMPLE (not the mean) of the [0,1] image, scaled."""
    moments = encode(unit_float(control_image) * 2 - 1)
    eps = noise.draw("posterior_eps", moments[:, : moments.shape[1] // 2].shape, device=moments.device, dtype=moments.dtype)
    return sample_posterior(moments, eps) * scaling_factor


PSR_STRIP_PX = 1 << 20  # pixels per strip of the in-place blend: its temporaries stay ~12 MB


def psr_condition(decoded: torch.Tensor, lr_image: torch.Tensor, weight: float, *, in_place: bool = False) -> torch.Tensor:
    """Blend the decoded prediction with the LR (uint8 0-255 or float [0,1]): the next step's
    control image, in [0,1]. ``in_place``: written into ``decoded`` a strip of rows at a time (the
    same operations on each element, the same bits; no full-size temporary instead of five)."""
    if not in_place:
        return weight * (decoded.clamp(-1, 1) / 2 + 0.5) + (1 - weight) * unit_float(lr_image)
    for rows in row_strips(decoded.shape[-2:], PSR_STRIP_PX):
        lr = unit_float(lr_image[..., rows, :])
        decoded[..., rows, :].clamp_(-1, 1).div_(2).add_(0.5).mul_(weight).add_((1 - weight) * lr)
    return decoded


def sample_addsr(
    *,
    denoise: Denoise,
    encode: Callable[[torch.Tensor], torch.Tensor],
    decode: Callable[[torch.Tensor], torch.Tensor],
    represent: Callable[[torch.Tensor], torch.Tensor],
    control_image: torch.Tensor,
    lr_tokens: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor | None = None,
    options: AddSRSampling | None = None,
    noise: NoiseSource | None = None,
    lr_latent: torch.Tensor | None = None,
    trace: Trace | None = None,
    on_step: Callable[[int, int, torch.Tensor], None] | None = None,
    owns_decodes: bool = False,
) -> AddSRResult:
    """Run the AddSR loop on ``control_image`` (the upscaled LR, [B,3,H,W] in [0,1]).

    ``lr_tokens`` are the RAM tokens of the original LR (official step 1). ``lr_latent`` may be
    given (already scaled) to skip the VAE encode, e.g. when the caller tiled it. ``on_step`` is
    called after each step with (index, total, pred_z0) — for previews and cancellation.
    ``owns_decodes``: ``decode`` returns a fresh tensor nobody else holds (not even ``trace``), so
    the PSR condition is written into it (:func:`psr_condition` ``in_place``: the same bits).
    """
    options = options or AddSRSampling()
    options.validate()
    noise = noise or SeededNoise(0)
    tracing, trace = trace is not None, trace or (lambda name, value: None)
    device = control_image.device
    ac = (options.alphas_cumprod if options.alphas_cumprod is not None else scaled_linear_alphas_cumprod()).to(device)
    sf = options.scaling_factor
    cfg = options.guidance_scale > 1.0
    if cfg and negative_embeds is None:
        raise OptionsError("guidance_scale > 1 needs negative prompt embeddings; pass negative_embeds, or set guidance_scale to 1")

    batch = control_image.shape[0]
    prompt_embeds = match_batch(prompt_embeds, batch, "prompt_embeds")
    lr_tokens = match_batch(lr_tokens, batch, "lr_tokens")
    if negative_embeds is not None:
        negative_embeds = match_batch(negative_embeds, batch, "negative_embeds")
    if lr_latent is None:
        lr_latent = encode_lr_latent(encode, control_image, noise, sf)
    trace("lr_latent", lr_latent)
    if not options.per_item_lr_latent:
        lr_latent = lr_latent[0:1].expand(batch, -1, -1, -1)
    latent_shape = (batch, *lr_latent.shape[1:])

    timesteps = list(options.timesteps)
    initial = noise.draw("initial_latents", latent_shape, device=device, dtype=lr_latent.dtype)
    z = add_noise(lr_latent, initial, ac[timesteps[0]])
    trace("start_latent", z)

    image, tokens = control_image, lr_tokens
    guided = CFGDenoiser(denoise, options.guidance_scale, negative_embeds)
    pred_z0, steps = None, []
    for k, t in enumerate(timesteps):
        t_tensor = torch.full((batch,), t, device=device, dtype=torch.long)
        if k > 0:
            # Official PSR decodes with the reciprocal of the scaling factor (one ulp off a divide).
            image = None  # the last step's condition is done with: not held through the decode
            decoded = decode(pred_z0 * (1 / sf))
            trace(f"step{k}.psr_decode_raw", decoded)
            image = psr_condition(decoded, control_image, options.psr_weight, in_place=owns_decodes)
            del decoded
            if options.recompute_tokens:
                tokens = represent(image)
        trace(f"step{k}.timestep", t_tensor)
        trace(f"step{k}.latent_in", z)
        trace(f"step{k}.controlnet_cond", unit_float(image) if tracing else image)
        trace(f"step{k}.ram_embeds", tokens)
        eps = guided(z, t_tensor, image, tokens, prompt_embeds)
        trace(f"step{k}.noise_pred", eps)
        pred_z0 = predict_z0(z, eps, ac[t])
        trace(f"step{k}.pred_z0", pred_z0)
        steps.append({"t": t, "pred_z0": pred_z0})
        if k + 1 < len(timesteps):
            renoise = noise.draw(f"renoise_after_t{t}", pred_z0.shape, device=device, dtype=pred_z0.dtype)
            z = add_noise(pred_z0, renoise, ac[timesteps[k + 1]])
            trace(f"step{k}.renoised", z)
        if on_step is not None:
            on_step(k, len(timesteps), pred_z0)
    trace("z0", pred_z0)
    return AddSRResult(z0=pred_z0, control_image=image, steps=steps)
