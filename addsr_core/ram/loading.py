"""Load RAM + DAPE from the files users have, merging the LoRA once, strictly and safely.

Accepted:

- the RAM base ``ram_swin_large_14m.pth`` (pickled ``{'model': state_dict}``, read with
  ``torch.load(weights_only=True)``) or any ``.safetensors`` conversion of it, plus optionally
  ``DAPE.pth`` / ``.safetensors`` (a flat dict of ``*lora_*`` tensors), loaded after the base as the
  official code does (a LoRA in the DAPE file replaces one of the same name in the base file);
- a single merged ``.safetensors`` written by :func:`save_merged_ram` (LoRA already merged, config
  in its metadata).

What the official loader does to the base file and we do too: drop the recomputed buffers
(``relative_position_index``, ``attn_mask``) and rename ``vision_multi.*`` -> ``tagging_head.*``.
Everything our module needs must be in the files, with the right shapes; otherwise a
:class:`CheckpointError` lists what is missing or wrong.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Mapping, Optional

import torch

from ..errors import OptionsError
from ..loading.identify import describe_checkpoint
from ..loading.io import (
    SAFETENSORS_SUFFIXES,
    CheckpointError,
    assign_state_dict,
    read_safetensors_metadata,
    read_state_dict,
    unwrap_state_dict,
)
from ..models.config import ConfigError
from .config import RAMConfig, infer_ram_config
from .lora import (
    LORA_SUFFIXES,
    LoRAShapeError,
    apply_delta,
    is_lora_key,
    lora_pair,
    qkv_lora_delta,
    tag_head_lora_deltas,
)
from .model import RAM
from .tagger import RamTagger, TagListError

FAMILY = "RAM/DAPE"
# Parts of the official RAMLora that AddSR never runs (Tag2Text's image-tag-text encoder and
# caption decoder), with their BERT LoRAs: read past on purpose. The tag_encoder LoRAs of the
# layers tied to the tag head are the one exception (see lora.py).
UNUSED_PREFIXES = ("tag_encoder.", "text_decoder.")
ENCODER_PREFIXES = ("visual_encoder.", "image_proj.")
TAG_HEAD_PREFIXES = ("tagging_head.", "label_embed", "wordvec_proj.", "fc.")
LEGACY_TAG_HEAD_PREFIX = "vision_multi."
RECOMPUTED_SUFFIXES = (".relative_position_index", ".attn_mask")
MERGED_FORMAT = "addsr_ram_merged"


def _read(path: str | os.PathLike, role: str) -> tuple[dict, dict]:
    """(state dict, safetensors metadata). Tensors stay as stored (fp32): the merge runs in fp32."""
    obj = read_state_dict(path, family=f"{FAMILY} {role}")  # raises the readable errors (missing, torn, pickle)
    metadata = read_safetensors_metadata(path) if str(path).lower().endswith(SAFETENSORS_SUFFIXES) else {}
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{str(path)!r} does not hold a state dict (got {type(obj).__name__}); expected the {role} file.")
    return unwrap_state_dict(obj), metadata


def normalise_base_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official base-file clean-up: recomputed buffers out, ``vision_multi`` -> ``tagging_head``."""
    out = {}
    for key, value in sd.items():
        if key.endswith(RECOMPUTED_SUFFIXES):
            continue
        if key.startswith(LEGACY_TAG_HEAD_PREFIX):
            key = "tagging_head." + key[len(LEGACY_TAG_HEAD_PREFIX):]
        out[key] = value
    return out


def _lora_modules(model: RAM) -> tuple[list[str], list[str]]:
    """Names of the modules DAPE adapts: Swin ``attn.qkv`` and tag-head cross-attention query/key."""
    qkv = [name for name, _ in model.visual_encoder.named_modules() if name.endswith("attn.qkv")]
    qkv = ["visual_encoder." + name for name in qkv]
    head = []
    if model.has_tag_head:
        for i in range(model.config.tagging.num_layers):
            head += [f"tagging_head.encoder.layer.{i}.crossattention.self.{p}" for p in ("query", "key")]
    return qkv, head


def expected_lora_keys(model: RAM) -> dict[str, str]:
    """Every LoRA tensor the official RAMLora has for the parts we build -> the weight it merges into."""
    qkv, head = _lora_modules(model)
    return {m + s: m + ".weight" for m in qkv + head for s in LORA_SUFFIXES}


def _check_lora_file(lora: Mapping[str, torch.Tensor], source: str) -> None:
    plain = [k for k in lora if not is_lora_key(k)]
    if plain:
        raise CheckpointError(
            f"{source!r} is not a DAPE LoRA file: it holds {len(plain)} non-LoRA tensors (e.g. {sorted(plain)[:3]}); "
            f"it looks like {describe_checkpoint(lora.keys())}. Pass DAPE.pth (only '*lora_*' tensors) as dape."
        )


def merge_dape(model: RAM, base: Mapping[str, torch.Tensor], lora: Mapping[str, torch.Tensor], *, source: str) -> dict:
    """Fold the LoRA of every adapted module into ``base`` (our key names), in float32.

    Strict where it matters: the Swin qkv LoRAs are all there or the file is refused. A DAPE file
    with no tag-head LoRA at all is accepted with a warning (the tags then come from plain RAM).
    """
    qkv, head = _lora_modules(model)
    missing = [m + s for m in qkv for s in LORA_SUFFIXES if m + s not in lora]
    if missing:
        raise CheckpointError(
            f"{source!r} lacks {len(missing)} of the {2 * len(qkv)} Swin qkv LoRA tensors DAPE must have:\n    "
            + "\n    ".join(missing[:20])
            + ("\nIt holds no Swin LoRA at all: is it DAPE.pth?" if len(missing) == 2 * len(qkv) else "")
        )
    known = set(expected_lora_keys(model))
    built = ENCODER_PREFIXES + (TAG_HEAD_PREFIXES if model.has_tag_head else ())
    stray = [k for k in lora if k.startswith(built) and k not in known]
    if stray:
        raise CheckpointError(f"{source!r} has LoRA tensors for modules this RAM does not have: {sorted(stray)[:10]}")
    head_present = [m for m in head if m + ".lora_A" in lora or m + ".lora_B" in lora]
    if head and head_present and len(head_present) != len(head):
        absent = sorted(set(head) - set(head_present))
        raise CheckpointError(f"{source!r} has LoRA for only part of the tag head; missing: {absent}")
    if head and not head_present:
        warnings.warn(f"{source!r} has no tag-head LoRA: tags come from RAM without DAPE.", stacklevel=3)
    merged = dict(base)
    try:
        for module in qkv:
            key = module + ".weight"
            if key in merged:  # absent weights are reported by the strict load that follows
                merged[key] = apply_delta(merged[key], qkv_lora_delta(*lora_pair(lora, module)), key)
        for module in head:
            key = module + ".weight"
            if key in merged:
                for delta in tag_head_lora_deltas(lora, module):
                    merged[key] = apply_delta(merged[key], delta, key)
    except LoRAShapeError as err:
        raise CheckpointError(f"{source!r}: {err}. Is this the DAPE file for this RAM?") from None
    return merged


def select_model_keys(sd: Mapping[str, torch.Tensor], *, tag_head: bool, source: str) -> dict:
    """Keep what our module holds; read past the official-only parts; warn about anything else."""
    ours = ENCODER_PREFIXES + (TAG_HEAD_PREFIXES if tag_head else ())
    skipped = UNUSED_PREFIXES + (() if tag_head else TAG_HEAD_PREFIXES)
    kept, unknown = {}, []
    for key, value in sd.items():
        if is_lora_key(key):
            continue
        if key.startswith(ours):
            kept[key] = value
        elif not key.startswith(skipped):
            unknown.append(key)
    if unknown and kept:
        warnings.warn(f"{source!r}: ignoring {len(unknown)} tensors RAM does not use, e.g. {sorted(unknown)[:5]}", stacklevel=3)
    return kept


def build_ram(config: RAMConfig, state_dict: Mapping[str, torch.Tensor], *, source: str, dtype=None, device="cpu",
              operations=None) -> RAM:
    """Build on meta, rebuild the geometry buffers on ``device``, strictly assign ``state_dict``.

    ``operations``: the layer classes (default torch.nn; see :mod:`addsr_core.models.operations`)."""
    with torch.device("meta"):
        model = RAM(config, operations)
    model.rebuild_buffers(torch.device(device))
    try:
        assign_state_dict(model, state_dict, family=FAMILY, source=source, dtype=dtype, device=device)
    except CheckpointError as err:
        hint = describe_checkpoint(state_dict.keys()) if state_dict else "nothing RAM uses"
        raise CheckpointError(f"{err}\nThe file looks like {hint}.") from None
    return model.eval().requires_grad_(False)


def _refuse_lora_only_base(keys, source: str) -> None:
    if keys and all(is_lora_key(k) for k in keys):
        raise CheckpointError(
            f"{source!r} holds only LoRA tensors: it is a DAPE file. Pass the RAM base "
            "(ram_swin_large_14m.pth) as ram and this file as dape."
        )


def _config_for(sd: Mapping[str, torch.Tensor], tag_head: bool, source: str, original_keys) -> RAMConfig:
    try:
        return infer_ram_config(sd, tagging=tag_head)
    except ConfigError as err:
        raise CheckpointError(
            f"{source!r} cannot be read as a RAM (Swin) checkpoint: {err}. "
            f"The file looks like {describe_checkpoint(original_keys)}; pick ram_swin_large_14m.pth."
        ) from None


def _fit_tag_head(config: RAMConfig, tag_head: bool, source: str) -> RAMConfig:
    if not tag_head:
        return config.with_tagging(None)
    if config.tagging is None:
        raise CheckpointError(
            f"{source!r} has no RAM tag head (no label_embed / tagging_head.*), so it cannot make tags: "
            "load it without a tag list, or use the original ram_swin_large_14m.pth."
        )
    return config


def load_ram_model(
    ram_path: str | os.PathLike,
    dape_path: str | os.PathLike | None = None,
    *,
    tag_head: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    config: RAMConfig | None = None,
    operations=None,
) -> RAM:
    """The RAM encoder (and, with ``tag_head=True``, its tag head) with DAPE merged in.

    ``dtype`` is applied after the merge (the merge itself runs in float32, as the official
    ``eval()`` merges fp32 weights). ``config`` overrides the one read from the tensor shapes.
    """
    source = str(ram_path)
    raw, metadata = _read(ram_path, "base")
    if metadata.get("format") == MERGED_FORMAT:
        if dape_path is not None:
            raise CheckpointError(f"{source!r} already has {metadata.get('dape', 'DAPE')} merged in; do not pass a DAPE file again.")
        config = _fit_tag_head(config or RAMConfig.from_dict(json.loads(metadata["config"])), tag_head, source)
        sd = select_model_keys(raw, tag_head=tag_head, source=source)
        return build_ram(config, sd, source=source, dtype=dtype, device=device, operations=operations)

    _refuse_lora_only_base(list(raw.keys()), source)
    base = normalise_base_keys(raw)
    lora = {k: v for k, v in base.items() if is_lora_key(k)}  # a full RAMLora dump carries its LoRA
    if dape_path is not None:
        dape, _ = _read(dape_path, "DAPE LoRA")
        _check_lora_file(dape, str(dape_path))
        lora.update(dape)
    sd = select_model_keys(base, tag_head=tag_head, source=source)
    config = _fit_tag_head(config or _config_for(sd, tag_head, source, list(raw.keys())), tag_head, source)
    with torch.device("meta"):
        skeleton = RAM(config)
    # A DAPE file must bring the Swin LoRA; a base file's own LoRA (a full RAMLora dump) merges if present.
    if dape_path is not None or any(k.startswith(ENCODER_PREFIXES) for k in lora):
        sd = merge_dape(skeleton, sd, lora, source=str(dape_path or ram_path))
    return build_ram(config, sd, source=source, dtype=dtype, device=device, operations=operations)


def load_ram(
    ram_path: str | os.PathLike,
    dape_path: str | os.PathLike | None = None,
    *,
    tag_list: str | os.PathLike | None = None,
    thresholds: str | os.PathLike | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    config: RAMConfig | None = None,
    operations=None,
) -> tuple[RAM, Optional[RamTagger]]:
    """(encoder, tagger). The tagger (and the tag head inside the encoder) exists only with a
    ``tag_list``; ``thresholds`` defaults to ``ram_tag_list_threshold.txt`` beside it.
    ``operations``: the layer classes (default torch.nn; see :mod:`addsr_core.models.operations`)."""
    if tag_list is not None and not Path(tag_list).is_file():  # fail before reading a 1.5 GB file
        raise TagListError(f"tag list not found: {str(tag_list)!r}. Use ram_tag_list.txt from RAM's ram/data/ folder.")
    model = load_ram_model(ram_path, dape_path, tag_head=tag_list is not None, dtype=dtype, device=device, config=config,
                           operations=operations)
    tagger = RamTagger.from_files(model, tag_list, thresholds) if tag_list is not None else None
    return model, tagger


def save_merged_ram(model: RAM, path: str | os.PathLike, *, dape: str = "DAPE") -> None:
    """One ``.safetensors`` with the LoRA merged and the config in the metadata (loads without DAPE)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        raise OptionsError(f"save merged RAM as .safetensors, not {path.suffix!r}")
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {"format": MERGED_FORMAT, "config": json.dumps(model.config.to_dict()), "dape": dape}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
