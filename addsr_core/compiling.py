"""``torch.compile`` for the UNet and ControlNet: an opt-in switch, off by default.

- ``off``: eager PyTorch (the default).
- ``inductor``: ``torch.compile`` with the inductor backend.
- ``freezing``: the same with inductor's freezing (the weights become constants, so their layout
  is prepared once: oneDNN weight prepacking on a CPU). It sets ``torch._inductor.config.freezing``
  for the whole process, and needs the networks frozen (no gradients), as inference has them.

The first call of each input shape compiles (minutes on a CPU); later calls of that shape reuse it.
On a CPU it does not pay within one image (docs/performance.md: a steady call gains 3-11 %, the
first call compiles for 1-2.5 min, repaid after ~40 calls of one shape): it is offered for long
batches of one tile size. Unmeasured on a GPU.
The module keeps its class and attributes (``nn.Module.compile``): loaders, hosts and tests see the
same network.
"""
from __future__ import annotations

from torch import nn

from .errors import OptionsError

COMPILE_MODES = ("off", "inductor", "freezing")


def compile_network(module: nn.Module, mode: str = "off") -> nn.Module:
    """Compile ``module``'s forward in place (``mode`` in COMPILE_MODES) and return it."""
    if mode not in COMPILE_MODES:
        raise OptionsError(f"unknown compile mode {mode!r}: use one of {', '.join(COMPILE_MODES)}")
    if mode == "off":
        return module
    if mode == "freezing":
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        module.requires_grad_(False)
    module.compile(backend="inductor")
    return module


def compile_models(models, mode: str = "off"):
    """The denoiser's networks (UNet and ControlNet) of an ``AddSRModels``, compiled in place."""
    for network in (models.unet, models.controlnet):
        compile_network(network, mode)
    return models
