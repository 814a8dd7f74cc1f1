"""Load StableSR from the files people have.

- The official Lightning checkpoints ``stablesr_000117.ckpt`` (SD 2.1-512 base),
  ``stablesr_768v_000139.ckpt`` (SD 2.1-768-v) and ``stablesr_turbo.ckpt`` (SD-Turbo):
  ``model.diffusion_model.*`` (SD2 UNet + ``.spade.``), ``structcond_stage_model.*``, and the
  SD2 VAE / OpenCLIP text encoder, which are not ours to load here.
- The sd-webui "SR module" files (only the ``.spade.`` and ``structcond_stage_model.*`` tensors),
  applied on top of a base SD 2.x / SD-Turbo checkpoint (LDM single file or diffusers ``unet/``).
  A base may also be given with a full StableSR file: the base then supplies every non-SFT UNet
  weight.
- The CFW VAE ``vqgan_cfw_00011.ckpt`` (LDM VAE + ``decoder.fusion_layer_*``, no prefix, maybe
  ``loss.*``), or the webui split into a VAE-only file and a CFW-only file.
Everything is built on the meta device and assigned strictly.
"""
from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Mapping

import torch

from ..loading.identify import describe_checkpoint
from ..loading.io import SAFETENSORS_SUFFIXES, CheckpointError, assign_state_dict, expected_layout, open_safetensors
from ..loading.keymaps import LDM_VAE_PREFIX, ldm_vae_to_diffusers, looks_like_ldm_vae, rename_legacy_vae_keys
from ..loading.keymaps_unet import LDM_UNET_PREFIX, ldm_unet_to_diffusers
from ..loading.models import infer_vae_config, read_diffusers_folder
from ..models import UNetConfig, VAEConfig
from .cfw import CFWAutoencoder
from .checkpoint import read_checkpoint, read_checkpoint_with_metadata
from .encoder import TimeAwareEncoderConfig
from .metadata import recorded_heads
from .model import StableSRConfig, StableSRModel

STRUCTCOND_PREFIX = "structcond_stage_model."
FUSION_PREFIX = "decoder.fusion_layer_"


def _is_sft_key(key: str) -> bool:
    return ".spade." in key


def ldm_layers_per_block(keys, prefix: str = LDM_UNET_PREFIX) -> int:
    """Resnets per level of an LDM-layout UNet, from its block numbering (the keys of a whole UNet
    or of an SR module alone). Blocks ``1..`` hold resnets, except every ``layers_per_block + 1``-th,
    the downsample: so the first downsample, or the first gap in the resnet blocks, tells. A one-level
    UNet has neither: all its input blocks after ``conv_in`` are resnets. 2 (SD 2.x) when the keys do not tell."""
    pattern = re.compile(re.escape(prefix) + r"input_blocks\.(\d+)\.(\d+)\.(op\.)?")
    resnets, ops = set(), set()
    for key in keys:
        if (m := pattern.match(key)) and int(m[1]) > 0:
            (ops if m[3] else resnets).add(int(m[1]))
    if ops:
        return min(ops) - 1
    if not resnets:
        return 2
    gap = next(n for n in range(1, max(resnets) + 2) if n not in resnets)
    return gap - 1


def split_stablesr_state_dict(sd: dict) -> tuple[dict, dict, dict]:
    """(UNet non-SFT tensors, UNet SFT tensors, encoder tensors), the UNet parts in our key names."""
    unet, unplaced = ldm_unet_to_diffusers(sd, layers_per_block=ldm_layers_per_block(sd.keys()))
    if unplaced:
        raise CheckpointError(f"these UNet tensors do not fit an SD2 UNet: {sorted(unplaced)[:10]}")
    base = {k: v for k, v in unet.items() if not _is_sft_key(k)}
    sft = {k: v for k, v in unet.items() if _is_sft_key(k)}
    encoder = {k[len(STRUCTCOND_PREFIX):]: v for k, v in sd.items() if k.startswith(STRUCTCOND_PREFIX)}
    return base, sft, encoder


def read_base_unet(path: str | os.PathLike) -> tuple[dict, str]:
    """A base SD 2.x / SD-Turbo UNet in our key names: LDM single file or diffusers ``unet/`` folder."""
    path = Path(path)
    if path.is_dir():
        _, sd, source = read_diffusers_folder(path, "unet")
        return sd, source
    sd = read_checkpoint(path, family="SD2 base", prefixes=(LDM_UNET_PREFIX,))
    return base_unet_from_state_dict(sd, source=str(path)), str(path)


def base_unet_from_state_dict(sd: Mapping[str, torch.Tensor], *, source: str = "the base model") -> dict:
    """A base SD 2.x UNet in our key names from an in-memory state dict: a whole LDM checkpoint
    (``model.diffusion_model.*``), a bare LDM UNet (what ComfyUI's ``diffusion_model.state_dict()``
    gives) or diffusers keys. SFT tensors, if any, are dropped (the SR module supplies them)."""
    if not any(k.startswith(LDM_UNET_PREFIX) for k in sd):
        if any(k.startswith("input_blocks.") for k in sd):  # a bare LDM UNet
            sd = {LDM_UNET_PREFIX + k: v for k, v in sd.items()}
        elif any(k.startswith("down_blocks.") for k in sd):  # diffusers keys
            return {k: v for k, v in sd.items() if not _is_sft_key(k)}
        else:
            raise CheckpointError(f"{source} has no SD2 UNet: it looks like {describe_checkpoint(sd.keys())}.")
    base, _, _ = split_stablesr_state_dict({k: v for k, v in sd.items() if k.startswith(LDM_UNET_PREFIX)})
    return base


# Architectures a file may hold, tried in order: the released SD2 size; failing that, the
# SD2-family architecture read off the shapes (:func:`config_from_shapes`). Never the tiny test
# size: our own files of other head layouts record their heads (:mod:`.metadata`).
def known_configs() -> list[StableSRConfig]:
    return [StableSRConfig()]


SD2_HEAD_CHANNELS = 64  # SD 2.x (and SD-Turbo) attention: num_head_channels 64 at every level


def _count(shapes: Mapping, template: str) -> int:
    n = 0
    while template.format(n) in shapes:
        n += 1
    return n


def unet_config_from_shapes(shapes: Mapping[str, tuple]) -> UNetConfig:
    """An SD2-family UNet's configuration read off its tensor shapes (our key names, no prefix).

    Depth, widths, resnets per level, which levels attend, transformer depth and text width are in
    the shapes; the head count is not, so it follows SD 2.x: ``width / 64`` heads."""
    from .model import sd2_unet_config

    levels = _count(shapes, "down_blocks.{}.resnets.0.conv1.weight")
    if not levels or "conv_in.weight" not in shapes:
        raise CheckpointError("no SD2-style UNet in these weights")
    widths = tuple(shapes[f"down_blocks.{i}.resnets.0.conv1.weight"][0] for i in range(levels))
    down_attn = [f"down_blocks.{i}.attentions.0.proj_in.weight" in shapes for i in range(levels)]
    up_attn = [f"up_blocks.{i}.attentions.0.proj_in.weight" in shapes for i in range(_count(shapes, "up_blocks.{}.resnets.0.conv1.weight"))]
    to_k = next((v for k, v in shapes.items() if k.endswith(".attn2.to_k.weight")), None)
    depth = _count(shapes, "mid_block.attentions.0.transformer_blocks.{}.norm1.weight")
    return sd2_unet_config(
        in_channels=shapes["conv_in.weight"][1],
        out_channels=shapes.get("conv_out.weight", (4,))[0],
        block_out_channels=widths,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in down_attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attn),
        layers_per_block=_count(shapes, "down_blocks.0.resnets.{}.conv1.weight"),
        attention_heads=tuple(max(1, w // SD2_HEAD_CHANNELS) for w in widths),
        cross_attention_dim=to_k[1] if to_k is not None else 1024,
        transformer_layers_per_block=depth or 1,
    )


def encoder_config_from_shapes(shapes: Mapping[str, tuple]) -> TimeAwareEncoderConfig:
    """The time-aware encoder's configuration read off its shapes (official names, no prefix).
    The attention head count is not in the shapes: the official 4."""
    mc = shapes["time_embed.0.weight"][1]
    mult, blocks_per_level, attention, ds = [], [], set(), 1
    n, level_blocks, level_mult = 1, 0, None
    while f"input_blocks.{n}.0.op.weight" in shapes or f"input_blocks.{n}.0.out_layers.3.weight" in shapes:
        if f"input_blocks.{n}.0.op.weight" in shapes:  # a downsample ends the level
            mult.append(level_mult)
            blocks_per_level.append(level_blocks)
            level_blocks, ds = 0, ds * 2
        else:
            level_mult = shapes[f"input_blocks.{n}.0.out_layers.3.weight"][0] // mc
            level_blocks += 1
            if f"input_blocks.{n}.1.qkv.weight" in shapes:
                attention.add(ds)
        n += 1
    mult.append(level_mult)
    blocks_per_level.append(level_blocks)
    if len(set(blocks_per_level)) != 1 or None in mult:
        raise CheckpointError(f"time-aware encoder with uneven levels ({blocks_per_level} blocks)")
    return TimeAwareEncoderConfig(
        in_channels=shapes["input_blocks.0.0.weight"][1],
        model_channels=mc,
        out_channels=shapes["fea_tran.0.out_layers.3.weight"][0],
        num_res_blocks=blocks_per_level[0],
        attention_resolutions=tuple(sorted(attention, reverse=True)),
        channel_mult=tuple(mult),
    )


def config_from_shapes(shapes: Mapping[str, tuple], prediction_type: str = "epsilon") -> StableSRConfig:
    """A StableSR configuration from ``unet.*`` / ``struct_encoder.*`` shapes (see the two readers)."""
    unet = unet_config_from_shapes({k[5:]: v for k, v in shapes.items() if k.startswith("unet.")})
    encoder = encoder_config_from_shapes({k[15:]: v for k, v in shapes.items() if k.startswith("struct_encoder.")})
    return StableSRConfig(unet=unet, encoder=encoder, prediction_type=prediction_type)


def infer_stablesr_config(
    state_dict: Mapping[str, torch.Tensor], prediction_type: str = "epsilon", *, metadata: Mapping[str, str] | None = None
) -> StableSRConfig:
    """The architecture whose tensor names and shapes are exactly ``state_dict``'s (``unet.*`` and
    ``struct_encoder.*``); the releases do not record their configuration. The released SD2 size
    first, then an SD2-family UNet of another depth or width (e.g. a small base), read off the shapes.

    The head counts are not in the shapes: those recorded in ``metadata`` (the file's, see
    :mod:`.metadata`; our own files record them), else the SD 2.x ones (64-channel UNet heads,
    4 encoder heads), as in every release."""
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    unet_heads, encoder_heads = recorded_heads(metadata, "these weights")
    to_k = shapes.get("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight")
    candidates = []
    for config in known_configs():
        if to_k is not None and len(to_k) == 2 and to_k[1] != config.unet.cross_attention_dim:  # text width varies
            config = replace(config, unet=replace(config.unet, cross_attention_dim=to_k[1]))
        candidates.append(config)
    try:
        candidates.append(config_from_shapes(shapes))
    except (CheckpointError, KeyError, TypeError, ValueError, ZeroDivisionError):
        pass
    if unet_heads is not None:
        candidates = [replace(c, unet=replace(c.unet, attention_heads=unet_heads))
                      for c in candidates if len(c.unet.block_out_channels) == len(unet_heads)]
    if encoder_heads is not None:
        candidates = [replace(c, encoder=replace(c.encoder, num_heads=encoder_heads)) for c in candidates]
    for config in candidates:
        try:
            with torch.device("meta"):
                expected = expected_layout(StableSRModel(config))
        except (ValueError, IndexError, RuntimeError):  # a reading that does not build
            continue
        if expected == shapes:
            return replace(config, prediction_type=prediction_type)
    width = shapes.get("unet.conv_in.weight", ("?",))[0]
    recorded = "" if unet_heads is None and encoder_heads is None else (
        f" with the heads its metadata records (UNet {list(unet_heads) if unet_heads else 'unrecorded'}, "
        f"encoder {encoder_heads or 'unrecorded'})")
    raise CheckpointError(
        f"these weights are not a StableSR model of a known size{recorded} (UNet width {width}; the SD 2.x UNet has 320). "
        "StableSR works with SD 2.x-512, SD 2.x-768-v and SD-Turbo bases only."
    )


def build_stablesr(config: StableSRConfig, state_dict: dict, *, source: str, dtype=None, device="cpu",
                   operations=None) -> StableSRModel:
    """``state_dict`` keys: ``unet.*`` (ours, incl. spade) and ``struct_encoder.*`` (official names).
    ``operations``: the layer classes (default torch.nn; see :mod:`addsr_core.models.operations`)."""
    with torch.device("meta"):
        model = StableSRModel(config, operations)
    try:
        assign_state_dict(model, state_dict, family="StableSR (SD2 UNet + SFT + time-aware encoder)", source=source, dtype=dtype, device=device)
    except CheckpointError as err:
        raise CheckpointError(f"{err}\nThe file looks like {describe_checkpoint(state_dict.keys())}.") from None
    return model.eval()


def load_stablesr(
    path: str | os.PathLike,
    *,
    base: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    prediction_type: str | None = None,
    config: StableSRConfig | None = None,
    dtype=None,
    device="cpu",
    operations=None,
) -> StableSRModel:
    """A StableSR checkpoint (full, or SR module + ``base``) -> :class:`StableSRModel`.

    ``base`` is a file/folder (:func:`read_base_unet`) or an in-memory UNet state dict
    (:func:`base_unet_from_state_dict`, e.g. ComfyUI's ``diffusion_model.state_dict()``).
    Without ``config`` the architecture is recognised from the tensor shapes, and the attention
    heads from the file's metadata where it records them (our own files), else SD 2.x's.
    ``prediction_type`` (else ``config``'s) defaults to "v_prediction" for files named like the
    768-v release (``*768v*``) and "epsilon" otherwise (the 512 and Turbo releases).
    """
    source = os.fspath(path)
    sd, metadata = read_checkpoint_with_metadata(path, family="StableSR", prefixes=(LDM_UNET_PREFIX, STRUCTCOND_PREFIX))
    unet_base, sft, encoder = split_stablesr_state_dict(sd)
    del sd
    if not sft or not encoder:
        raise CheckpointError(
            f"{source!r} is not a StableSR checkpoint (it has {len(sft)} SFT and {len(encoder)} time-aware encoder tensors); "
            f"it looks like {describe_checkpoint(checkpoint_keys(path))}."
        )
    if isinstance(base, Mapping):
        unet_base, source = base_unet_from_state_dict(base), f"{source} + the connected base model"
    elif base is not None:
        unet_base, base_source = read_base_unet(base)
        source = f"{source} + {base_source}"
    elif not unet_base:
        raise CheckpointError(
            f"{source!r} is a StableSR SR module (SFT layers + time-aware encoder only). Also give the base model it "
            "was made for: SD 2.1-512 (stablesr_000117 module), SD 2.1-768-v (768v module) or SD-Turbo."
        )
    if prediction_type is None:
        prediction_type = config.prediction_type if config is not None else guess_prediction_type(path)
    state = {f"unet.{k}": v for k, v in {**unet_base, **sft}.items()}
    state.update({f"struct_encoder.{k}": v for k, v in encoder.items()})
    if config is None:
        try:
            config = infer_stablesr_config(state, prediction_type, metadata=metadata)
        except CheckpointError as err:
            raise CheckpointError(f"{source!r}: {err}") from None
    config = replace(config, prediction_type=prediction_type)
    return build_stablesr(config, state, source=source, dtype=dtype, device=device, operations=operations)


def checkpoint_keys(path) -> list[str]:
    """Tensor names only (cheap for safetensors), to describe a file that was not what we expected."""
    if os.fspath(path).lower().endswith(SAFETENSORS_SUFFIXES):
        with open_safetensors(path) as f:
            return list(f.keys())
    return list(read_checkpoint(path).keys())


def guess_prediction_type(path) -> str:
    """The releases do not record it: the 768-v model is named ``*768v*``; the rest predict epsilon."""
    return "v_prediction" if "768" in Path(path).name.lower() else "epsilon"


def cfw_state_dict_from_any(sd: dict) -> tuple[dict, dict]:
    """(VAE tensors in our names, fusion tensors in official names) from any CFW/VAE layout."""
    sd = {(k[len(LDM_VAE_PREFIX):] if k.startswith(LDM_VAE_PREFIX) else k): v for k, v in sd.items() if not k.startswith("loss.")}
    fusion = {k: v for k, v in sd.items() if k.startswith(FUSION_PREFIX)}
    rest = {k: v for k, v in sd.items() if not k.startswith(FUSION_PREFIX)}
    if looks_like_ldm_vae(rest):
        vae = ldm_vae_to_diffusers(rest)
    else:
        vae = rename_legacy_vae_keys({(k[4:] if k.startswith("vae.") else k): v for k, v in rest.items()})
        vae = {k: v for k, v in vae.items() if k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv."))}
    return vae, fusion


def load_cfw_vae(
    path: str | os.PathLike | None,
    *,
    fusion_path: str | os.PathLike | None = None,
    vae_state_dict: Mapping[str, torch.Tensor] | None = None,
    config: VAEConfig | None = None,
    dtype=None,
    device="cpu",
    operations=None,
) -> CFWAutoencoder:
    """``vqgan_cfw_00011.ckpt`` (or .safetensors), or a VAE file plus the CFW-only ``fusion_path``.

    ``vae_state_dict`` (any VAE layout, e.g. ComfyUI's ``first_stage_model.state_dict()``)
    supplies the plain VAE part when the files hold only the fusion layers. ``operations``: the
    layer classes (default torch.nn; see :mod:`addsr_core.models.operations`).
    """
    if path is None:
        vae, fusion, source = {}, {}, "no CFW file"
    else:
        vae, fusion = cfw_state_dict_from_any(read_checkpoint(path, family="CFW VAE"))
        source = os.fspath(path)
    if vae_state_dict is not None and not vae:
        vae, _ = cfw_state_dict_from_any(dict(vae_state_dict))
        source = f"{source} + the connected VAE"
    if fusion_path is not None:
        extra_vae, extra_fusion = cfw_state_dict_from_any(read_checkpoint(fusion_path, family="CFW fusion layers"))
        if not extra_fusion:
            raise CheckpointError(f"{os.fspath(fusion_path)!r} has no decoder.fusion_layer_* tensors: it is not a CFW file.")
        fusion.update(extra_fusion)
        vae = vae or extra_vae
        source = f"{source} + {os.fspath(fusion_path)}"
    if not vae:
        raise CheckpointError(f"{source!r} holds only CFW fusion layers: also give the VAE they go with (e.g. the *_vae_only file).")
    if not fusion:
        raise CheckpointError(
            f"{source!r} is a plain VAE without CFW fusion layers: give the CFW-only file as well, or use it as an ordinary VAE."
        )
    config = config or infer_vae_config(vae)
    with torch.device("meta"):
        model = CFWAutoencoder(config, operations=operations)
    state = {**vae, **fusion}
    try:
        assign_state_dict(model, state, family="StableSR CFW VAE", source=source, dtype=dtype, device=device)
    except CheckpointError as err:
        raise CheckpointError(f"{err}\nThe file looks like {describe_checkpoint(state.keys())}.") from None
    return model.eval()
