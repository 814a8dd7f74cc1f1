"""AddSR's losses and the timestep draws they depend on, as small pure functions.

From the official ``train_addsr.py``:

- **Student plan.** With probability 1/2 a batch trains the *refining* path: each image draws a
  first timestep t1 from {999, 749, 499}; the student runs once at t1 without gradient (its output
  becomes the condition image of the next step) and is trained at the next timestep
  (749, 499, 249). Otherwise the student is trained at its single 999 step.
- **Timestep-adaptive (TA) weight** ``0.5 * 2.1**(s-1)``. The official ``TA_weight`` maps the first
  timestep t1 = 999/749/499 to s = 1/2/3 and the single-step batch (passed as t = 1000) to s = 4, so
  the trained steps 749/499/249 weigh 0.5/1.05/2.205 and the one-step 999 weighs 4.6305.
- **Distillation.** Each image's student x0 is re-noised at ``teacher_samples`` (4) teacher
  timesteps drawn uniformly in [0, 1000); the teacher's x0 predictions are decoded, and the loss is
  the squared error in pixel space on [0,1] images, weighted by sqrt(alpha_bar_t_teacher), averaged
  over teacher samples and pixels, times the image's TA weight, averaged over images.
- **Adversarial.** Hinge loss for the discriminator, ``-mean(D(fake))`` for the student, weight 0.02.
- **R1** (off by default): squared gradient norm of the real logits w.r.t. the DINO features, per
  head, averaged over heads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

OFFICIAL_STUDENT_TIMESTEPS = (999, 749, 499, 249)


def ta_weight(stage: int | torch.Tensor, base: float = 0.5, growth: float = 2.1):
    """``base * growth**(stage-1)``: 0.5, 1.05, 2.205, 4.6305 for stages 1..4."""
    if isinstance(stage, torch.Tensor):
        return base * torch.pow(torch.tensor(growth, dtype=torch.float64), stage.double() - 1)
    return base * growth ** (stage - 1)


def ta_stage(first_timestep: int, two_step: bool, student_timesteps: Sequence[int] = OFFICIAL_STUDENT_TIMESTEPS) -> int:
    """The official stage index s: position of t1 (1-based) for the refining path, else len(steps)."""
    if not two_step:
        return len(student_timesteps)
    steps = list(student_timesteps)
    if first_timestep not in steps[:-1]:
        raise ValueError(f"first timestep {first_timestep} must be one of {steps[:-1]} on the refining path.")
    return steps.index(first_timestep) + 1


@dataclass
class StudentPlan:
    two_step: bool
    first_timesteps: torch.Tensor  # [B] long: t1 (equals trained_timesteps on the one-step path)
    trained_timesteps: torch.Tensor  # [B] long: the step that receives gradients
    stages: torch.Tensor  # [B] long: TA stage s
    ta_weights: torch.Tensor  # [B] float64


def sample_student_plan(
    batch_size: int,
    generator: torch.Generator | None = None,
    two_step_prob: float = 0.5,
    student_timesteps: Sequence[int] = OFFICIAL_STUDENT_TIMESTEPS,
    ta_base: float = 0.5,
    ta_growth: float = 2.1,
) -> StudentPlan:
    """Draw which path this batch trains and each image's timesteps (official: ``p > 0.5`` -> refine)."""
    steps = torch.tensor(list(student_timesteps), dtype=torch.long)
    two_step = bool(torch.rand(1, generator=generator).item() < two_step_prob)
    if two_step:
        idx = torch.randint(0, len(steps) - 1, (batch_size,), generator=generator)
        first, trained, stages = steps[idx], steps[idx + 1], idx + 1
    else:
        first = trained = steps[:1].repeat(batch_size)
        stages = torch.full((batch_size,), len(steps), dtype=torch.long)
    return StudentPlan(two_step, first, trained, stages, ta_weight(stages, ta_base, ta_growth))


def sample_teacher_timesteps(
    batch_size: int, samples: int = 4, generator: torch.Generator | None = None, num_train_timesteps: int = 1000
) -> torch.Tensor:
    """[samples, B] long, uniform in [0, 1000). Official: one ``randint`` of B*4 split into 4 chunks."""
    return torch.randint(0, num_train_timesteps, (samples * batch_size,), generator=generator).view(samples, batch_size)


def sqrt_alpha_bar_weight(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The distillation weight sqrt(alpha_bar_t) (the official scheduler's ``get_weights``)."""
    return alphas_cumprod.to(timesteps.device)[timesteps].sqrt()


def distillation_loss(
    student_x0: torch.Tensor,
    teacher_x0: torch.Tensor,
    teacher_weights: torch.Tensor,
    ta_weights: torch.Tensor,
) -> torch.Tensor:
    """Weighted squared error in pixel space.

    student_x0: [B,C,H,W] decoded student image in [0,1] (carries the gradient).
    teacher_x0: [K,B,C,H,W] decoded teacher images in [0,1] (treated as constants).
    teacher_weights: [K,B] sqrt(alpha_bar) of each teacher timestep.
    ta_weights: [B] TA weight of each image.
    Returns ``mean_b( ta_b * mean_{k,c,h,w}( w_kb * (teacher - student)^2 ) )``.
    """
    if teacher_x0.dim() != student_x0.dim() + 1 or teacher_x0.shape[1:] != student_x0.shape:
        raise ValueError(
            f"teacher_x0 {tuple(teacher_x0.shape)} must be [K, *student_x0.shape] with student_x0 {tuple(student_x0.shape)}."
        )
    k, b = teacher_x0.shape[:2]
    if teacher_weights.shape != (k, b) or ta_weights.shape != (b,):
        raise ValueError(f"teacher_weights must be [{k},{b}] and ta_weights [{b}].")
    sq = (teacher_x0.detach() - student_x0.unsqueeze(0)) ** 2
    sq = sq * teacher_weights.to(sq.dtype).view(k, b, *([1] * (sq.dim() - 2)))
    per_image = sq.transpose(0, 1).reshape(b, -1).mean(dim=1)
    return (per_image * ta_weights.to(per_image.dtype)).mean()


def _cat(logits) -> torch.Tensor:
    return torch.cat(list(logits), dim=1) if isinstance(logits, (list, tuple)) else logits


def hinge_d_loss(real_logits, fake_logits) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, real part, fake part): ``mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))``.

    Per-head logit lists are concatenated first, so every token of every head counts equally.
    """
    real = torch.relu(1.0 - _cat(real_logits)).mean()
    fake = torch.relu(1.0 + _cat(fake_logits)).mean()
    return real + fake, real, fake


def generator_adv_loss(fake_logits) -> torch.Tensor:
    return -_cat(fake_logits).mean()


def r1_penalty(real_logits: Sequence[torch.Tensor], features: dict[str, torch.Tensor] | Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over heads of ``mean_b ||d sum(logits_i) / d features_i||^2`` (create_graph, so trainable)."""
    feats = [features[str(i)] for i in range(len(real_logits))] if isinstance(features, dict) else list(features)
    penalties = []
    for logit, feat in zip(real_logits, feats):
        (grad,) = torch.autograd.grad(logit.sum(), feat, create_graph=True)
        penalties.append(grad.reshape(grad.shape[0], -1).norm(2, dim=1).pow(2).mean())
    return torch.stack(penalties).mean()


def student_loss(distill: torch.Tensor, fake_logits, adv_weight: float = 0.02) -> torch.Tensor:
    """The student objective: distillation + ``adv_weight`` * adversarial."""
    return distill + adv_weight * generator_adv_loss(fake_logits)
