"""AddSR's prompt recipe (``test_addsr.py``), reproduced string for string.

Official: ``f"{tags}, {user_prompt}," + added_prompt``, with no space before the added prompt:
    tags="dog, grass", user=""        -> "dog, grass, ,clean, high-resolution, 8k, ..."
    tags="dog, grass", user="a photo" -> "dog, grass, a photo,clean, high-resolution, 8k, ..."

``clean_prompt=True`` (our deviation, off by default) joins only the non-empty parts with ", ":
    "dog, grass, clean, high-resolution, 8k, ...". CLIP's tokenizer drops spaces, so the only change
    in token ids is that the stray "," of an empty user prompt (or empty tag list) disappears.
"""
from __future__ import annotations

from typing import Sequence

DEFAULT_ADDED_PROMPT = "clean, high-resolution, 8k, extremely detailed, best quality, sharp"
DEFAULT_NEGATIVE_PROMPT = "dotted, noise, blur, lowres, smooth"
# AddSR's RAM (ram_lora.generate_tag) joins the tags it finds with ", ".
TAG_SEPARATOR = ", "


def join_tags(tags: str | Sequence[str]) -> str:
    """RAM's tag string: a str is used as is, a list of tags is joined with ", "."""
    if isinstance(tags, str):
        return tags
    tags = list(tags)
    if not all(isinstance(t, str) for t in tags):
        raise TypeError(f"tags must be a str or a list of str, got {tags!r}.")
    return TAG_SEPARATOR.join(tags)


def build_prompt(
    tags: str | Sequence[str],
    user_prompt: str = "",
    *,
    added_prompt: str = DEFAULT_ADDED_PROMPT,
    clean_prompt: bool = False,
) -> str:
    """The positive prompt AddSR feeds its text encoder (see the module docstring)."""
    if not isinstance(user_prompt, str) or not isinstance(added_prompt, str):
        raise TypeError("user_prompt and added_prompt must be strings.")
    tag_text = join_tags(tags)
    if not clean_prompt:
        return f"{tag_text}, {user_prompt}," + added_prompt
    parts = (p.strip().strip(",").strip() for p in (tag_text, user_prompt, added_prompt))
    return TAG_SEPARATOR.join(p for p in parts if p)
