"""Building blocks of AddSR's adversarial diffusion distillation training (issue: ADD trainer).

- ``config``: dataclass config with the official ``train_addsr.py`` defaults, YAML/JSON loading.
- ``degradation`` (+ ``kernels``, ``jpeg``): Real-ESRGAN second-order degradation, seeded.
- ``data``: HR-folder (on-the-fly) and paired-folder datasets, tags, resumable sampler.
- ``vit``: DINO ViT-S/16 and DINOv2 ViT-S/14 in the released key layouts.
- ``discriminator`` (+ ``augment``): projected discriminator with DiffAugment, LR condition encoder.
- ``losses``: TA weights, sqrt(alpha_bar)-weighted distillation, hinge, R1, timestep draws.
- ``ema``, ``checkpoint``: EMA of trainable weights; atomic checkpoints with exact resume.

Nothing here imports ComfyUI; the training loop itself lives in ``training/`` at the repo root.
"""
from .config import AddSRTrainConfig, TrainConfigError, load_config

__all__ = ["AddSRTrainConfig", "TrainConfigError", "load_config"]
