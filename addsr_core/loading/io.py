"""Safe reading of checkpoint files and strict, copy-free loading into modules.

Only two readers exist: safetensors, and ``torch.load(weights_only=True)``. Nothing here can
execute a pickle's code.
"""
from __future__ import annotations

import os
import zipfile
from typing import Iterable, Mapping

import torch
from torch import nn

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, with a message that says what to do about it."""


def _describe_keys(keys: Iterable[str], limit: int = 20) -> str:
    keys = sorted(keys)
    shown = "\n    ".join(keys[:limit])
    more = f"\n    ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"\n    {shown}{more}"


def read_state_dict(
    path: str | os.PathLike,
    *,
    family: str = "model",
    dtype: torch.dtype | None = None,
    prefixes: tuple[str, ...] | None = None,
) -> dict[str, torch.Tensor]:
    """Read every tensor of a checkpoint file onto the CPU, safely.

    ``.safetensors`` files are read tensor by tensor (cast to ``dtype`` on the way, so an fp32 file
    loaded as fp16 never exists twice in memory, and ``prefixes`` reads only the matching part of a
    big single-file checkpoint); ``.pth/.pt/.bin/.ckpt`` go through
    ``torch.load(weights_only=True, mmap=True)`` so a malicious pickle is refused, not run.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{family} checkpoint not found: {path!r}. Check the path, or download the file first.")
    lower = path.lower()
    try:
        if lower.endswith(SAFETENSORS_SUFFIXES):
            return _read_safetensors(path, dtype, prefixes)
        if lower.endswith(PICKLE_SUFFIXES):
            return _torch_load_weights_only(path)
    except CheckpointError:
        raise
    except Exception as err:  # torn downloads surface as many different exception types
        raise CheckpointError(
            f"Could not read the {family} checkpoint {path!r}: {type(err).__name__}: {err}. "
            "The file is probably truncated or corrupt (an interrupted download?): download it again."
        ) from err
    raise CheckpointError(
        f"Unsupported checkpoint extension for {path!r}: expected one of "
        f"{SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES}."
    )


def _read_safetensors(path: str, dtype: torch.dtype | None, prefixes) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    out = {}
    with safe_open(path, framework="pt", device="cpu") as f:
        for key in f.keys():
            if prefixes is not None and not key.startswith(prefixes):
                continue
            tensor = f.get_tensor(key)
            out[key] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    return out


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt", device="cpu") as f:
        return dict(f.metadata() or {})


def _torch_load_weights_only(path: str) -> dict:
    mmap = zipfile.is_zipfile(path)  # mmap needs the zip format; legacy pickles load plainly
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise CheckpointError(
                f"{path!r} contains Python objects that are not plain tensors, and loading it would "
                f"mean executing its pickle, which we never do. Details: {err}. If you trust the file, "
                "convert it to .safetensors with our converter first."
            ) from err
        raise


def unwrap_state_dict(obj: Mapping) -> dict[str, torch.Tensor]:
    """Strip the containers training frameworks wrap around a state dict."""
    for key in ("state_dict", "model", "module", "params_ema"):
        inner = obj.get(key) if isinstance(obj, Mapping) else None
        if isinstance(inner, Mapping) and inner and all(isinstance(k, str) for k in inner):
            if any(isinstance(v, torch.Tensor) for v in inner.values()):
                return unwrap_state_dict(inner)
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def check_state_dict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    family: str,
    source: str,
    ignore_unexpected: Iterable[str] = (),
) -> None:
    """Raise a CheckpointError naming every missing, unexpected or misshapen key."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict(keep_vars=True).items()}
    ignore = tuple(ignore_unexpected)
    got = {k: tuple(v.shape) for k, v in state_dict.items() if not (ignore and k.startswith(ignore))}
    missing = expected.keys() - got.keys()
    unexpected = got.keys() - expected.keys()
    misshapen = [f"{k}: file {got[k]} vs model {expected[k]}" for k in expected.keys() & got.keys() if got[k] != expected[k]]
    if not (missing or unexpected or misshapen):
        return
    parts = [f"{source!r} does not match the expected {family} layout."]
    if missing:
        parts.append(f"Missing {len(missing)} keys:{_describe_keys(missing)}")
    if unexpected:
        parts.append(f"Unexpected {len(unexpected)} keys:{_describe_keys(unexpected)}")
    if misshapen:
        parts.append(f"Wrong shapes for {len(misshapen)} keys:{_describe_keys(misshapen)}")
    if len(missing) > 0.5 * len(expected):
        parts.append(f"Most keys are missing: this file is probably not a {family} checkpoint; pick the right file.")
    raise CheckpointError("\n".join(parts))


def assign_state_dict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    family: str,
    source: str,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Strictly load ``state_dict`` into a (usually meta-device) module without a second copy.

    Tensors are cast one at a time and assigned in place of the module's own parameters, so peak
    memory is one copy of the weights plus one tensor.
    """
    check_state_dict(module, state_dict, family=family, source=source)
    converted = {}
    state_dict = dict(state_dict)
    for key in list(state_dict.keys()):
        tensor = state_dict.pop(key)  # drop our reference as we go: one copy at a time
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        if device is not None:
            tensor = tensor.to(device)
        converted[key] = tensor
    module.load_state_dict(converted, strict=True, assign=True)
    # Non-persistent buffers built on meta (if any) must be materialised by the module itself.
    for name, buf in module.named_buffers():
        if buf.is_meta:
            raise CheckpointError(f"internal: buffer {name} of {family} stayed on the meta device")
    return module
