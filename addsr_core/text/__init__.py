"""SD2 text conditioning: CLIP BPE tokenizer, OpenCLIP ViT-H text encoder, AddSR's prompt recipe."""
from .conditioning import TextConditioner
from .config import SD2_TEXT_ENCODER, TextEncoderConfig
from .encoder import CLIPTextEncoder
from .loading import (
    build_text_encoder,
    load_text_encoder,
    load_text_encoder_diffusers,
    load_text_encoder_single_file,
    openclip_to_transformers,
    text_encoder_from_openclip,
)
from .prompt import DEFAULT_ADDED_PROMPT, DEFAULT_NEGATIVE_PROMPT, build_prompt, join_tags
from .tokenizer import CLIPTokenizer, TokenizerError

__all__ = [
    "CLIPTextEncoder", "CLIPTokenizer", "DEFAULT_ADDED_PROMPT", "DEFAULT_NEGATIVE_PROMPT", "SD2_TEXT_ENCODER",
    "TextConditioner", "TextEncoderConfig", "TokenizerError", "build_prompt", "build_text_encoder", "join_tags",
    "load_text_encoder", "load_text_encoder_diffusers", "load_text_encoder_single_file",
    "openclip_to_transformers", "text_encoder_from_openclip",
]
