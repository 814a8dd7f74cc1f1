"""RAM tags -> prompt text, as AddSR's ``RAMLora.generate_tag`` + ``inference_ram`` produce them.

Official behaviour reproduced here:

- scores are ``sigmoid(logits)``, and a tag is kept when its score is STRICTLY above its class
  threshold;
- thresholds: 0.68 for every class, then overwritten line by line from
  ``ram_tag_list_threshold.txt`` (which RAM always reads; its ``threshold`` argument is unused);
- tags listed in ``delete_tag_index`` are dropped (AddSR passes none);
- the kept names are joined with ", " in tag-list order (AddSR's RAMLora; upstream RAM uses " | ");
- the tag list is ``ram_tag_list.txt`` read with ``splitlines()``: one name per line, in class order.

The tag list and thresholds ship with RAM (``ram/data/``); the user supplies them.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch

from ..errors import AddSRError
from .model import RAM

DEFAULT_THRESHOLD = 0.68
TAG_SEPARATOR = ", "
THRESHOLD_SUFFIX = "_threshold"


class TagListError(AddSRError):
    """A tag-list or threshold file that cannot be used with this RAM, and what to do about it."""


def read_tag_list(path: str | os.PathLike) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise TagListError(f"tag list not found: {str(path)!r}. Use ram_tag_list.txt from RAM's ram/data/ folder.")
    try:
        names = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise TagListError(f"{str(path)!r} is not a UTF-8 text file ({err}); expected ram_tag_list.txt.") from None
    if not names:
        raise TagListError(f"tag list {str(path)!r} is empty; expected one tag name per line (ram_tag_list.txt).")
    return names


def read_class_thresholds(path: str | os.PathLike, num_classes: int, default: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """``default`` everywhere, then line i of the file sets class i (the official loop)."""
    path = Path(path)
    if not path.is_file():
        raise TagListError(f"threshold file not found: {str(path)!r}. Use ram_tag_list_threshold.txt from RAM's ram/data/.")
    thresholds = torch.full((num_classes,), float(default))
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) > num_classes:
        raise TagListError(f"{str(path)!r} has {len(lines)} thresholds but the model has {num_classes} tag classes.")
    for i, line in enumerate(lines):
        try:
            thresholds[i] = float(line.strip())
        except ValueError:
            raise TagListError(f"{str(path)!r} line {i + 1}: {line!r} is not a number.") from None
    return thresholds


def sibling_threshold_file(tag_list: str | os.PathLike) -> Path:
    """``ram_tag_list.txt`` -> ``ram_tag_list_threshold.txt`` (how RAM ships them, side by side)."""
    tag_list = Path(tag_list)
    return tag_list.with_name(tag_list.stem + THRESHOLD_SUFFIX + tag_list.suffix)


def _check_names(model: RAM, tag_names: Sequence[str]) -> int:
    if not model.has_tag_head:
        raise TagListError("this RAM has no tag head: load it with a tag list to build one")
    num_classes = model.config.tagging.num_classes
    if len(tag_names) != num_classes:
        raise TagListError(
            f"the tag list has {len(tag_names)} names but this RAM scores {num_classes} tag classes: "
            "use the ram_tag_list.txt that matches the checkpoint (4585 lines for ram_swin_large_14m)."
        )
    return num_classes


class RamTagger:
    """Turns images into RAM's tag string. Uses the given :class:`RAM` (with its tag head) as is,
    so it follows the model wherever it is moved."""

    def __init__(
        self,
        model: RAM,
        tag_names: Sequence[str],
        thresholds: Optional[torch.Tensor] = None,
        *,
        delete_tag_index: Iterable[int] = (),
        resize: str = "bilinear",
    ):
        num_classes = _check_names(model, tag_names)
        if thresholds is None:
            thresholds = torch.full((num_classes,), DEFAULT_THRESHOLD)
        if tuple(thresholds.shape) != (num_classes,):
            raise TagListError(f"thresholds must have shape ({num_classes},), got {tuple(thresholds.shape)}")
        keep = torch.ones(num_classes, dtype=torch.bool)
        for index in delete_tag_index:
            keep[index] = False
        self.model = model
        self.tag_names = list(tag_names)
        self.thresholds = thresholds.float()
        self.keep = keep
        self.resize = resize

    @classmethod
    def from_files(
        cls,
        model: RAM,
        tag_list: str | os.PathLike,
        thresholds: str | os.PathLike | None = None,
        **kwargs,
    ) -> "RamTagger":
        """``thresholds=None`` uses ``ram_tag_list_threshold.txt`` next to the tag list if it is there,
        else 0.68 for every class (with a warning: the official tagger always has the per-class file)."""
        names = read_tag_list(tag_list)
        num_classes = _check_names(model, names)
        if thresholds is None:
            candidate = sibling_threshold_file(tag_list)
            if candidate.is_file():
                thresholds = candidate
            else:
                warnings.warn(
                    f"no {candidate.name} next to {Path(tag_list).name}: using {DEFAULT_THRESHOLD} for every tag. "
                    "The official RAM uses its per-class thresholds file; put it beside the tag list for identical tags.",
                    stacklevel=2,
                )
        values = None if thresholds is None else read_class_thresholds(thresholds, num_classes)
        return cls(model, names, values, **kwargs)

    def select(self, probabilities: torch.Tensor) -> list[list[str]]:
        """[B, num_classes] scores -> the kept tag names per image, in tag-list order."""
        chosen = (probabilities.float().cpu() > self.thresholds) & self.keep
        return [[self.tag_names[i] for i in row.nonzero().flatten().tolist()] for row in chosen]

    @torch.no_grad()
    def tags_from_tokens(self, tokens: torch.Tensor) -> list[str]:
        """Tags of already computed image tokens [B,145,512] (saves running the Swin twice)."""
        probabilities = torch.sigmoid(self.model.tag_logits(tokens).float())
        return [TAG_SEPARATOR.join(names) for names in self.select(probabilities)]

    @torch.no_grad()
    def tags(self, images01: torch.Tensor) -> list[str]:
        """RGB images [B,3,H,W] in [0,1] -> one "tag1, tag2, ..." string per image.

        Preprocessed like the official step 1 (bilinear to 384, ImageNet normalisation).
        """
        return self.tags_from_tokens(self.model.represent(images01, resize=self.resize))
