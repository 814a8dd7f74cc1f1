"""Crash-safe training checkpoints and exact resume.

Layout of ``<output_dir>/checkpoint-<step>/``::

    model_<name>.safetensors   every model's state dict (student UNet/ControlNet, discriminator heads)
    ema_<name>.safetensors     EMA shadows (float32)
    training_state.pt          optimiser and grad-scaler states, RNG states: plain tensors/containers
                               only, read back with torch.load(weights_only=True)
    state.json                 step, user extras (sampler position, config), file sizes

Atomicity: everything is written into a hidden ``.checkpoint-<step>.tmp-*`` directory, flushed to
disk, then renamed into place in one ``os.replace``; the ``latest`` pointer file is replaced
atomically after that. A crash or kill at any moment leaves either the previous checkpoint or the
new complete one, never a half-written directory under a real name; leftovers are removed by the
next save.

RNG: Python ``random``, NumPy's global generator, torch CPU, every CUDA device and any named
``torch.Generator`` are captured, so a resumed run draws exactly what the uninterrupted run would.
Multi-process runs gather each rank's ``capture_rng_state()`` on the main process and pass the list
as ``rng_states``; ``load_checkpoint(rank=...)`` restores the rank's own entry.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import safetensors.torch
import torch
from torch import nn

from ..loading.io import CheckpointError, check_state_dict, read_pickle_weights_only, read_state_dict
from .ema import EMA

CHECKPOINT_PREFIX = "checkpoint-"
LATEST_FILE = "latest"
STATE_FILE = "state.json"
TRAINING_STATE_FILE = "training_state.pt"
FORMAT = "addsr-training-checkpoint"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------- #
# RNG
# --------------------------------------------------------------------------------------------- #
def capture_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict:
    """Every random state of this process, as weights_only-loadable containers."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    return state


def restore_rng_state(state: Mapping, generators: Mapping[str, torch.Generator] | None = None) -> None:
    random.setstate(_as_python_random_state(state["python"]))
    npst = state["numpy"]
    np.random.set_state(
        (npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    torch.set_rng_state(state["torch_cpu"])
    cuda = state.get("torch_cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            raise CheckpointError(
                f"The checkpoint holds RNG states for {len(cuda)} CUDA devices but {torch.cuda.device_count()} are "
                "visible; resume with the same devices (CUDA_VISIBLE_DEVICES) for an exact continuation."
            )
        torch.cuda.set_rng_state_all(cuda)
    saved = state.get("generators", {})
    for name, gen in (generators or {}).items():
        if name not in saved:
            raise CheckpointError(f"The checkpoint has no state for the generator {name!r} (saved: {sorted(saved)}).")
        gen.set_state(saved[name])


def _as_python_random_state(obj):
    # torch.load may give lists back for tuples; random.setstate wants (int, tuple, float|None).
    version, internal, gauss = obj
    return int(version), tuple(int(v) for v in internal), gauss


# --------------------------------------------------------------------------------------------- #
# Files
# --------------------------------------------------------------------------------------------- #
def _fsync_path(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temp file beside ``path``, flush it to disk, then ``os.replace`` it in."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_path(path.parent)


def _unshared(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, cloning any that share memory (safetensors refuses aliases)."""
    out, seen = {}, set()
    for k, v in sd.items():
        t = v.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[k] = t.contiguous()
    return out


def _save_tensors(sd: Mapping[str, torch.Tensor], path: Path) -> None:
    safetensors.torch.save_file(_unshared(sd), str(path))


def checkpoint_step(path: Path) -> int | None:
    name = path.name
    if not name.startswith(CHECKPOINT_PREFIX):
        return None
    try:
        return int(name[len(CHECKPOINT_PREFIX):])
    except ValueError:
        return None


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (a ``state.json`` inside), oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None and (p / STATE_FILE).is_file()]
    return sorted(found, key=checkpoint_step)


def find_latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    root = Path(output_dir)
    pointer = root / LATEST_FILE
    if pointer.is_file():
        candidate = root / pointer.read_text(encoding="utf-8").strip()
        if (candidate / STATE_FILE).is_file():
            return candidate
    found = list_checkpoints(root)
    return found[-1] if found else None


def _remove_stale_temporaries(root: Path) -> None:
    for p in root.iterdir():
        if p.name.startswith(f".{CHECKPOINT_PREFIX}") and ".tmp-" in p.name:
            shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------------------------- #
# Save / load
# --------------------------------------------------------------------------------------------- #
def save_checkpoint(
    output_dir: str | os.PathLike,
    step: int,
    *,
    models: Mapping[str, nn.Module | Mapping[str, torch.Tensor]],
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    emas: Mapping[str, EMA] | None = None,
    scaler: Any | None = None,
    rng_states: Sequence[Mapping] | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    extra: Mapping[str, Any] | None = None,
    total_limit: int | None = None,
) -> Path:
    """Write ``checkpoint-<step>`` atomically and point ``latest`` at it. Call on the main process only.

    ``models`` maps a name to a module (its full state dict is saved) or to a state dict (e.g. only
    the trainable part). ``extra`` must be JSON-serialisable (sampler state, config, metrics).
    """
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(root)
    final = root / f"{CHECKPOINT_PREFIX}{int(step)}"
    tmp = root / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name, model in models.items():
            sd = model.state_dict() if isinstance(model, nn.Module) else model
            _save_tensors(sd, tmp / f"model_{name}.safetensors")
        for name, ema in (emas or {}).items():
            _save_tensors(ema.state_dict(), tmp / f"ema_{name}.safetensors")
        training_state = {
            "optimizers": {name: opt.state_dict() for name, opt in (optimizers or {}).items()},
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": list(rng_states) if rng_states is not None else [capture_rng_state(generators)],
        }
        torch.save(training_state, tmp / TRAINING_STATE_FILE)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "step": int(step), "files": files, "extra": dict(extra or {})}
        with open(tmp / STATE_FILE, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
        for p in tmp.iterdir():
            _fsync_path(p)
        _fsync_path(tmp)
        if final.exists():  # re-saving the same step: move the old one aside first
            trash = root / f".{final.name}.tmp-old-{uuid.uuid4().hex[:8]}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_path(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / LATEST_FILE, final.name + "\n")
    if total_limit is not None and total_limit > 0:
        for old in list_checkpoints(root)[:-total_limit]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


def _verify_files(path: Path, meta: Mapping) -> None:
    for name, size in meta.get("files", {}).items():
        f = path / name
        if not f.is_file() or f.stat().st_size != size:
            raise CheckpointError(
                f"Checkpoint {str(path)!r} is damaged: {name} is missing or has the wrong size. "
                "Resume from an older checkpoint."
            )


def read_checkpoint_meta(path: str | os.PathLike) -> dict:
    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(f"{str(path)!r} is not a complete training checkpoint (no {STATE_FILE}).")
    meta = json.loads(state_file.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an AddSR training checkpoint (format {meta.get('format')!r}).")
    if meta.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{str(path)!r} was written by a newer version (format {meta['version']}); update the pack.")
    return meta


@torch.no_grad()
def _load_module(module: nn.Module, path: Path, family: str) -> None:
    sd = read_state_dict(path, family=family)
    check_state_dict(module, sd, family=family, source=str(path))
    module.load_state_dict(sd, strict=True)  # copies into the existing tensors: optimisers keep their refs


def load_checkpoint(
    path: str | os.PathLike,
    *,
    models: Mapping[str, nn.Module] | None = None,
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    emas: Mapping[str, EMA] | None = None,
    scaler: Any | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    restore_rng: bool = True,
    rank: int = 0,
) -> dict:
    """Restore everything ``save_checkpoint`` wrote into the given objects; returns ``state.json``.

    A model saved as a partial state dict must be passed as a module holding exactly those keys (or
    load that file yourself with ``read_state_dict``).
    """
    path = Path(path)
    meta = read_checkpoint_meta(path)
    _verify_files(path, meta)
    for name, module in (models or {}).items():
        _load_module(module, path / f"model_{name}.safetensors", family=f"checkpoint model {name!r}")
    for name, ema in (emas or {}).items():
        ema.load_state_dict(read_state_dict(path / f"ema_{name}.safetensors", family=f"checkpoint EMA {name!r}"))
    state = read_pickle_weights_only(str(path / TRAINING_STATE_FILE), "training state")
    for name, opt in (optimizers or {}).items():
        if name not in state["optimizers"]:
            raise CheckpointError(f"Checkpoint {str(path)!r} has no optimiser {name!r} (saved: {sorted(state['optimizers'])}).")
        opt.load_state_dict(state["optimizers"][name])
    if scaler is not None:
        if state["scaler"] is None:
            raise CheckpointError(f"Checkpoint {str(path)!r} has no grad-scaler state.")
        scaler.load_state_dict(state["scaler"])
    if restore_rng:
        rng = state["rng"]
        if rank >= len(rng):
            raise CheckpointError(f"Checkpoint {str(path)!r} holds RNG states for {len(rng)} ranks; rank {rank} has none.")
        restore_rng_state(rng[rank], generators)
    return meta
