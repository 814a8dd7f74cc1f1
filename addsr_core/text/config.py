"""Config of the CLIP text transformer that makes SD2's ``prompt_embeds``."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from ..models.config import ConfigError

ACTIVATIONS = ("gelu", "quick_gelu")


@dataclass(frozen=True)
class TextEncoderConfig:
    """Defaults are SD2's: OpenCLIP ViT-H/14's text tower cut to 23 of its 24 blocks.

    ``num_layers`` counts the blocks that RUN. SD2 conditions on the penultimate block's output
    (then the final LayerNorm), so its diffusers ``text_encoder/`` stores 23 layers and the 24th
    block of the OpenCLIP checkpoint is dropped on load.
    """

    vocab_size: int = 49408
    width: int = 1024
    num_layers: int = 23
    num_heads: int = 16
    mlp_width: int = 4096
    max_length: int = 77
    activation: str = "gelu"  # OpenCLIP ViT-H uses exact (erf) GELU; OpenAI CLIP-L uses quick_gelu
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"text encoder activation {self.activation!r} is not supported; expected one of {ACTIVATIONS}.")
        if self.width % self.num_heads:
            raise ConfigError(f"text encoder width {self.width} is not divisible by num_heads {self.num_heads}.")
        if min(self.vocab_size, self.width, self.num_layers, self.num_heads, self.mlp_width, self.max_length) < 1:
            raise ConfigError(f"text encoder config has a non-positive size: {self}")

    @classmethod
    def from_transformers(cls, cfg: Mapping[str, Any]) -> "TextEncoderConfig":
        """Parse the ``config.json`` of a transformers ``CLIPTextModel`` (diffusers ``text_encoder/``)."""
        if "text_config" in cfg:  # a full CLIPModel config: only its text half matters
            cfg = cfg["text_config"]
        architectures = cfg.get("architectures") or ["CLIPTextModel"]
        if "CLIPTextModel" not in architectures:
            raise ConfigError(
                f"text encoder config is for {architectures}, expected CLIPTextModel (SD2's diffusers text_encoder/)."
            )
        # dropout fields are ignored: they do nothing at inference
        return cls(
            vocab_size=cfg.get("vocab_size", 49408),
            width=cfg.get("hidden_size", 512),
            num_layers=cfg.get("num_hidden_layers", 12),
            num_heads=cfg.get("num_attention_heads", 8),
            mlp_width=cfg.get("intermediate_size", 2048),
            max_length=cfg.get("max_position_embeddings", 77),
            activation=cfg.get("hidden_act", "quick_gelu"),  # transformers' own default
            layer_norm_eps=cfg.get("layer_norm_eps", 1e-5),
        )

    def to_transformers(self) -> dict:
        """The matching transformers ``CLIPTextConfig`` fields (for exporting and tests)."""
        return dict(
            vocab_size=self.vocab_size,
            hidden_size=self.width,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=self.mlp_width,
            max_position_embeddings=self.max_length,
            hidden_act=self.activation,
            layer_norm_eps=self.layer_norm_eps,
        )

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


SD2_TEXT_ENCODER = TextEncoderConfig()
