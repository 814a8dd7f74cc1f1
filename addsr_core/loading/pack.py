"""Our single-file format: an AddSR release folder packed into one ``.safetensors``.

Tensors are prefixed ``unet.``, ``controlnet.`` (and optionally ``vae.``); the diffusers configs
ride along in the safetensors metadata, so the file is self-describing and loads strictly.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import OptionsError
from ..models import ControlNetModel, UNet2DConditionModel, UNetConfig
from .io import CheckpointError, read_safetensors_metadata, read_state_dict
from .keymaps import strip_prefix
from .models import build_controlnet, build_unet, read_diffusers_folder, write_diffusers_folder

FORMAT = "addsr-pack"
FORMAT_VERSION = "1"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PARTS = ("unet", "controlnet", "vae")


def is_packed_file(path) -> bool:
    path = Path(path)
    if not path.is_file() or path.suffix != ".safetensors":
        return False
    try:
        return read_safetensors_metadata(path).get("format") == FORMAT
    except Exception:
        return False


def pack_release(folder, out_file, *, dtype: str = "fp16", include_vae: bool = False,
                 family: str | None = None) -> Path:
    """Pack ``folder`` (with ``unet/`` and ``controlnet/``, optionally ``vae/``) into one file.

    ``family`` ("addsr"/"seesr") goes into the metadata that :mod:`.family` reads, since the weights
    cannot tell the two releases apart; None records nothing (the loader then goes by name).
    """
    from safetensors.torch import save_file

    from .family import FAMILIES, METADATA_KEY

    folder, out_file = Path(folder), Path(out_file)
    if dtype not in DTYPES:
        raise OptionsError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if family is not None and family not in FAMILIES:
        raise OptionsError(f"family must be one of {FAMILIES}, got {family!r}")
    tensors, metadata = {}, {"format": FORMAT, "format_version": FORMAT_VERSION, "dtype": dtype}
    if family is not None:
        metadata[METADATA_KEY] = family
    parts = PARTS if include_vae else PARTS[:2]
    for part in parts:
        config, sd, _ = read_diffusers_folder(folder, part, dtype=DTYPES[dtype])
        metadata[f"{part}_config"] = json.dumps(config)
        tensors.update({f"{part}.{k}": v.contiguous() for k, v in sd.items()})
        del sd
    # Validate before writing: a pack that cannot load back is worse than no pack.
    _validate(tensors, metadata, str(folder))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(out_file.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, out_file)
    return out_file


def unpack_release(packed_file, out_folder) -> Path:
    """Write the diffusers folders back out (``unet/``, ``controlnet/``, ``vae/`` if present)."""
    meta = read_safetensors_metadata(packed_file)
    sd = read_state_dict(packed_file, family="AddSR packed")
    out_folder = Path(out_folder)
    for part in PARTS:
        if f"{part}_config" in meta:
            write_diffusers_folder(out_folder / part, json.loads(meta[f"{part}_config"]), strip_prefix(sd, f"{part}."))
    return out_folder


def _validate(tensors: dict, metadata: dict, source: str) -> None:
    for part, builder in (("unet", UNet2DConditionModel), ("controlnet", ControlNetModel)):
        with torch.device("meta"):
            model = builder(UNetConfig.from_diffusers(json.loads(metadata[f"{part}_config"])))
        from .io import check_state_dict

        check_state_dict(model, strip_prefix(tensors, f"{part}."), family=f"AddSR {part}", source=source)


def load_packed(path, *, dtype=None, device="cpu", operations=None):
    """(unet, controlnet, vae_state_dict_or_None) from a packed file; ``operations``: the layer
    classes (default torch.nn; see :mod:`addsr_core.models.operations`)."""
    meta = read_safetensors_metadata(path, family="AddSR packed")
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not an AddSR packed file (no '{FORMAT}' metadata). Use the release folder, "
            "or create the file with `python -m addsr_core convert pack`."
        )
    sd = read_state_dict(path, family="AddSR packed", dtype=dtype)
    unet = build_unet(
        UNetConfig.from_diffusers(json.loads(meta["unet_config"])), strip_prefix(sd, "unet."),
        source=str(path), dtype=dtype, device=device, operations=operations,
    )
    controlnet = build_controlnet(
        UNetConfig.from_diffusers(json.loads(meta["controlnet_config"])), strip_prefix(sd, "controlnet."),
        source=str(path), dtype=dtype, device=device, operations=operations,
    )
    vae_sd = strip_prefix(sd, "vae.") if "vae_config" in meta else None
    return unet, controlnet, vae_sd


def load_addsr(path, *, dtype=None, device="cpu", operations=None):
    """(unet, controlnet) from a release folder or a packed file; ``operations``: the layer classes
    (default torch.nn; see :mod:`addsr_core.models.operations`)."""
    from .models import load_controlnet, load_unet

    if Path(path).is_file():
        unet, controlnet, _ = load_packed(path, dtype=dtype, device=device, operations=operations)
        return unet, controlnet
    return (load_unet(path, dtype=dtype, device=device, operations=operations),
            load_controlnet(path, dtype=dtype, device=device, operations=operations))
