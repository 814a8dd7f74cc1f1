"""One full-size distillation step of the trainer on fake CUDA (tools/fake_cuda.py): its peak GPU memory.

Run with a CUDA build of torch (no GPU needed):

    python tools/train_dryrun.py --batch 1 --checkpointing --amp bf16
    python tools/train_dryrun.py --batch 2 --amp fp16          # the official setting (no checkpointing)
    python tools/train_dryrun.py --sweep                        # batch 1/2 x checkpointing on/off x bf16/fp16

The real ``Trainer`` (addsr_core/training/trainer.py) runs ``--steps`` optimisation steps (default 2:
the second has the AdamW moments and the grads of the first step's accumulation live) on the
full-size networks built by their constructors: the student (UNet + ControlNet, fp32, the official
trainable subset), the frozen teacher, VAE, text encoder, RAM and both DINO ViTs in the AMP dtype (as
``build_components(frozen_dtype=...)``), the discriminator heads, the EMA and both optimisers. 512
crops, the official config otherwise (4 teacher samples, accumulation 2); every micro-batch takes the
two-step (PSR) path (``two_step_prob`` 1: the costlier of the two plans). The values the loop reads back
to log (losses, the grad norm, the fp16 scaler's inf check) answer 0 and are counted.

Prints the stages' peaks and, as its last line, ``peak VRAM estimate: X.XX GiB`` (tensors only, as
``torch.cuda.max_memory_allocated``; see docs/gpu.md for what that leaves out).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import fake_cuda as fc  # noqa: E402
from gpu_dryrun import _StubTokenizer, build_network  # noqa: E402


class _Dataset:
    """Only its length is read (the batches come from :func:`batches`)."""

    def __len__(self) -> int:
        return 64


def batches(batch: int, size: int):
    """The loader's batches, already on the device (fake)."""
    gt = torch.rand(batch, 3, size, size)
    cond = torch.rand(batch, 3, size, size)
    while True:
        yield {"gt": gt, "cond": cond, "prompt": ["a photo"] * batch, "skipped": []}


def components(cfg, device, amp_dtype):
    from addsr_core.models import SD2_UNET, SD2_VAE, AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from addsr_core.precision import Precision
    from addsr_core.ram import RAM, RAMConfig
    from addsr_core.text import TextConditioner
    from addsr_core.text.config import TextEncoderConfig
    from addsr_core.text.encoder import CLIPTextEncoder
    from addsr_core.training.components import AddSRNet, Components, select_trainable
    from addsr_core.training.discriminator import LRConditionEncoder, ProjectedDiscriminator
    from addsr_core.training.vit import DINO_VITS16, DINOV2_VITS14, VisionTransformer

    frozen = Precision(amp_dtype, channels_last=False)  # build_components casts; no layout change

    def net(dtype):
        unet = fc.build_on_meta(lambda: UNet2DConditionModel(SD2_UNET))
        controlnet = fc.build_on_meta(lambda: ControlNetModel(SD2_UNET))
        with fc.on_host():
            unet.to(dtype)
            controlnet.to(dtype)
        return AddSRNet(fc.materialize(unet, device), fc.materialize(controlnet, device))

    student = net(torch.float32)  # trainable weights stay float32
    select_trainable(student, cfg)
    student.train()
    if cfg.train.gradient_checkpointing:
        student.unet.set_gradient_checkpointing(True)
        student.controlnet.set_gradient_checkpointing(True)
    teacher = net(amp_dtype).requires_grad_(False).eval()
    vae = build_network(lambda: AutoencoderKL(SD2_VAE), frozen, device, layout=False)
    text = TextConditioner(_StubTokenizer(49408), build_network(lambda: CLIPTextEncoder(TextEncoderConfig()), frozen,
                                                                device, layout=False))
    ram = build_network(lambda: RAM(RAMConfig()), frozen, device, layout=False)
    ram.rebuild_buffers(device)
    dcfg = cfg.discriminator
    disc = fc.build_on_meta(lambda: ProjectedDiscriminator(dcfg, vit_cfg=DINO_VITS16))
    with fc.on_host():
        disc.dino.to(dtype=amp_dtype)
    disc = fc.materialize(disc, device)
    disc.train()
    dinov2 = build_network(lambda: VisionTransformer(DINOV2_VITS14), frozen, device, layout=False)
    cond_encoder = LRConditionEncoder(dinov2, dcfg.cond_image_size, dcfg.cond_imagenet_normalize)
    return Components(student, teacher, vae, text, ram, disc, cond_encoder, {}, {})


def run(batch: int, checkpointing: bool, amp: str, steps: int, size: int, gpu_name: str, accumulation: int) -> dict:
    from addsr_core.training.config import AddSRTrainConfig
    from addsr_core.training.distributed import DistContext
    from addsr_core.training.trainer import Trainer

    cfg = AddSRTrainConfig()
    out = tempfile.mkdtemp(prefix="addsr-train-dryrun-")
    cfg.train = dataclasses.replace(cfg.train, batch_size=batch, gradient_checkpointing=checkpointing, mixed_precision=amp,
                                    output_dir=out, seed=0, report_to="none", gradient_accumulation_steps=accumulation)
    cfg.loss = dataclasses.replace(cfg.loss, two_step_prob=1.0)
    cfg.data = dataclasses.replace(cfg.data, resolution=size)
    start = time.perf_counter()
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[amp]
    with ExitStack() as stack:
        # Fake CPU tensors stand in for the GPU's: the autograd engine cannot run a backward on fake
        # CUDA tensors without a CUDA device (pytorch/pytorch#92627). Autocast is the CPU's, in the
        # AMP dtype (its lower-precision list holds the convolutions, matmuls and attention, as CUDA's).
        fake_run = stack.enter_context(fc.fake_device("cpu", fc.GPUS[gpu_name]))
        memory = fake_run.memory
        memory.placeholder_reads = True
        device = torch.device("cpu")
        with memory.stage("weights (student, teacher, frozen nets)"):
            comps = components(cfg, device, amp_dtype)
            with torch.no_grad():
                data = batches(batch, size)
        # The student is already where it trains (Module.to cannot swap fake parameters).
        stack.enter_context(mock.patch.object(comps.student, "to", lambda *a, **k: comps.student))
        with memory.stage("optimisers + EMA (init)"):
            trainer = Trainer(cfg, components=comps, ctx=DistContext(device=device), dataset=_Dataset(),
                              stream=open(os.devnull, "w"))
        # What the Trainer sets up on a CUDA device (on a CPU it trains in float32): AMP and its scaler.
        trainer.amp_dtype = amp_dtype
        trainer.scaler = torch.amp.GradScaler("cpu", enabled=amp_dtype is torch.float16)
        trainer._autocast = trainer.objective.autocast = lambda: torch.autocast("cpu", dtype=amp_dtype)
        obj = trainer.objective

        def patch(owner, name, stage):
            stack.enter_context(mock.patch.object(owner, name, memory.wrap(stage, getattr(owner, name))))

        patch(obj, "student", "student (2 steps, grad on the second)")
        patch(obj, "teacher", "teacher (4 samples) + decodes")
        patch(obj, "decode_student", "student decode (grad)")
        patch(obj, "lr_condition", "DINOv2 condition")
        patch(obj, "discriminator_loss", "discriminator loss")
        patch(obj, "generator_loss", "generator loss")
        patch(torch.Tensor, "backward", "backward")
        patch(trainer, "_disc_step", "discriminator step")
        patch(trainer.opt, "step", "student AdamW step")
        patch(trainer.ema, "update", "EMA update")
        for i in range(steps):
            with memory.stage(f"optimisation step {i + 1}"):
                trainer.train_step(data)
        trainable = sum(p.numel() for p in comps.student.parameters() if p.requires_grad)
    return {"batch": batch, "checkpointing": checkpointing, "amp": amp, "accumulation": accumulation, "crop": size,
            "trainable_params": trainable, "peak_gib": round(fc.gib(memory.peak), 2), "host_reads": memory.reads,
            "stages": {k: round(fc.gib(s.peak), 2) for k, s in memory.stats.items()},
            "violations": [str(v) for v in memory.violations], "table": fc.format_table(memory),
            "dry_run_s": round(time.perf_counter() - start, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on (student)")
    parser.add_argument("--amp", choices=("bf16", "fp16"), default="bf16")
    parser.add_argument("--steps", type=int, default=2, help="optimisation steps (the second is the steady state)")
    parser.add_argument("--accumulation", type=int, default=2, help="micro-batches per step (official 2)")
    parser.add_argument("--size", type=int, default=512, help="HR crop (data.resolution)")
    parser.add_argument("--gpu", choices=sorted(fc.GPUS), default="ampere")
    parser.add_argument("--sweep", action="store_true", help="batch 1/2 x checkpointing on/off x bf16/fp16, a process each")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.sweep:
        for amp in ("bf16", "fp16"):
            for batch in (1, 2):
                for ckpt in (True, False):
                    cmd = [sys.executable, __file__, "--batch", str(batch), "--amp", amp, "--steps", str(args.steps),
                           "--accumulation", str(args.accumulation), "--json"] + (["--checkpointing"] if ckpt else [])
                    done = subprocess.run(cmd, capture_output=True, text=True)
                    print(done.stdout.strip().splitlines()[-2] if done.returncode == 0 else
                          json.dumps({"batch": batch, "amp": amp, "checkpointing": ckpt, "failed": done.stdout[-2000:]}),
                          flush=True)
        return 0
    try:
        result = run(args.batch, args.checkpointing, args.amp, args.steps, args.size, args.gpu, args.accumulation)
    except Exception as err:  # noqa: BLE001 - reported with its line
        import traceback

        traceback.print_exc()
        print(f"FAILED: {type(err).__name__} at {fc.exception_line(err)}")
        return 1
    print(f"train step: batch {args.batch}, checkpointing {'on' if args.checkpointing else 'off'}, {args.amp} autocast, "
          f"accumulation {args.accumulation}, {args.size} crops; {result['trainable_params'] / 1e6:.0f} M trainable; "
          f"{result['host_reads']} values read back; dry run {result['dry_run_s']} s CPU")
    print(result.pop("table"))
    if args.json:
        print(json.dumps(result))
    if result["violations"]:
        print("FAILED:\n  " + "\n  ".join(result["violations"]))
    print(f"peak VRAM estimate: {result['peak_gib']:.2f} GiB")
    return 1 if result["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
