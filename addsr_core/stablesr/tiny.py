"""Tiny StableSR networks with seeded weights: the real code paths at toy size, for tests and self-checks.

Channel counts are multiples of 32 because the official code hard-codes GroupNorm(32). The
weights are a pure function of the seed (CPU generator, parameters in registration order), so
outputs recorded from the official code for the same weights stay valid.
"""
from __future__ import annotations

import torch
from torch import nn

from ..models import VAEConfig
from .cfw import CFWAutoencoder
from .encoder import TimeAwareEncoderConfig
from .model import StableSRConfig, StableSRModel, sd2_unet_config

TINY_CONTEXT_DIM = 16
TINY_STABLESR = StableSRConfig(
    unet=sd2_unet_config(block_out_channels=(32, 64, 64, 64), attention_heads=(4, 8, 8, 8), cross_attention_dim=TINY_CONTEXT_DIM),
    encoder=TimeAwareEncoderConfig(model_channels=64, out_channels=32),
)
TINY_CFW = VAEConfig(block_out_channels=(32, 32, 64, 64), layers_per_block=2, norm_num_groups=32)


def seeded_weights(module: nn.Module, seed: int, std: float = 0.1) -> nn.Module:
    """Every parameter ~ N(0, std^2) from one CPU generator; nothing left at zero (no zero-init convs)."""
    generator = torch.Generator("cpu").manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    return module


def tiny_stablesr(seed: int = 0, prediction_type: str = "epsilon") -> StableSRModel:
    from dataclasses import replace

    return seeded_weights(StableSRModel(replace(TINY_STABLESR, prediction_type=prediction_type)), seed).eval()


def tiny_cfw(seed: int = 0) -> CFWAutoencoder:
    return seeded_weights(CFWAutoencoder(TINY_CFW), seed).eval()


# --- tiny files in the real release layouts ---------------------------------------------------------

TINY_FILES = {
    "full": "stablesr_tiny_000117.ckpt",  # like stablesr_000117.ckpt / stablesr_turbo.ckpt (epsilon)
    "full_768v": "stablesr_tiny_768v_000139.ckpt",  # like stablesr_768v_000139.ckpt (v-prediction by name)
    "sr_module": "stablesr_tiny_webui_sr_module.safetensors",  # spade + structcond only (the webui file)
    "base": "stablesr_tiny_sd2_base.safetensors",  # SD2-like single file: UNet + VAE (the module's base)
    "cfw": "vqgan_cfw_tiny_00011.ckpt",  # like vqgan_cfw_00011.ckpt (VAE + fusion layers + loss.*)
    "cfw_vae_only": "vqgan_cfw_tiny_vae_only.safetensors",
    "cfw_only": "vqgan_cfw_tiny_cfw_only.safetensors",
}


def ldm_stablesr_state(model: StableSRModel) -> dict:
    """The model in the official single-file names (``model.diffusion_model.*`` with ``.spade.``,
    ``structcond_stage_model.*``)."""
    from ..loading.keymaps_unet import diffusers_unet_to_ldm

    sd = model.state_dict()
    out = diffusers_unet_to_ldm({k[5:]: v for k, v in sd.items() if k.startswith("unet.")},
                                layers_per_block=model.config.unet.layers_per_block)
    out.update({"structcond_stage_model." + k[len("struct_encoder."):]: v for k, v in sd.items() if k.startswith("struct_encoder.")})
    return {k: v.contiguous() for k, v in out.items()}


def ldm_cfw_state(cfw: CFWAutoencoder) -> tuple[dict, dict]:
    """(plain VAE in LDM names without prefix, ``decoder.fusion_layer_*``), as in vqgan_cfw_00011.ckpt."""
    from ..loading.keymaps import diffusers_vae_to_ldm

    sd = cfw.state_dict()
    fusion = {k: v.contiguous() for k, v in sd.items() if ".fusion_layer_" in k}
    plain = diffusers_vae_to_ldm({k: v for k, v in sd.items() if k not in fusion}, prefix="")
    return {k: v.contiguous() for k, v in plain.items()}, fusion


def _lightning(state_dict: dict, step: int, metadata: dict | None = None) -> dict:
    """What a Lightning ModelCheckpoint writes around the weights (metadata a safe reader skips),
    plus our ``metadata`` strings (:mod:`.metadata`: the head layout, which the shapes do not give)."""
    out = {"epoch": 0, "global_step": step, "pytorch-lightning_version": "1.4.2", "state_dict": state_dict}
    if metadata:
        from ..loading.lightning import PICKLE_METADATA_KEY

        out[PICKLE_METADATA_KEY] = dict(metadata)
    return out


def stablesr_config_for_base(base_unet) -> StableSRConfig:
    """A StableSR configuration whose UNet is ``base_unet``'s (any SD2-family UNet state dict: LDM
    single file, bare LDM UNet or our names), with a tiny time-aware encoder that has one level
    per UNet level, so it feeds every width the UNet's SFT layers ask for."""
    from dataclasses import replace

    from .loading import base_unet_from_state_dict, unet_config_from_shapes

    unet = unet_config_from_shapes({k: tuple(v.shape) for k, v in base_unet_from_state_dict(base_unet).items()})
    levels = len(unet.block_out_channels)
    mult = (TINY_STABLESR.encoder.channel_mult + (TINY_STABLESR.encoder.channel_mult[-1],) * levels)[:levels]
    return replace(TINY_STABLESR, unet=unet, encoder=replace(TINY_STABLESR.encoder, channel_mult=mult))


def _stablesr_on_base(config: StableSRConfig, seed: int, base: dict | None) -> StableSRModel:
    """Seeded weights; with ``base`` (our UNet names) the UNet's non-SFT weights are the base's,
    as in the releases (e.g. stablesr_turbo.ckpt holds SD-Turbo's UNet)."""
    model = seeded_weights(StableSRModel(config), seed).eval()
    if base is not None:
        missing, unexpected = model.unet.load_state_dict(base, strict=False)
        if unexpected or any(".spade." not in k for k in missing):
            raise ValueError(f"the base UNet does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


def write_tiny_stablesr_files(models_dir, seed: int = 0, context_dim: int = TINY_CONTEXT_DIM, *, base_unet=None) -> dict:
    """Tiny seeded StableSR files in the real release layouts, under ``models_dir/stablesr``
    (and the SR module's base under ``models_dir/checkpoints``), for node, workflow and real-host tests.

    Returns ``{"StableSRModelLoader": {"model": ...}, "StableSRCFWLoader": {"cfw_file": ...},
    "CheckpointLoaderSimple": {"ckpt_name": ...}, "files": {kind: Path}, "context_dim": int}``:
    widget values (names relative to their model folder) per loader node type, every file written
    (keys of :data:`TINY_FILES`), and the text width the models expect from CLIP. ``context_dim``
    picks that width (the tiny UNet is otherwise fixed), e.g. to match a tiny CLIP.

    ``base_unet``: build for this base instead (a state dict of an SD2-family UNet, e.g. the
    ``model.diffusion_model.*`` tensors of the checkpoint a host loads as the MODEL): the UNet
    architecture, text width and non-SFT weights are the base's (``context_dim`` is ignored), so
    the SR module, and the full files with that MODEL connected as ``base_model``, fit it.
    """
    from dataclasses import replace
    from pathlib import Path

    from safetensors.torch import save_file

    from .metadata import stablesr_metadata

    models_dir = Path(models_dir)
    folder, checkpoints = models_dir / "stablesr", models_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    checkpoints.mkdir(parents=True, exist_ok=True)
    if base_unet is not None:
        from .loading import base_unet_from_state_dict

        config = stablesr_config_for_base(base_unet)
        base = {k: v.float() for k, v in base_unet_from_state_dict(base_unet).items()}
        context_dim = config.unet.cross_attention_dim
    else:
        config = replace(TINY_STABLESR, unet=replace(TINY_STABLESR.unet, cross_attention_dim=context_dim))
        base = None
    model = _stablesr_on_base(config, seed, base)
    model_v = _stablesr_on_base(replace(config, prediction_type="v_prediction"), seed + 1, base)
    cfw = tiny_cfw(seed + 2)
    plain, fusion = ldm_cfw_state(cfw)
    first_stage = {"first_stage_model." + k: v for k, v in plain.items()}
    files = {kind: (checkpoints if kind == "base" else folder) / name for kind, name in TINY_FILES.items()}

    ldm = ldm_stablesr_state(model)
    heads = stablesr_metadata(config)  # the tiny heads are not SD2's: the files say which they are
    torch.save(_lightning({**ldm, **first_stage}, 117, heads), files["full"])
    torch.save(_lightning({**ldm_stablesr_state(model_v), **first_stage}, 139, heads), files["full_768v"])
    save_file({k: v for k, v in ldm.items() if ".spade." in k or k.startswith("structcond_stage_model.")}, str(files["sr_module"]),
              metadata=heads)
    base = {k: v for k, v in ldm.items() if k.startswith("model.diffusion_model.") and ".spade." not in k}
    save_file({**base, **first_stage}, str(files["base"]))
    torch.save(_lightning({**plain, **fusion, "loss.logvar": torch.zeros(())}, 11), files["cfw"])
    save_file(plain, str(files["cfw_vae_only"]))
    save_file(fusion, str(files["cfw_only"]))
    return {
        "StableSRModelLoader": {"model": TINY_FILES["full"]},
        "StableSRCFWLoader": {"cfw_file": TINY_FILES["cfw"]},
        "CheckpointLoaderSimple": {"ckpt_name": TINY_FILES["base"]},
        "files": files,
        "context_dim": context_dim,
    }
