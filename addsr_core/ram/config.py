"""Configs of RAM's Swin image encoder and its tagging head (official ``RAMLora(vit='swin_l', 384)``).

The official code hard-codes most of these; the defaults are the full-size model AddSR uses.
A config can also be read back from a checkpoint's tensor shapes (:func:`infer_ram_config`), so
smaller test models load through the same path as the real files.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional

from ..models.config import ConfigError

# RAM's image tokens (image_proj output), label embeddings and tag-head cross-attention inputs are
# all this wide; hard-coded (512) in the official code.
RAM_TOKEN_WIDTH = 512


@dataclass(frozen=True)
class SwinConfig:
    """Swin-L/384, as ``config_swinL_384.json`` plus the constructor arguments ``RAMLora`` passes."""

    img_size: int = 384
    patch_size: int = 4
    in_chans: int = 3
    embed_dim: int = 192
    depths: tuple = (2, 2, 18, 2)
    num_heads: tuple = (6, 12, 24, 48)
    window_size: int = 12
    mlp_ratio: float = 4.0
    patch_norm: bool = True
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "num_heads", tuple(int(h) for h in self.num_heads))
        if len(self.depths) != len(self.num_heads) or not self.depths:
            raise ConfigError(f"Swin depths {self.depths} and num_heads {self.num_heads} must have the same length.")
        for i, heads in enumerate(self.num_heads):
            if self.stage_dim(i) % heads:
                raise ConfigError(f"Swin stage {i}: width {self.stage_dim(i)} is not divisible by {heads} heads.")
        side = self.img_size // self.patch_size
        if self.img_size % self.patch_size or side % 2 ** (len(self.depths) - 1):
            raise ConfigError(
                f"Swin img_size {self.img_size} must be divisible by patch_size x 2^(stages-1) "
                f"= {self.patch_size * 2 ** (len(self.depths) - 1)}."
            )
        for i in range(len(self.depths)):
            res, window = self.stage_resolution(i), self.stage_window(i)
            if res % window:
                raise ConfigError(f"Swin stage {i}: resolution {res} is not a multiple of the window {window}.")

    @property
    def num_features(self) -> int:
        """Width of the final stage: what ``image_proj`` reads (1536 for Swin-L)."""
        return self.stage_dim(len(self.depths) - 1)

    @property
    def num_tokens(self) -> int:
        """1 pooled token + the final stage's tokens (145 at 384)."""
        return 1 + self.stage_resolution(len(self.depths) - 1) ** 2

    def stage_dim(self, stage: int) -> int:
        return self.embed_dim * 2 ** stage

    def stage_resolution(self, stage: int) -> int:
        return self.img_size // self.patch_size // 2 ** stage

    def stage_window(self, stage: int) -> int:
        # Official SwinTransformerBlock: a stage no bigger than the window is one window, unshifted.
        return min(self.window_size, self.stage_resolution(stage))

    def stage_shift(self, stage: int, block: int) -> int:
        if block % 2 == 0 or self.stage_resolution(stage) <= self.window_size:
            return 0
        return self.window_size // 2


@dataclass(frozen=True)
class TaggingHeadConfig:
    """RAM's Query2Label tag decoder: ``q2l_config.json`` with ``encoder_width = 512``.

    BERT layers with only the cross-attention (the self-attention and embeddings are deleted by
    ``del_selfattention``), queried by one learned embedding per tag class.
    """

    num_classes: int = 4585
    hidden_size: int = 768
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 3072
    layer_norm_eps: float = 1e-12
    encoder_width: int = RAM_TOKEN_WIDTH

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"tag head hidden_size {self.hidden_size} is not divisible by {self.num_heads} heads.")
        if min(self.num_classes, self.hidden_size, self.num_layers, self.num_heads, self.intermediate_size) < 1:
            raise ConfigError(f"tag head config has a non-positive size: {self}")

    @property
    def has_wordvec_proj(self) -> bool:
        # Official: Linear(512, hidden) only when hidden != 512, else nn.Identity (no tensors).
        return self.hidden_size != self.encoder_width


@dataclass(frozen=True)
class RAMConfig:
    """The image encoder (always) and the tag head (only when tags are wanted)."""

    swin: SwinConfig = field(default_factory=SwinConfig)
    token_width: int = RAM_TOKEN_WIDTH
    tagging: Optional[TaggingHeadConfig] = None

    def with_tagging(self, tagging: TaggingHeadConfig | None = TaggingHeadConfig()) -> "RAMConfig":
        return RAMConfig(self.swin, self.token_width, tagging)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> "RAMConfig":
        try:
            swin = SwinConfig(**cfg.get("swin", {}))
            tagging = cfg.get("tagging")
            tagging = TaggingHeadConfig(**tagging) if tagging else None
            return cls(swin, int(cfg.get("token_width", RAM_TOKEN_WIDTH)), tagging)
        except TypeError as err:
            raise ConfigError(f"not a RAM config: {err}") from None

    @classmethod
    def from_manifest(cls, cfg: Mapping[str, Any], *, tagging: TaggingHeadConfig | None = None) -> "RAMConfig":
        """The ``config`` of the reference manifest / the official ``config_swin*.json`` fields."""
        if cfg.get("ape", False):
            raise ConfigError("absolute position embeddings (ape=True) are not used by RAM and not supported.")
        swin = SwinConfig(
            img_size=cfg.get("image_res", cfg.get("img_size", 384)),
            patch_size=cfg.get("patch_size", 4),
            embed_dim=cfg["embed_dim"],
            depths=cfg["depths"],
            num_heads=cfg["num_heads"],
            window_size=cfg["window_size"],
            mlp_ratio=cfg.get("mlp_ratio", 4.0),
            patch_norm=cfg.get("patch_norm", True),
        )
        if "vision_width" in cfg and cfg["vision_width"] != swin.num_features:
            raise ConfigError(f"vision_width {cfg['vision_width']} != embed_dim * 2^(stages-1) = {swin.num_features}")
        return cls(swin, int(cfg.get("image_proj_out", RAM_TOKEN_WIDTH)), tagging)


class _ShapeTable(dict):
    def __missing__(self, key):
        raise ConfigError(f"missing tensor {key!r}")


_BLOCK = re.compile(r"^visual_encoder\.layers\.(\d+)\.blocks\.(\d+)\.")
_TAG_LAYER = re.compile(r"^tagging_head\.encoder\.layer\.(\d+)\.")


def infer_ram_config(
    shapes: Mapping[str, Any], *, img_size: int = 384, tagging: bool = True, tag_head_heads: int = 4
) -> RAMConfig:
    """Read a RAM config back from a state dict's keys and shapes (official key names).

    Two numbers are not in the weights: the input size (always 384 for AddSR's RAM) and the tag
    head's head count (4, from ``q2l_config.json``); pass them if a checkpoint differs.
    ``shapes`` maps key -> tensor or shape.
    """
    shape = _ShapeTable({k: tuple(getattr(v, "shape", v)) for k, v in shapes.items()})
    need = ("visual_encoder.patch_embed.proj.weight", "image_proj.weight")
    missing = [k for k in need if k not in shape]
    if missing:
        raise ConfigError(f"cannot read a RAM config: missing {missing}")
    embed_dim, _, patch, _ = shape["visual_encoder.patch_embed.proj.weight"]
    blocks: dict[int, set] = {}
    for key in shape:
        m = _BLOCK.match(key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    stages = sorted(blocks)
    if stages != list(range(len(stages))) or not stages:
        raise ConfigError(f"cannot read a RAM config: Swin stages found {stages}")
    depths = tuple(max(blocks[s]) + 1 for s in stages)
    tables = [shape[f"visual_encoder.layers.{s}.blocks.0.attn.relative_position_bias_table"] for s in stages]
    num_heads = tuple(t[1] for t in tables)
    # The first stage is always bigger than the window, so its table has (2*window-1)^2 rows.
    window = (round(tables[0][0] ** 0.5) + 1) // 2
    hidden = shape["visual_encoder.layers.0.blocks.0.mlp.fc1.weight"][0]
    swin = SwinConfig(
        img_size=img_size, patch_size=patch, embed_dim=embed_dim, depths=depths, num_heads=num_heads,
        window_size=window, mlp_ratio=hidden / embed_dim,
        patch_norm="visual_encoder.patch_embed.norm.weight" in shape,
    )
    head = None
    if tagging and "label_embed" in shape:
        layers = {int(m.group(1)) for m in map(_TAG_LAYER.match, shape) if m}
        query = shape["tagging_head.encoder.layer.0.crossattention.self.query.weight"]
        head = TaggingHeadConfig(
            num_classes=shape["label_embed"][0],
            hidden_size=query[0],
            num_layers=len(layers),
            num_heads=tag_head_heads,
            intermediate_size=shape["tagging_head.encoder.layer.0.intermediate.dense.weight"][0],
            encoder_width=shape["label_embed"][1],
        )
    return RAMConfig(swin, shape["image_proj.weight"][0], head)
