"""Prompts -> ``prompt_embeds``: tokenizer and text encoder, paired."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..errors import AddSRError, OptionsError
from .encoder import CLIPTextEncoder
from .loading import load_text_encoder
from .tokenizer import CLIPTokenizer, TokenizerError


# Text conditioning widths people connect by mistake, by the encoder that makes them.
TEXT_WIDTH_SOURCES = {768: "an SD 1.x CLIP", 1024: "an SD 2.x CLIP", 2048: "an SDXL CLIP", 4096: "a T5 (SD3 / Flux)"}
SD2_TEXT_FIX = ("encode the prompt with the SD 2.x text encoder (OpenCLIP ViT-H, 1024 wide), e.g. the one in "
                "v2-1_512-ema-pruned.safetensors")


class TextWidthError(AddSRError):
    """Text conditioning from another encoder than the one the UNet was trained with."""


def check_text_width(embeds: torch.Tensor, width: int, *, what: str = "prompt", fix: str = SD2_TEXT_FIX) -> None:
    """Refuse ``embeds`` [B,77,C] unless C is the UNet's cross-attention ``width``: otherwise the
    first attention layer fails with an opaque "mat1 and mat2 shapes cannot be multiplied"."""
    got = embeds.shape[-1]
    if got != width:
        raise TextWidthError(f"the {what} conditioning is {got} wide{_source(got)}, but the model needs {width}"
                             f"{_source(width)}: {fix}.")


def check_prompt_widths(prompt_embeds, negative_embeds, width: int) -> None:
    """The samplers' check, before any work: prompt (and negative, if any) as wide as ``width``."""
    check_text_width(prompt_embeds, width, what="prompt")
    if negative_embeds is not None:
        check_text_width(negative_embeds, width, what="negative prompt")


def _source(width: int) -> str:
    return f" ({TEXT_WIDTH_SOURCES[width]})" if width in TEXT_WIDTH_SOURCES else ""


@dataclass
class TextConditioner:
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextEncoder

    def __post_init__(self):
        if self.tokenizer.context_length != self.text_encoder.config.max_length:
            raise TokenizerError(
                f"tokenizer context length {self.tokenizer.context_length} != text encoder positions "
                f"{self.text_encoder.config.max_length}; they do not belong together."
            )
        if self.tokenizer.vocab_size > self.text_encoder.config.vocab_size:
            raise TokenizerError(
                f"tokenizer vocabulary ({self.tokenizer.vocab_size}) is larger than the text encoder's "
                f"({self.text_encoder.config.vocab_size}); they do not belong together."
            )

    @classmethod
    def from_pretrained(
        cls,
        text_encoder_path: str | os.PathLike,
        tokenizer_path: str | os.PathLike | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
    ) -> "TextConditioner":
        """SD2 diffusers root (holding ``tokenizer/`` and ``text_encoder/``), or a single-file
        checkpoint plus ``tokenizer_path`` (a single file carries no vocabulary)."""
        if tokenizer_path is None:
            if not Path(text_encoder_path).is_dir():
                raise OptionsError(
                    "a single-file checkpoint holds no tokenizer vocabulary: pass tokenizer_path= "
                    "(SD2's tokenizer/ folder or OpenCLIP's bpe_simple_vocab_16e6.txt.gz)."
                )
            tokenizer_path = text_encoder_path
        return cls(CLIPTokenizer.from_pretrained(tokenizer_path), load_text_encoder(text_encoder_path, dtype=dtype, device=device))

    @torch.no_grad()
    def __call__(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """[B, 77, width] in the encoder's dtype and device. The ids stay on the host until the
        encoder has checked their range (no read back from a GPU)."""
        return self.text_encoder(self.tokenizer(prompts))
