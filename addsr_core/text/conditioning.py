"""Prompts -> ``prompt_embeds``: tokenizer and text encoder, paired."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .encoder import CLIPTextEncoder
from .loading import load_text_encoder
from .tokenizer import CLIPTokenizer


@dataclass
class TextConditioner:
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextEncoder

    def __post_init__(self):
        if self.tokenizer.context_length != self.text_encoder.config.max_length:
            raise ValueError(
                f"tokenizer context length {self.tokenizer.context_length} != text encoder positions "
                f"{self.text_encoder.config.max_length}; they do not belong together."
            )
        if self.tokenizer.vocab_size > self.text_encoder.config.vocab_size:
            raise ValueError(
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
                raise ValueError(
                    "a single-file checkpoint holds no tokenizer vocabulary: pass tokenizer_path= "
                    "(SD2's tokenizer/ folder or OpenCLIP's bpe_simple_vocab_16e6.txt.gz)."
                )
            tokenizer_path = text_encoder_path
        return cls(CLIPTokenizer.from_pretrained(tokenizer_path), load_text_encoder(text_encoder_path, dtype=dtype, device=device))

    @torch.no_grad()
    def __call__(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """[B, 77, width] in the encoder's dtype and device."""
        return self.text_encoder(self.tokenizer(prompts).to(self.text_encoder.device))
