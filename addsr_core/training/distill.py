"""One adversarial-diffusion-distillation micro-batch, split into the pieces the loop orders.

Official ``train_addsr.py`` semantics (see ``losses.py`` for the weights):

1. HR latent ``z = sample(VAE posterior of gt*2-1) * 0.18215``; one epsilon per batch.
2. Student plan: one step at t=999 on the LR, or (p=0.5) a no-grad first step at t1 in {999,749,499}
   on the LR, then a trained step at t1-250 conditioned on the decoded first prediction with RAM
   tokens recomputed from it (PSR). The student's input is always ``add_noise(z, eps, t)``.
3. Teacher: the student's z0 re-noised at ``teacher_samples`` uniform timesteps with the same
   epsilon; ControlNet condition = the HR image in [0,1], tokens = RAM of the HR image.
4. Losses: pixel-space squared error on [0,1] decodes weighted by sqrt(alpha_bar) and TA; hinge
   for the discriminator (real = HR, fake = student decode, condition = DINOv2 CLS of the LR);
   ``-mean D(fake)`` * 0.02 for the student.

Every random draw comes from the ``torch.Generator`` passed in (CPU), so a step can be replayed
exactly and a resumed run continues bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
from torch import nn

from ..models.vae import sample_posterior
from ..addsr.sampler import psr_condition
from ..sampling.schedule import add_noise, predict_z0, scaled_linear_alphas_cumprod
from .components import Components
from .config import AddSRTrainConfig
from .losses import (
    StudentPlan,
    distillation_loss,
    generator_adv_loss,
    hinge_d_loss,
    r1_penalty,
    sample_student_plan,
    sample_teacher_timesteps,
    sqrt_alpha_bar_weight,
)


def _randn(shape, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(device=like.device)


@dataclass
class StudentPass:
    plan: StudentPlan
    latents: torch.Tensor  # HR latent (scaled)
    noise: torch.Tensor  # epsilon shared by the student and teacher noising
    embeds: torch.Tensor  # prompt embeddings
    control: torch.Tensor  # the trained step's ControlNet condition, [0,1]
    z0: torch.Tensor  # the trained step's predicted clean latent (carries the gradient)


class DistillationObjective:
    def __init__(self, comps: Components, cfg: AddSRTrainConfig, autocast: Callable[[], ContextManager] | None = None):
        self.c = comps
        self.cfg = cfg
        self.ac = scaled_linear_alphas_cumprod()
        self.autocast = autocast or (lambda: torch.autocast("cpu", enabled=False))
        self.sf = comps.vae.scaling_factor

    # ---------------------------------------------------------------------------------------- #
    def _decode(self, z0: torch.Tensor) -> torch.Tensor:
        """Scaled latent -> image clamped to [-1,1] (official ``vae.decode(z/sf).clamp(-1,1)``)."""
        vae = self.c.vae
        return vae.decode((z0 / self.sf).to(vae.dtype)).float().clamp(-1, 1)

    def _z0(self, net, latents, noise, t, control, tokens, embeds) -> torch.Tensor:
        """Noise the clean latents to ``t`` with ``noise`` and return ``net``'s predicted z0."""
        a_t = self.ac.to(latents.device)[t].view(-1, 1, 1, 1)
        z_t = add_noise(latents, noise, a_t)
        with self.autocast():
            eps = net(z_t, t, control, tokens, embeds).float()
        return predict_z0(z_t, eps, a_t)

    @torch.no_grad()
    def _tokens(self, images01: torch.Tensor, resize: str) -> torch.Tensor:
        return self.c.ram.represent(images01, resize=resize).float()

    def student(self, batch: dict, gen: torch.Generator, net: nn.Module, prompts_embeds: torch.Tensor | None = None) -> StudentPass:
        """Steps 1-2. ``net`` is the (possibly DDP-wrapped) student used for the trained step."""
        cfg = self.cfg.loss
        gt, cond = batch["gt"], batch["cond"]
        b = gt.shape[0]
        with torch.no_grad(), self.autocast():
            moments = self.c.vae.encode_moments((gt * 2 - 1).to(self.c.vae.dtype)).float()
        latents = sample_posterior(moments, _randn(moments[:, : moments.shape[1] // 2].shape, gen, moments)) * self.sf
        noise = _randn(latents.shape, gen, latents)
        plan = sample_student_plan(b, gen, cfg.two_step_prob, cfg.student_timesteps, cfg.ta_base, cfg.ta_growth)
        with torch.no_grad():
            embeds = prompts_embeds if prompts_embeds is not None else self.c.text(list(batch["prompt"])).float()
            lr_tokens = self._tokens(cond, "bilinear")
        dev = latents.device
        control, tokens = cond, lr_tokens
        if plan.two_step:
            inner = net.module if hasattr(net, "module") else net
            with torch.no_grad():
                z0_first = self._z0(inner, latents, noise, plan.first_timesteps.to(dev), control, tokens, embeds)
                with self.autocast():
                    decoded = self._decode(z0_first)
            control = psr_condition(decoded, cond, cfg.psr_condition_weight)  # [0,1], as at inference
            tokens = self._tokens(control, "bicubic")
        z0 = self._z0(net, latents, noise, plan.trained_timesteps.to(dev), control, tokens, embeds)
        return StudentPass(plan, latents, noise, embeds, control, z0)

    @torch.no_grad()
    def teacher(self, sp: StudentPass, batch: dict, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 3: ([K,B,3,H,W] teacher decodes in [0,1], [K,B] teacher timesteps)."""
        b = sp.z0.shape[0]
        t_tea = sample_teacher_timesteps(b, self.cfg.loss.teacher_samples, gen)
        dev = sp.z0.device
        hr01 = batch["gt"]
        hr_tokens = self._tokens(hr01, "bilinear")
        outs = []
        for k in range(t_tea.shape[0]):
            z0_tea = self._z0(self.c.teacher, sp.z0.detach(), sp.noise, t_tea[k].to(dev), hr01, hr_tokens, sp.embeds)
            with self.autocast():
                outs.append(self._decode(z0_tea) / 2 + 0.5)
        return torch.stack(outs), t_tea

    def decode_student(self, sp: StudentPass) -> torch.Tensor:
        """The student's image in [-1,1], with gradient."""
        with self.autocast():
            return self._decode(sp.z0)

    @torch.no_grad()
    def lr_condition(self, batch: dict) -> torch.Tensor:
        with self.autocast():
            return self.c.cond_encoder(batch["cond"]).float()

    # ---------------------------------------------------------------------------------------- #
    def discriminator_loss(self, batch: dict, fake_pm1: torch.Tensor, c: torch.Tensor, gen: torch.Generator) -> dict:
        """Hinge loss on HR (real) vs the detached student image (fake); + R1 when configured."""
        disc = self.c.disc
        with self.autocast():
            real_logits, feats = disc(batch["gt"] * 2 - 1, c, generator=gen)
            fake_logits, _ = disc(fake_pm1.detach(), c, generator=gen)
        real_logits = [x.float() for x in real_logits]
        fake_logits = [x.float() for x in fake_logits]
        total, real, fake = hinge_d_loss(real_logits, fake_logits)
        out = {"d_loss": total, "d_real": real, "d_fake": fake}
        if self.cfg.loss.r1_weight:
            r1 = r1_penalty(real_logits, feats)
            out["r1"] = r1
            out["d_loss"] = total + self.cfg.loss.r1_weight * r1
        return out

    def generator_loss(
        self, sp: StudentPass, student_pm1: torch.Tensor, teacher01: torch.Tensor, t_tea: torch.Tensor,
        c: torch.Tensor, gen: torch.Generator,
    ) -> dict:
        """Distillation + adv_weight * adversarial. The discriminator heads must be frozen by the caller."""
        weights = sqrt_alpha_bar_weight(self.ac, t_tea).to(student_pm1.device)
        ta = sp.plan.ta_weights.to(student_pm1.device)
        distill = distillation_loss(student_pm1 / 2 + 0.5, teacher01, weights, ta)
        out = {"distill": distill}
        if self.cfg.loss.adv_weight:
            with self.autocast():
                fake_logits, _ = self.c.disc(student_pm1, c, generator=gen)
            adv = generator_adv_loss([x.float() for x in fake_logits])
            out["g_adv"] = adv
            out["g_loss"] = distill + self.cfg.loss.adv_weight * adv
        else:
            out["g_loss"] = distill
        return out
