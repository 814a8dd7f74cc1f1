"""Reading Lightning ``.ckpt`` pickles (StableSR's releases) safely, without running them, and the
metadata our own files carry.

``torch.load(weights_only=True)`` refuses the non-tensor objects Lightning stores next to the
weights (the ModelCheckpoint callback class used as a dict key, numpy scalars in its state,
``argparse.Namespace`` hyper-parameters, paths). We allow exactly those names, each mapped to an
inert stand-in that accepts any constructor arguments and state and does nothing; every other
global (``os.system``, ``builtins.eval``, ...) is still refused by torch's weights-only unpickler
and reported as a :class:`CheckpointError`. Only the tensors of the state dict are kept.
"""
from __future__ import annotations

import os
from typing import Mapping

import torch

from .io import (
    PICKLE_SUFFIXES,
    read_pickle_weights_only,
    read_safetensors_metadata,
    read_state_dict,
    require_file,
    unwrap_state_dict,
)

# Our own pickles keep their metadata strings (safetensors keeps them in its header) here, beside
# Lightning's "state_dict": a plain dict, so the weights-only reader takes it as it is.
PICKLE_METADATA_KEY = "addsr_metadata"


class InertObject:
    """Stands in for an allow-listed non-tensor object: swallows arguments and state."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __repr__(self):
        return f"<inert {self._pickled_name}>"


# Training-run metadata found in Lightning checkpoints of the LDM era. Nothing here is needed.
LIGHTNING_ALLOWED_GLOBALS = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
    "pytorch_lightning.callbacks.lr_monitor.LearningRateMonitor",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning_fabric.utilities.data.AttributeDict",
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "argparse.Namespace",
    "pathlib.PosixPath",
    "pathlib.WindowsPath",
    "pathlib.PurePosixPath",
    "pathlib.PureWindowsPath",
    "numpy.dtype",
    "numpy.ndarray",
    "numpy.core.multiarray.scalar",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray.scalar",
    "numpy._core.multiarray._reconstruct",
    *(f"numpy.dtypes.{name}DType" for name in (
        "Float64", "Float32", "Float16", "Int64", "Int32", "Int16", "Int8", "UInt64", "UInt32", "UInt16", "UInt8", "Bool",
    )),
)


def _stand_ins() -> list[tuple[type, str]]:
    return [(type(name.rsplit(".", 1)[1], (InertObject,), {"_pickled_name": name}), name) for name in LIGHTNING_ALLOWED_GLOBALS]


def load_lightning_checkpoint(path: str | os.PathLike, *, family: str = "StableSR") -> dict:
    """The whole pickled object of a ``.ckpt``/``.pth``, with allow-listed metadata made inert."""
    path = os.fspath(path)
    require_file(path, family)
    return read_pickle_weights_only(path, family, safe_globals=_stand_ins())


def read_checkpoint(path: str | os.PathLike, *, family: str = "StableSR", dtype=None, prefixes=None) -> dict[str, torch.Tensor]:
    """Flat tensor state dict of a safetensors file or a (Lightning) pickle, read safely."""
    if os.fspath(path).lower().endswith(PICKLE_SUFFIXES):
        return unwrap_state_dict(load_lightning_checkpoint(path, family=family))
    return unwrap_state_dict(read_state_dict(path, family=family, dtype=dtype, prefixes=prefixes))


def read_checkpoint_with_metadata(
    path: str | os.PathLike, *, family: str = "StableSR", dtype=None, prefixes=None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """:func:`read_checkpoint` plus the file's metadata (:mod:`.metadata`), the file read once:
    the safetensors header's, or a pickle's ``"addsr_metadata"`` strings; {} for the releases."""
    if os.fspath(path).lower().endswith(PICKLE_SUFFIXES):
        obj = load_lightning_checkpoint(path, family=family)
        return unwrap_state_dict(obj), pickle_metadata(obj)
    tensors = unwrap_state_dict(read_state_dict(path, family=family, dtype=dtype, prefixes=prefixes))
    return tensors, read_file_metadata(path)


def pickle_metadata(obj) -> dict[str, str]:
    """The ``"addsr_metadata"`` strings of a loaded pickle ({} when it has none: the releases)."""
    meta = obj.get(PICKLE_METADATA_KEY) if isinstance(obj, Mapping) else None
    if not isinstance(meta, Mapping):
        return {}
    return {k: v for k, v in meta.items() if isinstance(k, str) and isinstance(v, str)}


def read_file_metadata(path: str | os.PathLike, obj=None) -> dict[str, str]:
    """A file's metadata: the safetensors header's, or (given the loaded pickle ``obj``) the pickle's."""
    if os.fspath(path).lower().endswith(PICKLE_SUFFIXES):
        return pickle_metadata(obj) if obj is not None else {}
    return read_safetensors_metadata(path)
