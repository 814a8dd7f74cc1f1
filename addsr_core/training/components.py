"""The networks a distillation run needs, loaded through the library's own loaders.

- ``student`` / ``teacher``: :class:`AddSRNet` (UNet + ControlNet as one module). Both start from
  the SeeSR weights (official); the teacher is frozen, the student trains the configured subset.
- ``vae``, ``text`` (prompts -> embeddings), ``ram`` (image tokens): frozen, from SD2-base and RAM+DAPE.
- ``disc``: the projected discriminator (frozen DINO ViT-S/16, trainable heads) and ``cond_encoder``
  (frozen DINOv2 ViT-S/14 CLS of the LR).

Nothing is downloaded; every file is user supplied (see ``ModelPaths``).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..loading.io import CheckpointError, read_safetensors_metadata, read_state_dict, unwrap_state_dict
from ..models import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from ..sampling.denoisers import ControlNetDenoiser
from .config import AddSRTrainConfig, TrainConfigError
from .discriminator import LRConditionEncoder, ProjectedDiscriminator
from .vit import DINO_VITS16, DINOV2_VITS14, ViTConfig, load_vit


class AddSRNet(nn.Module):
    """UNet + ControlNet as one module: ``forward(z_t, t, control01, tokens, embeds) -> eps``.

    One module so DDP wraps one thing and the EMA / checkpoints name parameters ``unet.*`` and
    ``controlnet.*``. The maths is the sampler's :class:`ControlNetDenoiser` (shared, not copied).
    """

    def __init__(self, unet: UNet2DConditionModel, controlnet: ControlNetModel):
        super().__init__()
        self.unet = unet
        self.controlnet = controlnet

    def forward(self, z_t, t, control01, tokens, embeds) -> torch.Tensor:
        if torch.is_grad_enabled() and z_t.device.type == "cpu" and not z_t.requires_grad:
            # torch 2.13 CPU crashes (segfault) in GroupNorm's backward when a channels-last input
            # needs no gradient but the norm's weight does, which is what training only the image
            # attentions produces. Making the input require grad avoids that kernel path; the extra
            # work is the backward of the few frozen layers before the first trainable block.
            z_t = z_t.detach().requires_grad_(True)
        return ControlNetDenoiser(self.unet, self.controlnet)(z_t, t, control01, tokens, embeds)


def select_trainable(net: AddSRNet, cfg: AddSRTrainConfig) -> list[str]:
    """Set ``requires_grad`` by the official ``--trainable_modules`` rule; return the trainable names.

    A parameter trains when its owning module's name ends with one of the configured suffixes
    (``image_attentions``: the image cross-attention blocks) or, in the ControlNet, when its name
    starts with one of the configured prefixes (``controlnet_cond_embedding``).
    """
    t = cfg.train
    net.requires_grad_(False)
    rules = (
        (net.unet, "unet.", tuple(t.unet_trainable_suffixes), ()),
        (net.controlnet, "controlnet.", tuple(t.controlnet_trainable_suffixes), tuple(t.controlnet_trainable_prefixes)),
    )
    for module, _, suffixes, prefixes in rules:
        if suffixes:
            for name, sub in module.named_modules():
                if name and name.endswith(suffixes):
                    sub.requires_grad_(True)
        for name, p in module.named_parameters():
            if prefixes and name.startswith(prefixes):
                p.requires_grad_(True)
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    if not names:
        raise TrainConfigError(
            "No student parameter matches train.unet_trainable_suffixes / controlnet_trainable_suffixes / "
            "controlnet_trainable_prefixes; nothing would train."
        )
    return names


@dataclass
class Components:
    student: AddSRNet
    teacher: AddSRNet
    vae: AutoencoderKL
    text: Callable  # prompts -> [B,77,width]
    ram: nn.Module  # .represent(images01, resize) -> [B,145,512]
    disc: ProjectedDiscriminator
    cond_encoder: LRConditionEncoder
    unet_config: dict  # diffusers config.json of the student UNet (for export)
    controlnet_config: dict


# --------------------------------------------------------------------------------------------- #
def read_addsr_configs(path) -> tuple[dict, dict]:
    """The diffusers config dicts of a release folder or a packed file."""
    path = Path(path)
    if path.is_file():
        meta = read_safetensors_metadata(path)
        if "unet_config" not in meta:
            raise CheckpointError(f"{str(path)!r} is not an AddSR packed file.")
        return json.loads(meta["unet_config"]), json.loads(meta["controlnet_config"])
    out = []
    for part in ("unet", "controlnet"):
        file = path / part / "config.json"
        if not file.is_file():
            file = path / "config.json" if (path / "config.json").is_file() and part == "unet" else file
        if not file.is_file():
            raise CheckpointError(f"No {part}/config.json in {str(path)!r} (expected a SeeSR/AddSR release folder).")
        out.append(json.loads(file.read_text()))
    return out[0], out[1]


def infer_vit_config(path: str, base: ViTConfig) -> ViTConfig:
    """The ViT geometry of a DINO/DINOv2 file (so smaller test ViTs load the same way)."""
    sd = unwrap_state_dict(read_state_dict(path, family="ViT"))
    for prefix in ("module.", "backbone."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    if "cls_token" not in sd or "patch_embed.proj.weight" not in sd:
        raise CheckpointError(f"{path!r} is not a DINO/DINOv2 ViT file (no cls_token / patch_embed).")
    dim = sd["cls_token"].shape[-1]
    patch = sd["patch_embed.proj.weight"].shape[-1]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    grid = int(round(math.sqrt(sd["pos_embed"].shape[1] - 1)))
    return dataclasses.replace(
        base, img_size=grid * patch, patch_size=patch, embed_dim=dim, depth=depth, num_heads=max(1, dim // 64),
        layerscale="blocks.0.ls1.gamma" in sd, mask_token="mask_token" in sd,
    )


def _require(value: str, name: str) -> str:
    if not value:
        raise TrainConfigError(f"models.{name} is empty: set the path to the file/folder (see training/README.md).")
    return value


def build_components(cfg: AddSRTrainConfig, device="cpu", frozen_dtype: torch.dtype | None = None) -> Components:
    """Load every network named in ``cfg.models``. Trainable weights stay float32."""
    from ..loading.models import load_vae
    from ..loading.pack import load_addsr
    from ..ram import load_ram
    from ..text import TextConditioner

    m = cfg.models
    teacher_path = _require(m.teacher, "teacher")
    student_path = m.student or teacher_path
    s_unet, s_cn = load_addsr(student_path, dtype=torch.float32, device=device)
    student = AddSRNet(s_unet, s_cn)
    select_trainable(student, cfg)
    student.train()
    if cfg.train.gradient_checkpointing:
        student.unet.set_gradient_checkpointing(True)
        student.controlnet.set_gradient_checkpointing(True)
    t_unet, t_cn = load_addsr(teacher_path, dtype=frozen_dtype, device=device)
    teacher = AddSRNet(t_unet, t_cn).requires_grad_(False).eval()
    sd2 = _require(m.sd2_base, "sd2_base")
    vae = load_vae(sd2, dtype=frozen_dtype, device=device).requires_grad_(False).eval()
    text = TextConditioner.from_pretrained(sd2, dtype=frozen_dtype, device=device)
    text.text_encoder.requires_grad_(False).eval()
    ram, _ = load_ram(_require(m.ram, "ram"), m.dape or None, dtype=frozen_dtype, device=device)
    ram.requires_grad_(False).eval()

    dino_path, dinov2_path = _require(m.dino_vits16, "dino_vits16"), _require(m.dinov2_vits14, "dinov2_vits14")
    dino_cfg = infer_vit_config(dino_path, DINO_VITS16)
    dinov2_cfg = infer_vit_config(dinov2_path, DINOV2_VITS14)
    dcfg = cfg.discriminator
    if dcfg.c_dim != dinov2_cfg.embed_dim:
        raise TrainConfigError(
            f"discriminator.c_dim ({dcfg.c_dim}) must equal the DINOv2 width in {dinov2_path!r} ({dinov2_cfg.embed_dim})."
        )
    disc = ProjectedDiscriminator(dcfg, vit_cfg=dino_cfg)
    disc.load_backbone(dino_path)
    disc.to(device)
    disc.dino.to(dtype=frozen_dtype) if frozen_dtype is not None else None
    disc.train()
    dinov2 = load_vit(dinov2_path, dinov2_cfg, family="DINOv2 ViT-S/14", dtype=frozen_dtype, device=device)
    cond_encoder = LRConditionEncoder(dinov2, dcfg.cond_image_size, dcfg.cond_imagenet_normalize)
    unet_config, controlnet_config = read_addsr_configs(student_path)
    return Components(student, teacher, vae, text, ram, disc, cond_encoder, unet_config, controlnet_config)
