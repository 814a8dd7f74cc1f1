"""What the file commands (``upscale``, ``tag``) share: their error, the files they take, the device,
the torchrun shard and the resumable job list."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import AddSRError
from .precision import resolve_precision

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
DTYPES = ("auto", "fp32", "fp16", "bf16")


class CLIError(AddSRError):
    """A user-facing problem: printed without a traceback, exit code 2."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise CLIError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda asked for, but this torch has no CUDA (or no GPU is visible)")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """--dtype: auto is the device policy of :mod:`.precision` (fp32 where low precision is not fast)."""
    return resolve_precision(name, device).dtype


def rank_shard() -> tuple[int, int]:
    """(rank, world size) when started by torchrun (it sets RANK and WORLD_SIZE), else (0, 1)."""
    try:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise CLIError("RANK and WORLD_SIZE must be integers (they are set by torchrun)") from None
    if world < 1 or not 0 <= rank < world:
        raise CLIError(f"RANK {rank} is not within WORLD_SIZE {world}")
    return rank, world


def plan_jobs(source: Path, output: Path, overwrite: bool, suffix: str = ".png",
              shard: tuple[int, int] = (0, 1)) -> list[tuple[Path, Path]]:
    """(input, output) pairs; existing outputs are skipped so a killed batch resumes.

    ``shard`` (rank, world): every world-th file of the sorted list, taken BEFORE the resume filter, so
    which rank owns a file never depends on what the other ranks have already written."""
    if not source.exists():
        raise CLIError(f"input {str(source)!r} does not exist")
    if source.is_file():
        if source.suffix.lower() not in IMAGE_SUFFIXES:
            raise CLIError(f"{source.name} is not a supported image ({', '.join(sorted(IMAGE_SUFFIXES))})")
        target = output / (source.stem + suffix) if output.is_dir() else output
        jobs = [(source, target)]
    else:
        if output.exists() and not output.is_dir():
            raise CLIError(f"input is a folder, so --output must be a folder, not the file {str(output)!r}")
        files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise CLIError(f"no images in {str(source)!r}")
        jobs = [(p, output / (p.stem + suffix)) for p in files]
    rank, world = shard
    return [(src, dst) for src, dst in jobs[rank::world] if overwrite or not dst.exists()]


def write_atomically(path: Path, write) -> None:
    """``write(tmp)`` to a temporary name beside ``path``, then renamed: a killed run never leaves a
    half-written output that resume would skip."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + (".partial" + path.suffix if path.suffix == ".png" else ".partial"))
    write(tmp)
    os.replace(tmp, path)
