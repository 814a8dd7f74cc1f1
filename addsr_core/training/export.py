"""Export a trained (EMA) student: the official release layout and our packed single file.

- ``<out>/unet/{config.json, diffusion_pytorch_model.safetensors}`` and ``<out>/controlnet/...``:
  the diffusers layout of the AddSR release, loadable by ``load_addsr``, the nodes and the CLI.
- ``<out>.safetensors`` (optional): the packed format of ``addsr_core.loading.pack``.
- ``<out>/discriminator_heads.safetensors`` (optional): the trained discriminator heads.

The folder is written under a temporary name and renamed into place, so an interrupted export
never leaves a half-written model under the final name.
"""
from __future__ import annotations

import os
import shutil
import uuid
from contextlib import nullcontext
from pathlib import Path

import safetensors.torch
import torch

from ..loading.io import read_state_dict
from ..loading.models import write_diffusers_folder
from .checkpoint import read_checkpoint_meta
from .components import AddSRNet
from .discriminator import ProjectedDiscriminator
from .ema import EMA

def _contiguous(sd) -> dict:
    return {k: v.detach().float().cpu().contiguous() for k, v in sd.items()}


def export_release(
    net: AddSRNet,
    unet_config: dict,
    controlnet_config: dict,
    out_dir,
    *,
    pack_file=None,
    pack_dtype: str = "fp16",
    disc: ProjectedDiscriminator | None = None,
    ema: EMA | None = None,
) -> dict:
    """Write ``net`` (with the EMA weights swapped in when ``ema`` is given). Returns the paths."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        ctx = ema.applied(net) if ema is not None else nullcontext(net)
        with ctx, torch.no_grad():
            for part, module, config in (("unet", net.unet, unet_config), ("controlnet", net.controlnet, controlnet_config)):
                write_diffusers_folder(tmp / part, config, _contiguous(module.state_dict()))
        if disc is not None:
            safetensors.torch.save_file(_contiguous(disc.heads_state_dict()), str(tmp / "discriminator_heads.safetensors"))
        if out_dir.exists():
            trash = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out_dir, trash)
            os.replace(tmp, out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    paths = {"release": out_dir}
    if disc is not None:
        paths["discriminator"] = out_dir / "discriminator_heads.safetensors"
    if pack_file is not None:
        from ..loading.pack import pack_release

        paths["packed"] = pack_release(out_dir, pack_file, dtype=pack_dtype)
    return paths


def load_ema_into(net: AddSRNet, checkpoint_dir) -> None:
    """Copy a training checkpoint's EMA shadow (``ema_student.safetensors``) into ``net``."""
    checkpoint_dir = Path(checkpoint_dir)
    read_checkpoint_meta(checkpoint_dir)
    shadow = read_state_dict(checkpoint_dir / "ema_student.safetensors", family="checkpoint EMA 'student'")
    params = dict(net.named_parameters())
    unknown = sorted(set(shadow) - set(params))
    if unknown:
        raise KeyError(f"EMA holds parameters the student lacks: {unknown[:5]}")
    with torch.no_grad():
        for name, value in shadow.items():
            params[name].copy_(value.to(params[name].dtype))


def export_checkpoint(cfg, checkpoint_dir, out_dir=None) -> dict:
    """Student base weights from ``cfg.models`` + the checkpoint's EMA shadow -> release + packed file."""
    from ..loading.pack import load_addsr
    from .components import read_addsr_configs

    student_path = cfg.models.student or cfg.models.teacher
    unet, controlnet = load_addsr(student_path, dtype=torch.float32)
    net = AddSRNet(unet, controlnet)
    load_ema_into(net, checkpoint_dir)
    unet_config, controlnet_config = read_addsr_configs(student_path)
    out_dir = Path(out_dir) if out_dir else Path(cfg.train.output_dir) / "export" / "addsr-student"
    return export_release(net, unet_config, controlnet_config, out_dir, pack_file=out_dir.with_suffix(".safetensors"),
                          pack_dtype=cfg.train.export_dtype)
