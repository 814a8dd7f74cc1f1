"""Safe reading of checkpoint files and strict, copy-free loading into modules.

Only two readers exist: safetensors, and ``torch.load(weights_only=True)``. Nothing here can
execute a pickle's code.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import zipfile
from typing import Iterable, Mapping

import torch
from torch import nn

from ..errors import AddSRError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


class CheckpointError(AddSRError, RuntimeError):
    """A checkpoint that cannot be used, with a message that says what to do about it."""


REDOWNLOAD_HINT = "Re-download it; a partial download is the usual cause; check its size against the source."
# For a pickle refused for holding code: the file itself is suspect, so never advise loading it anyway.
GENUINE_RELEASE_HINT = ("A genuine release file holds only weights: download the official file again, or use a "
                        ".safetensors copy (`python -m addsr_core convert safetensors` makes one from a trusted "
                        "plain-weights .pth/.ckpt, not from this file).")
_MAX_SAFETENSORS_HEADER = 100 << 20  # safetensors' own limit on the JSON header


def _named(path: str, family: str | None) -> str:
    return f"The {family} checkpoint {path!r}" if family else repr(path)


def require_file(path: str, family: str) -> None:
    if not os.path.isfile(path):
        raise CheckpointError(f"{family} checkpoint not found: {path!r}. Check the path, or download the file first.")


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
    require_file(path, family)
    lower = path.lower()
    try:
        if lower.endswith(SAFETENSORS_SUFFIXES):
            return _read_safetensors(path, dtype, prefixes, family)
        if lower.endswith(PICKLE_SUFFIXES):
            return read_pickle_weights_only(path, family)
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


def _read_safetensors(path: str, dtype: torch.dtype | None, prefixes, family: str) -> dict[str, torch.Tensor]:
    out = {}
    with open_safetensors(path, family=family) as f:
        for key in f.keys():
            if prefixes is not None and not key.startswith(prefixes):
                continue
            tensor = f.get_tensor(key)
            out[key] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    return out


def read_safetensors_metadata(path: str | os.PathLike, *, family: str | None = None) -> dict[str, str]:
    with open_safetensors(path, family=family) as f:
        return dict(f.metadata() or {})


@contextlib.contextmanager
def open_safetensors(path: str | os.PathLike, *, family: str | None = None):
    """``safe_open`` on the CPU; a file that is not valid safetensors (here or while reading its
    tensors) raises a CheckpointError naming it and what to do, instead of safetensors' bare
    "Error while deserializing header"."""
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            yield f
    except SafetensorError as err:
        raise CheckpointError(
            f"{_named(path, family)} is not a valid .safetensors file ({_safetensors_problem(path, err)}). "
            f"{REDOWNLOAD_HINT}"
        ) from None


def _safetensors_problem(path: str, err: Exception) -> str:
    """Why ``path`` is not safetensors, read off its size and header (safetensors' own words last)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else None
        header = f.read(length) if length is not None and length <= _MAX_SAFETENSORS_HEADER else b""
    if size == 0:
        return "empty: the file is 0 bytes"
    if head.startswith(b"version "):
        return "not safetensors: a Git LFS pointer (a small text file), not the weights"
    if head.lstrip().startswith(b"<"):
        return "not safetensors: a web page (HTML), not the weights"
    if length is None:
        return f"truncated: only {size} bytes"
    if length > _MAX_SAFETENSORS_HEADER:
        return "not safetensors: it does not start with a safetensors header"
    if 8 + length > size:
        return f"truncated: {size:,} bytes, it ends inside its own {length:,}-byte header"
    try:
        entries = json.loads(header)
        end = max((v["data_offsets"][1] for k, v in entries.items() if k != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return "not safetensors: its header is not valid safetensors JSON"
    if 8 + length + end > size:
        return f"truncated: {size:,} bytes, its header describes {8 + length + end:,}"
    return "not safetensors: " + str(err).removeprefix("Error while deserializing header: ")


def read_pickle_weights_only(path: str, family: str, safe_globals=()):
    """``torch.load(weights_only=True)`` (``safe_globals``: extra (class, pickled name) stand-ins).

    Whatever fails becomes a CheckpointError of our own words only: torch's message on a refused
    file advises loading it with ``weights_only=False``, i.e. running the file's code."""
    mmap = zipfile.is_zipfile(path)  # mmap needs the zip format; legacy pickles load plainly
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:
        raise _pickle_error(path, family, err) from None


_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+)")


def _pickle_error(path: str, family: str, err: Exception) -> CheckpointError:
    refused = _REFUSED_GLOBAL.search(str(err))
    if refused:
        return CheckpointError(
            f"{_named(path, family)} was not loaded: it contains the Python object `{refused.group(1)}`, and "
            f"loading it would mean running code from the file, which we never do. {GENUINE_RELEASE_HINT}"
        )
    return CheckpointError(
        f"{_named(path, family)} is not a readable PyTorch checkpoint ({_pickle_problem(path, err)}); it is "
        f"probably truncated or corrupt. {REDOWNLOAD_HINT}"
    )


def _pickle_problem(path: str, err: Exception) -> str:
    """torch's reason in a few words, never its advice."""
    if os.path.getsize(path) == 0:
        return "empty: the file is 0 bytes"
    text = str(err)
    if "Weights only load failed" in text:  # torch's wrapper: only the unpickler's own error is kept
        text = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text else ""
    reason = text.strip().split("\n", 1)[0].split(". ", 1)[0].strip()
    if "safe_globals" in reason or "weights_only" in reason:
        return "it holds objects other than tensors"
    return reason or type(err).__name__


def unwrap_state_dict(obj: Mapping) -> dict[str, torch.Tensor]:
    """Strip the containers training frameworks wrap around a state dict."""
    for key in ("state_dict", "model", "module", "params_ema"):
        inner = obj.get(key) if isinstance(obj, Mapping) else None
        if isinstance(inner, Mapping) and inner and all(isinstance(k, str) for k in inner):
            if any(isinstance(v, torch.Tensor) for v in inner.values()):
                return unwrap_state_dict(inner)
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def expected_layout(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every key a strict load of ``module`` needs, with its shape, read off the layers themselves.

    Mostly what ``state_dict()`` lists. But a host may build layers without weights until they are
    loaded (ComfyUI's ``comfy.ops`` Linear under DynamicVRAM: ``weight`` and ``bias`` are None until
    ``load_state_dict``), and ``state_dict()`` leaves those out; their shapes come from the layer's
    own sizes.
    """
    layout = {k: tuple(v.shape) for k, v in module.state_dict(keep_vars=True).items()}
    for name, layer in module.named_modules():
        if isinstance(layer, nn.Linear) and layer.weight is None:
            prefix = f"{name}." if name else ""
            layout[prefix + "weight"] = (layer.out_features, layer.in_features)
            if getattr(layer, "comfy_need_lazy_init_bias", False):
                layout[prefix + "bias"] = (layer.out_features,)
    return layout


def check_state_dict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    family: str,
    source: str,
    ignore_unexpected: Iterable[str] = (),
) -> None:
    """Raise a CheckpointError naming every missing, unexpected or misshapen key."""
    expected = expected_layout(module)
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
    # Non-persistent buffers built on meta (if any) must be materialised by the module itself, and
    # layers built without weights (see expected_layout) must have received theirs.
    for name, tensor in [*module.named_buffers(), *module.named_parameters()]:
        if tensor.is_meta:
            raise CheckpointError(f"internal: {name} of {family} stayed on the meta device")
    unloaded = sorted(set(expected_layout(module)) - set(module.state_dict(keep_vars=True)))
    if unloaded:
        raise CheckpointError(f"internal: {family} layers got no weights: {unloaded[:5]}")
    return module
