"""Network configs: parsed from the diffusers ``config.json`` files the official release ships."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from ..errors import AddSRError

# The RAM/DAPE token width is a hard-coded block default in the official code, not a config field.
IMAGE_CROSS_ATTENTION_DIM = 512


class ConfigError(AddSRError):
    pass


def _as_tuple(value, n: int):
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * n


@dataclass(frozen=True)
class UNetConfig:
    """What the SD2 UNet (and the ControlNet built from it) needs. Defaults are SD2-base."""

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple = (320, 640, 1280, 1280)
    down_block_types: tuple = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    up_block_types: tuple = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    layers_per_block: int = 2
    attention_heads: tuple = (5, 10, 20, 20)  # diffusers' "attention_head_dim" holds head COUNTS
    cross_attention_dim: int = 1024
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    use_image_cross_attention: bool = True
    image_cross_attention_dim: int = IMAGE_CROSS_ATTENTION_DIM
    transformer_layers_per_block: int = 1
    # ControlNet only
    conditioning_channels: int = 3
    conditioning_embedding_out_channels: tuple = (16, 32, 96, 256)

    @property
    def time_embed_dim(self) -> int:
        return self.block_out_channels[0] * 4

    @classmethod
    def from_diffusers(cls, cfg: Mapping[str, Any]) -> "UNetConfig":
        unsupported = {
            "use_linear_projection": (True,),
            "class_embed_type": (None,),
            "addition_embed_type": (None,),
            "encoder_hid_dim_type": (None,),
            "time_embedding_type": ("positional",),
            "resnet_time_scale_shift": ("default",),
            "upcast_attention": (False, None),
            "only_cross_attention": (False,),
            "dual_cross_attention": (False,),
            "mid_block_type": ("UNetMidBlock2DCrossAttn",),
            "conv_in_kernel": (3,),
            "conv_out_kernel": (3,),
            "act_fn": ("silu",),
        }
        for key, allowed in unsupported.items():
            if key in cfg and cfg[key] not in allowed:
                raise ConfigError(f"UNet config {key}={cfg[key]!r} is not an SD2-style UNet (expected {allowed[0]!r}).")
        blocks = tuple(cfg.get("block_out_channels", cls.block_out_channels))
        heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", cls.attention_heads)
        layers = cfg.get("transformer_layers_per_block", 1)
        if not isinstance(layers, int):
            raise ConfigError("per-block transformer_layers_per_block is not supported (SD2 uses 1).")
        kwargs = dict(
            in_channels=cfg.get("in_channels", 4),
            out_channels=cfg.get("out_channels", 4),
            block_out_channels=blocks,
            down_block_types=tuple(cfg.get("down_block_types", cls.down_block_types)),
            up_block_types=tuple(cfg.get("up_block_types", cls.up_block_types)),
            layers_per_block=cfg.get("layers_per_block", 2),
            attention_heads=_as_tuple(heads, len(blocks)),
            cross_attention_dim=cfg.get("cross_attention_dim", 1024),
            norm_num_groups=cfg.get("norm_num_groups", 32),
            norm_eps=cfg.get("norm_eps", 1e-5),
            flip_sin_to_cos=cfg.get("flip_sin_to_cos", True),
            freq_shift=cfg.get("freq_shift", 0),
            use_image_cross_attention=cfg.get("use_image_cross_attention", False),
            transformer_layers_per_block=layers,
            conditioning_channels=cfg.get("conditioning_channels", 3),
            conditioning_embedding_out_channels=tuple(
                cfg.get("conditioning_embedding_out_channels", cls.conditioning_embedding_out_channels)
            ),
        )
        return cls(**kwargs)

    def to_dict(self) -> dict:
        return {f.name: list(v) if isinstance((v := getattr(self, f.name)), tuple) else v for f in fields(self)}


@dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_diffusers(cls, cfg: Mapping[str, Any]) -> "VAEConfig":
        if cfg.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
            raise ConfigError(f"expected an AutoencoderKL config, got {cfg.get('_class_name')!r}")
        return cls(
            in_channels=cfg.get("in_channels", 3),
            out_channels=cfg.get("out_channels", 3),
            latent_channels=cfg.get("latent_channels", 4),
            block_out_channels=tuple(cfg.get("block_out_channels", cls.block_out_channels)),
            layers_per_block=cfg.get("layers_per_block", 2),
            norm_num_groups=cfg.get("norm_num_groups", 32),
            scaling_factor=cfg.get("scaling_factor", 0.18215),
        )

    def to_dict(self) -> dict:
        return {f.name: list(v) if isinstance((v := getattr(self, f.name)), tuple) else v for f in fields(self)}


SD2_UNET = UNetConfig()
SD2_VAE = VAEConfig()
