"""Training configuration: nested dataclasses holding the official ``train_addsr.py`` defaults.

Every field default is the official value unless its comment says otherwise. A YAML or JSON file
(``training/configs/*.yaml``) overrides any subset; an unknown key is an error that names the key
and the keys that are allowed, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union, get_args, get_origin, get_type_hints

from ..errors import AddSRError


class TrainConfigError(AddSRError):
    """A training config that cannot be used, with what to change."""


# --------------------------------------------------------------------------------------------- #
# Degradation (Real-ESRGAN two-stage pipeline)
# --------------------------------------------------------------------------------------------- #
KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")


@dataclass
class DegradationConfig:
    """Parameters of the Real-ESRGAN second-order degradation.

    Defaults are SeeSR's ``utils_data/make_paired_data.py``: the script whose pairs the official
    AddSR training reads (AddSR README: "the same preprocessing measures as SeeSR"). The preset
    ``"realesrgan_yml"`` is ``dataloaders/params_realesrgan.yml`` (used by SeeSR/AddSR only for the
    DAPE/RAM tag data); select it with ``preset: realesrgan_yml`` and override single fields after.
    """

    preset: str = "seesr_training_pairs"
    scale: int = 4
    # make_paired_data sharpens the GT (USMSharp, radius 50 -> 51 taps, sigma 8) before degrading
    # it, and saves that sharpened GT as the training target.
    usm_sharpen_gt: bool = True
    usm_weight: float = 0.5
    usm_radius: int = 50
    usm_threshold: float = 10.0
    # Blur kernel size is drawn from these (odd, 7..21) and zero-padded to 21.
    kernel_sizes: tuple = (7, 9, 11, 13, 15, 17, 19, 21)
    # first stage
    kernel_list: tuple = KERNEL_TYPES
    kernel_prob: tuple = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1
    blur_sigma: tuple = (0.2, 3.0)
    betag_range: tuple = (0.5, 4.0)
    betap_range: tuple = (1.0, 2.0)
    resize_prob: tuple = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple = (1.0, 30.0)
    poisson_scale_range: tuple = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple = (30.0, 95.0)
    # second stage
    second_blur_prob: float = 0.8
    kernel_list2: tuple = KERNEL_TYPES
    kernel_prob2: tuple = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob2: float = 0.1
    blur_sigma2: tuple = (0.2, 1.5)
    betag_range2: tuple = (0.5, 4.0)
    betap_range2: tuple = (1.0, 2.0)
    resize_prob2: tuple = (0.3, 0.4, 0.3)
    resize_range2: tuple = (0.3, 1.2)
    gaussian_noise_prob2: float = 0.5
    noise_range2: tuple = (1.0, 25.0)
    poisson_scale_range2: tuple = (0.05, 2.5)
    gray_noise_prob2: float = 0.4
    jpeg_range2: tuple = (30.0, 95.0)
    # final [resize back + sinc] / JPEG, in random order
    final_sinc_prob: float = 0.8
    # The official pairs are stored as 8-bit PNGs, so the network only ever sees 8-bit LR, GT and
    # condition images; quantising here gives on-the-fly training the same inputs.
    quantize_uint8: bool = True

    def validate(self) -> None:
        if self.scale < 1:
            raise TrainConfigError(f"degradation.scale must be >= 1, got {self.scale}.")
        for name in ("kernel_list", "kernel_list2"):
            bad = [k for k in getattr(self, name) if k not in KERNEL_TYPES]
            if bad:
                raise TrainConfigError(f"degradation.{name} has unknown kernel types {bad}; allowed: {KERNEL_TYPES}.")
        for lst, prob in (("kernel_list", "kernel_prob"), ("kernel_list2", "kernel_prob2")):
            if len(getattr(self, lst)) != len(getattr(self, prob)):
                raise TrainConfigError(f"degradation.{prob} needs one probability per entry of degradation.{lst}.")
        for name in ("resize_prob", "resize_prob2"):
            if len(getattr(self, name)) != 3:
                raise TrainConfigError(f"degradation.{name} must be 3 probabilities (up, down, keep).")
        for size in self.kernel_sizes:
            if size % 2 != 1 or not 3 <= size <= 21:
                raise TrainConfigError(f"degradation.kernel_sizes must be odd sizes in [3, 21], got {size}.")
        for name in ("resize_range", "resize_range2"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= 1 <= hi:
                raise TrainConfigError(f"degradation.{name} must satisfy 0 < low <= 1 <= high, got {(lo, hi)}.")
        for name in ("jpeg_range", "jpeg_range2"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi <= 100:
                raise TrainConfigError(f"degradation.{name} must be qualities within [1, 100], got {(lo, hi)}.")


DEGRADATION_PRESETS: dict[str, dict[str, Any]] = {
    "seesr_training_pairs": {},
    "realesrgan_yml": dict(
        usm_sharpen_gt=False,  # commented out in RealESRGAN_degradation.degrade_process
        resize_range=(0.3, 1.5),
        noise_range=(1.0, 15.0),
        poisson_scale_range=(0.05, 2.0),
        jpeg_range=(60.0, 95.0),
        second_blur_prob=0.5,
        resize_range2=(0.6, 1.2),
        noise_range2=(1.0, 12.0),
        poisson_scale_range2=(0.05, 1.0),
        jpeg_range2=(60.0, 100.0),
    ),
}


# --------------------------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------------------------- #
@dataclass
class DataConfig:
    # "hr": HR images degraded on the fly; "paired": folders made offline (gt/ + sr_bicubic/ or lr/).
    source: str = "hr"
    hr_folders: tuple = ()
    paired_roots: tuple = ()
    # Tag sidecar: a folder of <stem>.txt (the official ``tag/`` layout) or a .json/.jsonl mapping
    # stem -> tags. For paired roots, <root>/tag is used when this is empty.
    tags: str = ""
    resolution: int = 512  # HR crop; the LR is resolution // degradation.scale
    null_text_ratio: float = 0.5  # official --null_text_ratio: empty prompt with this probability
    use_hflip: bool = True
    # Official RealESRGANDataset rejects images with fewer than 384*384 pixels or files < 100 KB.
    min_pixels: int = 384 * 384
    min_file_kb: float = 100.0
    extensions: tuple = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
    num_workers: int = 0  # official 0; any value is deterministic (per-sample seeds)
    degradation: DegradationConfig = field(default_factory=DegradationConfig)

    def validate(self) -> None:
        if self.source not in ("hr", "paired"):
            raise TrainConfigError(f"data.source must be 'hr' or 'paired', got {self.source!r}.")
        if self.resolution % 8 != 0:
            raise TrainConfigError(f"data.resolution must be a multiple of 8 (VAE), got {self.resolution}.")
        if self.resolution % self.degradation.scale != 0:
            raise TrainConfigError("data.resolution must be divisible by degradation.scale.")
        if not 0.0 <= self.null_text_ratio <= 1.0:
            raise TrainConfigError(f"data.null_text_ratio must be in [0, 1], got {self.null_text_ratio}.")
        self.degradation.validate()
        # The 21-tap reflect-padded blurs need more than 10 px after the strongest first-stage downscale.
        if self.resolution * self.degradation.resize_range[0] <= 11 or self.resolution // self.degradation.scale <= 11:
            raise TrainConfigError(
                f"data.resolution {self.resolution} is too small for the degradation blurs; use at least 128."
            )


# --------------------------------------------------------------------------------------------- #
# Models, optimisation, losses, discriminator
# --------------------------------------------------------------------------------------------- #
@dataclass
class ModelPaths:
    """Weight files; all user supplied, read through ``addsr_core.loading`` (never downloaded)."""

    sd2_base: str = ""  # SD2-base folder (VAE + text encoder + tokenizer)
    teacher: str = ""  # SeeSR folder (unet/ + controlnet/); the official teacher
    student: str = ""  # the student starts from SeeSR too (official)
    ram: str = ""  # ram_swin_large_14m.pth
    dape: str = ""  # DAPE.pth
    dino_vits16: str = ""  # dino_deitsmall16_pretrain.pth (discriminator features)
    dinov2_vits14: str = ""  # dinov2_vits14_pretrain.pth (LR condition for the discriminator)


@dataclass
class OptimizerConfig:
    """AdamW; the official uses the same values for the student and the discriminator heads."""

    lr: float = 2e-5
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-2
    max_grad_norm: Optional[float] = 1.0  # student only in the official; None disables clipping
    lr_scheduler: str = "constant"  # official default; the only schedule the official run uses

    def validate(self, name: str) -> None:
        if self.lr <= 0:
            raise TrainConfigError(f"{name}.lr must be > 0, got {self.lr}.")
        if self.lr_scheduler != "constant":
            raise TrainConfigError(f"{name}.lr_scheduler {self.lr_scheduler!r} is not supported; use 'constant'.")


@dataclass
class LossConfig:
    adv_weight: float = 0.02  # official: loss = distill + 0.02 * gan_loss
    # Timestep-adaptive weight 0.5 * 2.1**(s-1); see losses.ta_stage for s.
    ta_base: float = 0.5
    ta_growth: float = 2.1
    student_timesteps: tuple = (999, 749, 499, 249)
    # With this probability a batch trains the refining (two-step) path, else the single 999 step.
    two_step_prob: float = 0.5
    teacher_samples: int = 4  # teacher timesteps drawn per image (uniform in [0, 1000))
    r1_weight: float = 0.0  # official r1_lamda = 0 (R1 off)
    # The refined step's ControlNet condition: psr_condition_weight * decoded first-step prediction
    # + (1 - weight) * LR, in [0,1]. Official training uses the pure prediction (1.0), but passes it
    # in [-1,1] while inference passes [0,1]; we always use [0,1], as inference does.
    psr_condition_weight: float = 1.0


@dataclass
class DiscriminatorConfig:
    hooks: tuple = (2, 5, 8, 11)  # DINO ViT-S/16 blocks whose outputs feed heads 0..3
    hook_patch: bool = True  # head 4 reads the patch embedding (+ pos embed)
    c_dim: int = 384  # DINOv2 ViT-S/14 CLS width
    cmap_dim: int = 64
    diffaug: bool = True
    diffaug_policy: str = "translation,cutout"
    p_crop: float = 0.5  # random 224 crop with this probability when the image is larger
    cond_image_size: int = 518  # LR resized (bilinear) to this for DINOv2
    # The official feeds DINOv2 the [0,1] LR without ImageNet normalisation; True is our option.
    cond_imagenet_normalize: bool = False


@dataclass
class TrainingConfig:
    output_dir: str = "runs/addsr"
    seed: Optional[int] = None  # official None; resuming needs a seed, so we draw and record one
    batch_size: int = 2  # per device; the official hard-wires 2
    gradient_accumulation_steps: int = 2  # official README command and parser default
    max_train_steps: int = 50000
    checkpointing_steps: int = 5000
    checkpoints_total_limit: Optional[int] = None
    mixed_precision: str = "fp16"  # "no" | "fp16" | "bf16"
    gradient_checkpointing: bool = False  # official flag, off unless passed
    allow_tf32: bool = False
    # Official --trainable_modules: only these parts of the student are optimised.
    unet_trainable_suffixes: tuple = ("image_attentions",)
    controlnet_trainable_suffixes: tuple = ("image_attentions",)
    controlnet_trainable_prefixes: tuple = ("controlnet_cond_embedding",)
    ema_decay: float = 0.99
    # Distributed engine: plain torch.distributed launched by ``torchrun`` (the official script uses
    # Accelerate; we do not depend on it). One process per GPU; single process without torchrun.
    engine: str = "torchrun"
    report_to: str = "tensorboard"  # "tensorboard" or "none" (metrics.jsonl is always written)
    log_every: int = 10
    image_log_every: int = 500  # HR / condition / student images to TensorBoard (0: off)
    resume_from: str = ""  # "", "latest" or a checkpoint folder
    # Validation: upscale a few held-out LR images with the real sampler (EMA weights).
    validation_images: str = ""  # folder of LR images (or a single image); "" disables validation
    validation_steps: int = 1000
    validation_count: int = 4
    validation_sampler_steps: int = 4
    # Export at the end of training: EMA student in the release layout (+ packed single file).
    export_dtype: str = "fp16"  # fp16 | bf16 | fp32, for the packed file
    export_discriminator: bool = False

    def validate(self) -> None:
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise TrainConfigError(f"train.mixed_precision must be 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}.")
        if self.engine != "torchrun":
            raise TrainConfigError(
                f"train.engine must be 'torchrun' (plain torch.distributed; Accelerate is not used), got {self.engine!r}."
            )
        if self.report_to not in ("tensorboard", "none"):
            raise TrainConfigError(f"train.report_to must be 'tensorboard' or 'none', got {self.report_to!r}.")
        if self.export_dtype not in ("fp16", "bf16", "fp32"):
            raise TrainConfigError(f"train.export_dtype must be fp16, bf16 or fp32, got {self.export_dtype!r}.")
        if not 1 <= self.validation_sampler_steps <= 4:
            raise TrainConfigError("train.validation_sampler_steps must be 1..4.")
        for name in ("batch_size", "gradient_accumulation_steps", "max_train_steps", "checkpointing_steps"):
            if getattr(self, name) < 1:
                raise TrainConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise TrainConfigError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}.")


@dataclass
class AddSRTrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    models: ModelPaths = field(default_factory=ModelPaths)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    disc_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(max_grad_norm=None))
    loss: LossConfig = field(default_factory=LossConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    train: TrainingConfig = field(default_factory=TrainingConfig)

    def validate(self) -> "AddSRTrainConfig":
        self.data.validate()
        self.optimizer.validate("optimizer")
        self.disc_optimizer.validate("disc_optimizer")
        self.train.validate()
        if not 0.0 <= self.loss.two_step_prob <= 1.0:
            raise TrainConfigError("loss.two_step_prob must be in [0, 1].")
        if not 0.0 <= self.loss.psr_condition_weight <= 1.0:
            raise TrainConfigError("loss.psr_condition_weight must be in [0, 1].")
        if self.loss.teacher_samples < 1:
            raise TrainConfigError("loss.teacher_samples must be >= 1.")
        return self

    def to_dict(self) -> dict:
        return _to_plain(dataclasses.asdict(self))


# --------------------------------------------------------------------------------------------- #
# (de)serialisation
# --------------------------------------------------------------------------------------------- #
def _to_plain(obj):
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def _coerce(value, hint, where: str):
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _from_dict(hint, value, where)
    if origin is Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in get_args(hint) if a is not type(None)]
        return _coerce(value, inner[0], where)
    if hint is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TrainConfigError(f"{where} must be a list, got {value!r}.")
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TrainConfigError(f"{where} must be a number, got {value!r}.")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TrainConfigError(f"{where} must be an integer, got {value!r}.")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise TrainConfigError(f"{where} must be true or false, got {value!r}.")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise TrainConfigError(f"{where} must be a string, got {value!r}.")
        return value
    return value


def _from_dict(cls, data: Mapping[str, Any] | None, where: str):
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise TrainConfigError(f"{where or 'config'} must be a mapping, got {data!r}.")
    data = dict(data)
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise TrainConfigError(f"Unknown key(s) {unknown} in {where or 'config'}; allowed: {names}.")
    base = cls()
    if cls is DegradationConfig:
        preset = data.get("preset", base.preset)
        if preset not in DEGRADATION_PRESETS:
            raise TrainConfigError(
                f"Unknown degradation preset {preset!r}; choose one of {sorted(DEGRADATION_PRESETS)}."
            )
        base = dataclasses.replace(base, preset=preset, **DEGRADATION_PRESETS[preset])
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return dataclasses.replace(base, **kwargs)


def config_from_dict(data: Mapping[str, Any]) -> AddSRTrainConfig:
    return _from_dict(AddSRTrainConfig, data, "").validate()


def load_config(path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None) -> AddSRTrainConfig:
    """Read a ``.yaml``/``.yml``/``.json`` config (or the defaults when ``path`` is None).

    ``overrides`` is a nested mapping merged on top, e.g. ``{"train": {"batch_size": 4}}``.
    """
    data: dict = {}
    if path is not None:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise TrainConfigError(f"Config file not found: {path!r}.")
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
        if path.lower().endswith((".yaml", ".yml")):
            try:
                import yaml
            except ImportError as err:  # pragma: no cover - depends on the environment
                raise TrainConfigError(
                    "Reading a YAML config needs PyYAML: pip install 'addsr-diffusion-sr[train]' "
                    "(or pyyaml), or use the .json form of the config."
                ) from err
            data = yaml.safe_load(text) or {}
        elif path.lower().endswith(".json"):
            data = json.loads(text)
        else:
            raise TrainConfigError(f"Config {path!r} must end in .yaml, .yml or .json.")
        if not isinstance(data, dict):
            raise TrainConfigError(f"Config {path!r} must hold a mapping at the top level.")
    if overrides:
        data = _deep_merge(data, overrides)
    return config_from_dict(data)


def _deep_merge(base: Mapping, extra: Mapping) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict:
    """``"train.batch_size=4"`` -> ``{"train": {"batch_size": 4}}`` (value parsed as JSON if it can be)."""
    if "=" not in text:
        raise TrainConfigError(f"Override {text!r} must look like section.key=value.")
    dotted, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    out: dict = {}
    node = out
    parts = dotted.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out
