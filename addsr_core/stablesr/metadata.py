"""The attention head layout our own StableSR files record.

Tensor shapes give a StableSR model's every size except its attention head counts. The official
releases (SD 2.x / SD-Turbo based) all use 64-channel UNet heads and 4 time-aware encoder heads,
so a file without a record gets those (:func:`addsr_core.stablesr.loading.unet_config_from_shapes`).
Files we write ourselves (the tiny test files, and ``convert safetensors`` copies of them) may use
other heads, so they say which:

- ``.safetensors``: in the header metadata (string values);
- ``.ckpt``/``.pth``: in a top-level ``"addsr_metadata"`` dict of strings beside Lightning's
  ``"state_dict"`` (a plain dict, so the weights-only reader takes it as it is).

:mod:`addsr_core.loading.lightning` reads both.
"""
from __future__ import annotations

import json
from typing import Mapping

from ..loading.io import CheckpointError

UNET_HEADS_KEY = "stablesr_unet_attention_heads"  # JSON list: heads per UNet level (our UNetConfig.attention_heads)
ENCODER_HEADS_KEY = "stablesr_encoder_num_heads"  # the time-aware encoder's attention heads


def stablesr_metadata(config) -> dict[str, str]:
    """What a file of ``config`` (a :class:`StableSRConfig`) records about its heads."""
    return {
        UNET_HEADS_KEY: json.dumps([int(h) for h in config.unet.attention_heads]),
        ENCODER_HEADS_KEY: str(int(config.encoder.num_heads)),
    }


def _positive_int(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(value)
    return value


def recorded_heads(metadata: Mapping[str, str] | None, source: str = "the file") -> tuple[tuple[int, ...] | None, int | None]:
    """(UNet heads per level, encoder heads) recorded in ``metadata``; None for what is not recorded."""
    metadata = metadata or {}
    unet = encoder = None
    try:
        if UNET_HEADS_KEY in metadata:
            value = json.loads(metadata[UNET_HEADS_KEY])
            unet = tuple(_positive_int(h) for h in value) if isinstance(value, list) and value else None
            if unet is None:
                raise ValueError(value)
        if ENCODER_HEADS_KEY in metadata:
            encoder = _positive_int(json.loads(metadata[ENCODER_HEADS_KEY]))
    except ValueError:
        raise CheckpointError(
            f"{source}: its metadata records an unreadable attention head layout "
            f"({UNET_HEADS_KEY}={metadata.get(UNET_HEADS_KEY)!r}, {ENCODER_HEADS_KEY}={metadata.get(ENCODER_HEADS_KEY)!r}); "
            "write the file again, or remove those entries to get the SD 2.x heads."
        ) from None
    return unet, encoder
