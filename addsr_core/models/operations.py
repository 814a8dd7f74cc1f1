"""The ``operations`` hook: which layer classes the networks are built from.

Every network (UNet, ControlNet, VAE, RAM/DAPE, StableSR's model and CFW VAE) takes an
``operations`` namespace and builds its layers as ``operations.Conv2d(...)``,
``operations.Linear(...)``, ``operations.GroupNorm(...)``, ``operations.LayerNorm(...)`` and
``operations.Conv1d(...)``, as ComfyUI's own models do (``comfy.ops``). The default is
:mod:`torch.nn` itself, so the library behaves exactly as before. A host with its own memory
management passes its layer classes (ComfyUI: ``comfy.ops.disable_weight_init`` /
``manual_cast``): they subclass torch.nn's, keep the same parameters and state-dict keys, and can
run with their weights left on another device (cast to the input's device per forward).

Raw parameters and buffers outside those layers (Swin's position-bias table, RAM's label
embedding, the Swin masks) are moved to the input's device where they are used, so a partially
loaded network still runs.
"""
from __future__ import annotations

import torch
from torch import nn


def resolve_operations(operations=None):
    """``operations`` or, for None, :mod:`torch.nn`."""
    return nn if operations is None else operations


def compute_device(module: nn.Module) -> torch.device:
    """Where to run ``module``'s forward: the device its host loaded it for, else its weights' device.

    ComfyUI's ModelPatcher records the load device as ``module.device`` (and the offload device
    when it unloads); under a partial (lowvram) load some weights stay on the offload device, so
    the first parameter's device would be the wrong answer there. Without such a host this is
    simply where the first parameter lives.
    """
    device = module.__dict__.get("device")
    if isinstance(device, torch.device):
        return device
    return next(module.parameters()).device
