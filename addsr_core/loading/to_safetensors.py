"""A ``.safetensors`` copy of a plain-weights ``.pth``/``.ckpt`` (RAM, DAPE, StableSR, CFW).

The pickle is read by the safe reader our loaders use (``torch.load(weights_only=True)`` with
Lightning's metadata made inert) and only its tensors are written: the state dict unwrapped from
its training containers, names and dtypes as stored; the metadata our own pickles carry (the tiny
StableSR files' head layout) goes into the safetensors metadata. Every loader that takes the
original takes the copy, so keep its stem: names still tell ``*768*`` (v-prediction) apart.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .io import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, CheckpointError
from .lightning import read_checkpoint_with_metadata


def default_output(source: str | os.PathLike) -> Path:
    return Path(source).with_suffix(".safetensors")


def write_safetensors_copy(source: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """Write the tensors of ``source`` to ``output`` (default: beside it, ``.safetensors``)."""
    from safetensors.torch import save_file

    source = Path(source)
    output = Path(output) if output is not None else default_output(source)
    if source.suffix.lower() not in PICKLE_SUFFIXES:
        raise CheckpointError(f"{str(source)!r} is not a pickled checkpoint ({', '.join(PICKLE_SUFFIXES)}); nothing to convert.")
    if output.suffix.lower() not in SAFETENSORS_SUFFIXES:
        raise CheckpointError(f"the copy must be named *.safetensors, not {output.name!r}")
    tensors, metadata = read_checkpoint_with_metadata(source, family="pickled")  # our files' metadata (StableSR heads)
    if not tensors:
        raise CheckpointError(f"{str(source)!r} holds no tensors.")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")  # never leave a torn copy under the real name
    save_file(_unshared(tensors), str(tmp), metadata={**metadata, "converted_from": source.name})
    os.replace(tmp, output)
    return output


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied weights, views of one buffer): the
    first keeps the storage, the others get their own contiguous copy."""
    seen, out = set(), {}
    for key, tensor in tensors.items():
        storage = tensor.untyped_storage().data_ptr()
        shared = storage in seen and tensor.numel() > 0
        out[key] = tensor.clone(memory_format=torch.contiguous_format) if shared else tensor.contiguous()
        seen.add(storage)
    return out
