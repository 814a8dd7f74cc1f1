"""The distillation training loop: DDP over torchrun, accumulation, AMP, EMA, checkpoints, resume.

One optimisation step = ``gradient_accumulation_steps`` micro-batches per process. Per micro-batch
(official order): student pass, teacher targets, discriminator hinge loss (backward), then, on the
last micro-batch, the discriminator step, then the student loss (backward, discriminator heads
frozen so the student loss never leaks into them). After the loop: unscale, clip, student step,
EMA update (once per optimisation step).

Distribution: the student is wrapped in ``DistributedDataParallel`` (gradients averaged by DDP,
``no_sync`` while accumulating); the small discriminator heads are averaged by an explicit
all-reduce before their step, because they run several forwards per backward. Every process has
its own seeded ``torch.Generator`` for all training draws, and its own data shard.

Checkpoints (main process, atomic, see ``checkpoint.py``) hold the trainable student weights, the
discriminator heads, the EMA, both optimisers, the grad scaler, every rank's RNG state and the data
position, so ``resume_from`` continues exactly where the run stopped.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import sys
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from ..loading.io import CheckpointError, read_state_dict
from .checkpoint import capture_rng_state, find_latest_checkpoint, load_checkpoint, save_checkpoint
from .components import Components, build_components
from .config import AddSRTrainConfig
from .data import DataError, ResumableSampler, build_dataset, collate, sample_seed
from .distill import DistillationObjective
from .distributed import DistContext, init_distributed
from .ema import EMA
from .tracking import Tracker

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class _BatchPlan:
    """Batches of ``(index, seed)`` for this rank from (epoch, position) on, forever (drop_last)."""

    def __init__(self, sampler: ResumableSampler, batch_size: int, epoch: int, position: int):
        self.sampler, self.batch_size, self.epoch, self.position = sampler, batch_size, epoch, position

    def __iter__(self):
        epoch, pos, bs = self.epoch, self.position, self.batch_size
        while True:
            order = self.sampler._order(epoch)
            while pos + bs <= len(order):
                yield [(i, sample_seed(self.sampler.seed, epoch, i)) for i in order[pos : pos + bs]]
                pos += bs
            epoch, pos = epoch + 1, 0


class Trainer:
    def __init__(
        self,
        cfg: AddSRTrainConfig,
        *,
        components: Components | None = None,
        ctx: DistContext | None = None,
        dataset=None,
        stream=None,
    ):
        self.cfg = cfg
        self.ctx = ctx or init_distributed()
        self.stream = stream if stream is not None else sys.stderr
        t = cfg.train
        dev = self.ctx.device
        seed = t.seed if t.seed is not None else self.ctx.broadcast_object(random.SystemRandom().randrange(2**31))
        self.seed = int(seed)
        torch.manual_seed(self.seed)  # discriminator-head init: identical on every rank
        self.amp_dtype = AMP_DTYPES.get(t.mixed_precision) if dev.type == "cuda" else None
        if t.mixed_precision != "no" and dev.type != "cuda":
            self._say(f"mixed_precision={t.mixed_precision} needs a GPU; training in float32 on {dev}.")
        if t.allow_tf32 and dev.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
        self.c = components or build_components(cfg, dev, frozen_dtype=self.amp_dtype)
        self.c.student.to(dev)
        self.trainable = [n for n, p in self.c.student.named_parameters() if p.requires_grad]
        params = [p for p in self.c.student.parameters() if p.requires_grad]
        o, od = cfg.optimizer, cfg.disc_optimizer
        self.opt = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
        heads = list(self.c.disc.heads.parameters())
        self.disc_opt = torch.optim.AdamW(heads, lr=od.lr, betas=tuple(od.betas), eps=od.eps, weight_decay=od.weight_decay)
        self.scaler = torch.amp.GradScaler(dev.type, enabled=self.amp_dtype is torch.float16)
        self.ema = EMA(self.c.student, t.ema_decay)
        # Same heads everywhere (their init used the global RNG); DDP broadcasts the student itself.
        self.ctx.broadcast_([*self.c.disc.heads.parameters(), *self.c.disc.heads.buffers()])
        self.net = self.c.student
        if self.ctx.distributed:
            self.net = DistributedDataParallel(
                self.c.student, device_ids=[dev.index] if dev.type == "cuda" else None, broadcast_buffers=False
            )
        self.objective = DistillationObjective(self.c, cfg, self._autocast)

        self.dataset = dataset if dataset is not None else build_dataset(cfg.data)
        self.sampler = ResumableSampler(len(self.dataset), self.seed, True, self.ctx.world_size, self.ctx.rank)
        if len(self.sampler) < t.batch_size:
            raise DataError(
                f"Each of the {self.ctx.world_size} processes gets {len(self.sampler)} images per epoch, fewer than "
                f"train.batch_size={t.batch_size}; add images or lower the batch size."
            )
        self.epoch, self.position = 0, 0
        self.step = 0
        self.gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.ctx.rank]).generate_state(1)[0]))
        self.out = Path(t.output_dir)
        self.tracker = Tracker(self.out, enabled=self.ctx.is_main, report_to=t.report_to, stream=self.stream)
        self.skipped_at_load: list[str] = []
        self.last_checkpoint: Path | None = None
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            report = getattr(self.dataset, "report", None)
            if report is not None:
                self._say("Data: " + report.summary())
                (self.out / "data_report.json").write_text(json.dumps(report.to_dict(), indent=2))
        if t.resume_from:
            self.resume(t.resume_from)

    # ---------------------------------------------------------------------------------------- #
    def _say(self, text: str) -> None:
        if self.ctx.is_main:
            print(text, file=self.stream, flush=True)

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.amp_dtype)

    def _loader(self):
        plan = _BatchPlan(self.sampler, self.cfg.train.batch_size, self.epoch, self.position)
        return torch.utils.data.DataLoader(
            self.dataset, batch_sampler=plan, collate_fn=collate, num_workers=self.cfg.data.num_workers,
            generator=torch.Generator().manual_seed(0), pin_memory=self.ctx.device.type == "cuda",
        )

    def _consumed_batch(self) -> None:
        bs = self.cfg.train.batch_size
        self.position += bs
        if self.position + bs > len(self.sampler):
            self.epoch, self.position = self.epoch + 1, 0

    def _to_device(self, batch: dict) -> dict:
        dev = self.ctx.device
        out = dict(batch)
        out["gt"] = batch["gt"].to(dev, torch.float32, non_blocking=True)
        out["cond"] = batch["cond"].to(dev, torch.float32, non_blocking=True)
        return out

    # ---------------------------------------------------------------------------------------- #
    def train_step(self, batches) -> dict:
        """One optimisation step over ``gradient_accumulation_steps`` micro-batches from ``batches``."""
        t, obj, c = self.cfg.train, self.objective, self.c
        accum = t.gradient_accumulation_steps
        self.c.student.train()
        c.disc.train()
        self.opt.zero_grad(set_to_none=True)
        self.disc_opt.zero_grad(set_to_none=True)
        logs: dict = defaultdict(float)
        heads = list(c.disc.heads.parameters())
        for i in range(accum):
            last = i == accum - 1
            batch = self._to_device(next(batches))
            self._consumed_batch()
            self.skipped_at_load += batch.get("skipped", [])
            sync = nullcontext() if (last or not self.ctx.distributed) else self.net.no_sync()
            with sync:
                sp = obj.student(batch, self.gen, self.net)
                teacher01, t_tea = obj.teacher(sp, batch, self.gen)
                student_pm1 = obj.decode_student(sp)
                cond_c = obj.lr_condition(batch)
                d = obj.discriminator_loss(batch, student_pm1, cond_c, self.gen)
                self.scaler.scale(d["d_loss"] / accum).backward()
                if last:
                    self._disc_step(heads)
                for p in heads:
                    p.requires_grad_(False)
                try:
                    g = obj.generator_loss(sp, student_pm1, teacher01, t_tea, cond_c, self.gen)
                    self.scaler.scale(g["g_loss"] / accum).backward()
                finally:
                    for p in heads:
                        p.requires_grad_(True)
            for k, v in {**d, **g}.items():
                logs[k] += float(v.detach()) / accum
            logs["two_step"] += float(sp.plan.two_step) / accum
        self._last_images = (batch["gt"], batch["cond"], sp.control, student_pm1.detach() / 2 + 0.5)
        params = [p for p in self.c.student.parameters() if p.requires_grad]
        self.scaler.unscale_(self.opt)
        if self.cfg.optimizer.max_grad_norm is not None:
            logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.optimizer.max_grad_norm))
        self.scaler.step(self.opt)
        self.scaler.update()
        self.ema.update(self.c.student)
        self.step += 1
        logs["lr"] = self.opt.param_groups[0]["lr"]
        return dict(logs)

    def _disc_step(self, heads) -> None:
        grads = [p.grad for p in heads if p.grad is not None]
        self.ctx.all_reduce_mean_(grads)
        self.scaler.unscale_(self.disc_opt)
        if self.cfg.disc_optimizer.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(heads, self.cfg.disc_optimizer.max_grad_norm)
        self.scaler.step(self.disc_opt)

    # ---------------------------------------------------------------------------------------- #
    def train(self, max_steps: int | None = None) -> dict:
        """Train until ``train.max_train_steps`` (or ``max_steps`` more steps, for a partial run)."""
        from tqdm.auto import tqdm

        t = self.cfg.train
        end = t.max_train_steps if max_steps is None else min(t.max_train_steps, self.step + max_steps)
        batches = iter(self._loader())
        bar = tqdm(total=t.max_train_steps, initial=self.step, desc="AddSR distill", disable=not self.ctx.is_main,
                   file=self.stream, dynamic_ncols=True)
        logs: dict = {}
        try:
            while self.step < end:
                logs = self.train_step(batches)
                if not all(math.isfinite(v) for v in logs.values()):
                    raise FloatingPointError(f"non-finite loss at step {self.step}: {logs}")
                bar.update(1)
                bar.set_postfix({k: f"{logs[k]:.4g}" for k in ("distill", "g_loss", "d_loss") if k in logs})
                if self.step % t.log_every == 0 or self.step == end:
                    self.tracker.scalars({**logs, "data/skipped_at_load": len(self.skipped_at_load)}, self.step)
                if t.image_log_every and self.step % t.image_log_every == 0:
                    for name, img in zip(("hr", "condition", "student_condition", "student"), self._last_images):
                        self.tracker.images(f"train/{name}", img[:4], self.step)
                if self.step % t.checkpointing_steps == 0:
                    self.save()
                if t.validation_images and self.step % t.validation_steps == 0:
                    self.validate()
        finally:
            bar.close()
        if self.step >= t.max_train_steps:
            if self.last_checkpoint is None or self.last_checkpoint.name != f"checkpoint-{self.step}":
                self.save()
            if self.ctx.is_main:
                paths = self.export()
                self._say(f"Exported the EMA student to {paths['release']} and {paths.get('packed')}.")
            self.ctx.barrier()
            if self.skipped_at_load and self.ctx.is_main:
                self._say(f"{len(self.skipped_at_load)} images failed to decode during training and were replaced; "
                          f"first: {self.skipped_at_load[:3]}")
        return logs

    # ---------------------------------------------------------------------------------------- #
    def fingerprint(self) -> str:
        """sha256 of the trainable student weights and discriminator heads (ranks must agree)."""
        h = hashlib.sha256()
        tensors = [p for p in self.c.student.parameters() if p.requires_grad] + list(self.c.disc.heads.parameters())
        for p in tensors:
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def trainable_state_dict(self) -> dict:
        params = dict(self.c.student.named_parameters())
        return {n: params[n] for n in self.trainable}

    def save(self) -> Path | None:
        rng = self.ctx.gather_objects(capture_rng_state({"train": self.gen}))
        prints = self.ctx.gather_objects(self.fingerprint())
        path = None
        if self.ctx.is_main:
            if len(set(prints)) != 1:
                raise RuntimeError(f"Processes disagree on the trained weights at step {self.step}: {prints}")
            extra = {
                "seed": self.seed, "world_size": self.ctx.world_size, "data": {"epoch": self.epoch, "position": self.position},
                "rank_fingerprints": prints, "config": self.cfg.to_dict(), "skipped_at_load": len(self.skipped_at_load),
            }
            path = save_checkpoint(
                self.out, self.step,
                models={"student": self.trainable_state_dict(), "disc_heads": self.c.disc.heads},
                optimizers={"student": self.opt, "disc": self.disc_opt}, emas={"student": self.ema},
                scaler=self.scaler, rng_states=rng, extra=extra, total_limit=self.cfg.train.checkpoints_total_limit,
            )
        self.last_checkpoint = self.ctx.broadcast_object(path)
        self.ctx.barrier()
        return self.last_checkpoint

    def resume(self, where: str) -> Path | None:
        path = find_latest_checkpoint(self.out) if where == "latest" else Path(where)
        if path is None:
            self._say(f"No checkpoint in {self.out}; starting a new run.")
            return None
        meta = load_checkpoint(
            path, models={"disc_heads": self.c.disc.heads}, optimizers={"student": self.opt, "disc": self.disc_opt},
            emas={"student": self.ema}, scaler=self.scaler, generators={"train": self.gen}, rank=self.ctx.rank,
        )
        extra = meta["extra"]
        if extra["world_size"] != self.ctx.world_size:
            raise CheckpointError(
                f"{path} was written by {extra['world_size']} processes; resume with the same number "
                f"(now {self.ctx.world_size}) so every data shard and RNG state continues exactly."
            )
        if extra["seed"] != self.seed:
            raise CheckpointError(f"{path} used seed {extra['seed']}; set train.seed to it (now {self.seed}).")
        sd = read_state_dict(path / "model_student.safetensors", family="checkpoint model 'student'")
        if sorted(sd) != sorted(self.trainable):
            raise CheckpointError(
                f"{path}: the saved trainable parameters differ from the configured trainable set "
                "(train.*_trainable_*); resume with the same settings."
            )
        params = dict(self.c.student.named_parameters())
        with torch.no_grad():
            for n, v in sd.items():
                params[n].copy_(v)
        self.step = int(meta["step"])
        self.epoch, self.position = int(extra["data"]["epoch"]), int(extra["data"]["position"])
        self.last_checkpoint = path
        self._say(f"Resumed from {path} at step {self.step}.")
        return path

    # ---------------------------------------------------------------------------------------- #
    def export(self, out_dir=None) -> dict:
        from .export import export_release

        t = self.cfg.train
        out_dir = Path(out_dir) if out_dir is not None else self.out / "export" / "addsr-student"
        return export_release(
            self.c.student, self.c.unet_config, self.c.controlnet_config, out_dir,
            pack_file=out_dir.with_suffix(".safetensors"), pack_dtype=t.export_dtype,
            disc=self.c.disc if t.export_discriminator else None, ema=self.ema,
        )

    @torch.no_grad()
    def validate(self) -> list[Path]:
        """Upscale a few held-out LR images with the real sampler and the EMA weights (main process)."""
        saved: list[Path] = []
        if self.ctx.is_main:
            saved = run_validation(self, self.out / "validation" / f"step-{self.step:08d}")
        self.ctx.barrier()
        return saved


def validation_files(source: str, count: int) -> list[Path]:
    from .data import list_images

    path = Path(source)
    files = [path] if path.is_file() else list_images(path, (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"))
    return files[:count]


def run_validation(trainer: Trainer, out_dir: Path) -> list[Path]:
    from ..imaging.prepare import load_image
    from ..pipeline import AddSRModels, AddSROptions, upscale

    t, c = trainer.cfg.train, trainer.c
    files = validation_files(t.validation_images, t.validation_count)
    out_dir.mkdir(parents=True, exist_ok=True)
    models = AddSRModels(c.student.unet, c.student.controlnet, c.vae, c.ram, None, c.text)
    options = AddSROptions(
        steps=t.validation_sampler_steps, use_tags=False, seed=0, scale=trainer.cfg.data.degradation.scale,
        min_size=trainer.cfg.data.resolution,  # small LRs are brought up to the training crop size
    )
    saved = []
    was_training = c.student.training
    c.student.eval()
    try:
        with trainer.ema.applied(c.student), trainer._autocast():
            for f in files:
                lr = load_image(f).rgb.to(trainer.ctx.device)
                sr = upscale(models, lr, options).float()
                from PIL import Image

                arr = (sr[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
                dest = out_dir / f"{f.stem}.png"
                Image.fromarray(arr).save(dest)
                saved.append(dest)
                trainer.tracker.images(f"validation/{f.stem}", sr, trainer.step)
    finally:
        c.student.train(was_training)
    return saved
