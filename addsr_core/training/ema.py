"""Exponential moving average of the trainable parameters (official decay 0.99).

Like the official ``EMA`` it tracks only parameters with ``requires_grad`` at creation time and
updates ``shadow = decay * shadow + (1 - decay) * param``. Differences: the shadow is kept in
float32 whatever the parameter dtype, ``update`` is meant to be called once per optimiser step (the
official calls it every micro-batch, so with accumulation 2 it updates twice per step), and it has
a state dict for resuming.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.99):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}.")
        self.decay = decay
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        if not self.names:
            raise ValueError("EMA: the model has no trainable parameters; set requires_grad before creating the EMA.")
        params = dict(model.named_parameters())
        self.shadow = {n: params[n].detach().float().clone() for n in self.names}

    def _params(self, model: nn.Module) -> list[torch.Tensor]:
        params = dict(model.named_parameters())
        missing = [n for n in self.names if n not in params]
        if missing:
            raise KeyError(f"EMA: the model lacks tracked parameters {missing[:5]} (wrong model?).")
        return [params[n] for n in self.names]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for n, p in zip(self.names, self._params(model)):
            self.shadow[n].lerp_(p.detach().float(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for p, n in zip(self._params(model), self.names):
            p.copy_(self.shadow[n].to(p.dtype))

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily swap the EMA weights into ``model`` (e.g. to export or validate)."""
        params = self._params(model)
        backup = [p.detach().clone() for p in params]
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for p, b in zip(params, backup):
                    p.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        missing = set(self.names) - set(state)
        unexpected = set(state) - set(self.names)
        if missing or unexpected:
            raise KeyError(f"EMA state mismatch: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}.")
        for n in self.names:
            if state[n].shape != self.shadow[n].shape:
                raise ValueError(f"EMA state {n}: shape {tuple(state[n].shape)} != {tuple(self.shadow[n].shape)}.")
            self.shadow[n].copy_(state[n])
