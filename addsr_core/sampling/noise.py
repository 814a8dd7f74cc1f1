"""Where the sampler's random draws come from: a seeded generator, or a recording to replay."""
from __future__ import annotations

from typing import Mapping, Protocol

import torch


class NoiseSource(Protocol):
    def draw(self, name: str, shape, *, device, dtype) -> torch.Tensor: ...


class SeededNoise:
    """Every draw from one generator seeded by the user.

    The official pipeline takes only the initial noise from the user's generator and the rest from
    torch's global RNG, so its results depend on whatever ran before. Ours are a pure function of
    the seed. Draws are made on the CPU so a seed gives the same image on every device.

    ``separate`` names draws taken from a second generator seeded with the same seed. SeeSR's
    pipeline takes its VAE posterior sample from the global RNG (which its script seeds with the
    same seed) and everything else from the user's generator; keeping them apart leaves our
    generator stream equal to the official one, draw for draw.
    """

    def __init__(self, seed: int, separate: tuple = ()):
        self.generator = torch.Generator("cpu").manual_seed(int(seed))
        self.side = torch.Generator("cpu").manual_seed(int(seed)) if separate else None
        self.separate = frozenset(separate)

    def draw(self, name, shape, *, device, dtype):
        generator = self.side if name in self.separate else self.generator
        return torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)


class ReplayNoise:
    """Replays recorded draws by name (the parity fixtures' ``rng.*`` tensors)."""

    def __init__(self, draws: Mapping[str, torch.Tensor]):
        self.draws = dict(draws)

    def draw(self, name, shape, *, device, dtype):
        if name not in self.draws:
            raise KeyError(f"no recorded draw named {name!r}; have {sorted(self.draws)}")
        tensor = self.draws[name]
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"recorded draw {name!r} has shape {tuple(tensor.shape)}, sampler needs {tuple(shape)}")
        return tensor.to(device=device, dtype=dtype)
