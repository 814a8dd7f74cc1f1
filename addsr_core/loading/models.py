"""Load the AddSR UNet/ControlNet and the SD2 VAE from every layout users have.

- diffusers folders (``config.json`` + safetensors or .bin), root or subfolder;
- the SD2 single-file checkpoint (``first_stage_model.*``) or an LDM-layout VAE file, for the VAE;
- our packed single ``.safetensors`` (see :mod:`addsr_core.loading.pack`).
Every path is strict and built on the meta device, so a 1.1B UNet never exists twice.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..models import AutoencoderKL, ControlNetModel, UNet2DConditionModel, UNetConfig, VAEConfig
from .identify import describe_checkpoint
from .io import CheckpointError, assign_state_dict, read_state_dict, unwrap_state_dict
from .keymaps import looks_like_ldm_vae, ldm_vae_to_diffusers, rename_legacy_vae_keys

# Only these keys are read from a big single-file checkpoint when we want its VAE.
VAE_PREFIXES = ("first_stage_model.", "vae.", "encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)


def _subfolder(path: Path, name: str) -> Path:
    """Accept the release root (with ``name/`` inside) or the subfolder itself."""
    return path / name if (path / name / "config.json").is_file() else path


def read_diffusers_folder(folder: str | os.PathLike, name: str, *, dtype=None) -> tuple[dict, dict, str]:
    folder = _subfolder(Path(folder), name)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(
            f"No {name} config.json in {str(folder)!r}. Point to the AddSR release folder "
            f"(containing {name}/) or to the {name}/ folder itself."
        )
    config = json.loads(config_file.read_text())
    for weights in WEIGHT_NAMES:
        if (folder / weights).is_file():
            file = folder / weights
            return config, unwrap_state_dict(read_state_dict(file, family=name, dtype=dtype)), str(file)
    raise CheckpointError(f"No weights in {str(folder)!r}: expected one of {WEIGHT_NAMES}.")


def write_diffusers_folder(folder: str | os.PathLike, config: dict, state_dict, weights: str = WEIGHT_NAMES[0]) -> Path:
    """``folder/config.json`` + ``folder/<weights>`` (safetensors): the layout ``read_diffusers_folder`` reads."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(folder / weights))
    return folder


def _check_class(config: dict, expected: str, source: str) -> None:
    got = config.get("_class_name")
    if got is not None and got != expected:
        raise CheckpointError(f"{source!r} holds a {got}, but a {expected} was expected here.")


def _build(cls, config, operations=None):
    with torch.device("meta"):
        return cls(config, operations)


def _assign(module, sd, family, source, dtype, device):
    try:
        return assign_state_dict(module, sd, family=family, source=source, dtype=dtype, device=device)
    except CheckpointError as err:
        raise CheckpointError(f"{err}\nThe file looks like {describe_checkpoint(sd.keys())}.") from None


# ``operations`` everywhere below: the layer classes the network is built from (default torch.nn;
# a host such as ComfyUI passes its own, see addsr_core.models.operations). Same keys either way.


def build_unet(config: UNetConfig, state_dict: dict, *, source: str, dtype=None, device="cpu",
               operations=None) -> UNet2DConditionModel:
    return _assign(_build(UNet2DConditionModel, config, operations), state_dict, "AddSR UNet", source, dtype, device).eval()


def build_controlnet(config: UNetConfig, state_dict: dict, *, source: str, dtype=None, device="cpu",
                     operations=None) -> ControlNetModel:
    return _assign(_build(ControlNetModel, config, operations), state_dict, "AddSR ControlNet", source, dtype, device).eval()


def build_vae(config: VAEConfig, state_dict: dict, *, source: str, dtype=None, device="cpu",
              operations=None) -> AutoencoderKL:
    return _assign(_build(AutoencoderKL, config, operations), state_dict, "SD2 VAE (AutoencoderKL)", source, dtype,
                   device).eval()


def load_unet(path, *, dtype=None, device="cpu", operations=None) -> UNet2DConditionModel:
    config, sd, source = read_diffusers_folder(path, "unet", dtype=dtype)
    _check_class(config, "UNet2DConditionModel", source)
    cfg = UNetConfig.from_diffusers(config)
    if not cfg.use_image_cross_attention:
        raise CheckpointError(f"{source!r}: config lacks use_image_cross_attention=true; this is not an AddSR/SeeSR UNet.")
    return build_unet(cfg, sd, source=source, dtype=dtype, device=device, operations=operations)


def load_controlnet(path, *, dtype=None, device="cpu", operations=None) -> ControlNetModel:
    config, sd, source = read_diffusers_folder(path, "controlnet", dtype=dtype)
    _check_class(config, "ControlNetModel", source)
    return build_controlnet(UNetConfig.from_diffusers(config), sd, source=source, dtype=dtype, device=device,
                            operations=operations)


def vae_state_dict_from_any(sd: dict) -> dict:
    """Normalise a VAE state dict of any supported layout to our (diffusers) key names."""
    if looks_like_ldm_vae(sd):
        return ldm_vae_to_diffusers(sd)
    if any(k.startswith("vae.") for k in sd):  # a packed file of ours that carries the VAE
        sd = {k[4:]: v for k, v in sd.items() if k.startswith("vae.")}
    return rename_legacy_vae_keys(sd)


def infer_vae_config(sd: dict, *, norm_num_groups: int = 32, scaling_factor: float = 0.18215) -> VAEConfig:
    """Read the VAE geometry off a (diffusers-layout) state dict; group count and scale are not in it."""
    levels = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.down_blocks.")})
    if not levels or "decoder.conv_in.weight" not in sd:
        raise CheckpointError(f"not a VAE state dict: it looks like {describe_checkpoint(sd.keys())}")
    channels = tuple(sd[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in levels)
    layers = len({k.split(".")[4] for k in sd if k.startswith("encoder.down_blocks.0.resnets.")})
    return VAEConfig(
        in_channels=sd["encoder.conv_in.weight"].shape[1], out_channels=sd["decoder.conv_out.weight"].shape[0],
        latent_channels=sd["decoder.conv_in.weight"].shape[1], block_out_channels=channels, layers_per_block=layers,
        norm_num_groups=norm_num_groups, scaling_factor=scaling_factor,
    )


def load_vae(path, *, dtype=None, device="cpu", config: VAEConfig | None = None, operations=None) -> AutoencoderKL:
    """A diffusers ``vae/`` folder, or a single file (SD2 checkpoint, LDM VAE, diffusers VAE)."""
    path = Path(path)
    if path.is_dir():
        cfg_dict, sd, source = read_diffusers_folder(path, "vae", dtype=dtype)
        _check_class(cfg_dict, "AutoencoderKL", source)
        config = config or VAEConfig.from_diffusers(cfg_dict)
    else:
        source = str(path)
        sd = vae_state_dict_from_any(unwrap_state_dict(read_state_dict(path, family="VAE", dtype=dtype, prefixes=VAE_PREFIXES)))
        return build_vae(config or infer_vae_config(sd), sd, source=source, dtype=dtype, device=device,
                         operations=operations)
    return build_vae(config, vae_state_dict_from_any(sd), source=source, dtype=dtype, device=device,
                     operations=operations)
