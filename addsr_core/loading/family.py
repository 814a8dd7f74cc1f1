"""Which sampler a UNet + ControlNet release belongs to: AddSR (1-4 steps) or SeeSR (its 50-step teacher).

Both releases have the same networks and the same layout (``unet/`` + ``controlnet/``), so the
weights cannot tell them apart. A packed file may say it in its metadata (``family``); otherwise
the caller's choice decides, and ``auto`` falls back to the name (``*seesr*`` -> SeeSR) and then
to AddSR.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import OptionsError

FAMILIES = ("addsr", "seesr")
CHOICES = ("auto",) + FAMILIES
METADATA_KEY = "family"


def family_from_metadata(path) -> str | None:
    """The ``family`` recorded in a packed file's metadata, if any."""
    from .io import read_safetensors_metadata

    path = Path(path)
    if not path.is_file() or path.suffix != ".safetensors":
        return None
    try:
        value = read_safetensors_metadata(path).get(METADATA_KEY)
    except Exception:
        return None
    return value if value in FAMILIES else None


def resolve_family(path, choice: str = "auto") -> tuple[str, str]:
    """(family, why). Metadata wins over ``auto``; an explicit choice wins over everything."""
    if choice not in CHOICES:
        raise OptionsError(f"family must be one of {CHOICES}, got {choice!r}")
    if choice != "auto":
        return choice, "chosen"
    recorded = family_from_metadata(path)
    if recorded:
        return recorded, "file metadata"
    if "seesr" in Path(path).name.lower():
        return "seesr", "name"
    return "addsr", "default (no metadata; pick the family to override)"
