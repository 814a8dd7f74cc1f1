"""Conversions between ComfyUI's objects and addsr_core's, shared by the nodes."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from addsr_core.loading.keymaps import ldm_vae_to_diffusers, looks_like_ldm_vae, rename_legacy_vae_keys
from addsr_core.models import AutoencoderKL

from .comfy_bridge import AddSRInputError, ManagedModule

CATEGORY = "AddSR"
MIN_LR_SIDE = 8


def image_to_bchw(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [B,H,W,C] in [0,1] -> [B,3,H,W] float32; grayscale expanded, alpha dropped."""
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4:
        raise AddSRInputError(f"expected an IMAGE [batch, height, width, channels], got shape {tuple(image.shape)}")
    channels = image.shape[-1]
    if channels == 1:
        image = image.expand(-1, -1, -1, 3)
    elif channels == 4:
        image = image[..., :3]
    elif channels != 3:
        raise AddSRInputError(f"IMAGE has {channels} channels; AddSR needs RGB (3), grayscale (1) or RGBA (4)")
    if min(image.shape[1:3]) < MIN_LR_SIDE:
        raise AddSRInputError(f"image is {image.shape[2]}x{image.shape[1]}; AddSR needs at least {MIN_LR_SIDE} px per side")
    image = image.float()
    if not torch.isfinite(image).all():
        raise AddSRInputError("image contains NaN or infinite values")
    return image.permute(0, 3, 1, 2).clamp(0, 1).contiguous()


def bchw_to_image(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).float().cpu().clamp(0, 1).contiguous()


def alpha_of(image: torch.Tensor) -> torch.Tensor | None:
    return image[..., 3] if image.ndim == 4 and image.shape[-1] == 4 else None


def with_alpha(rgb: torch.Tensor, alpha: torch.Tensor | None) -> torch.Tensor:
    """[B,3,H,W] result -> ComfyUI IMAGE, with the LR's alpha [B,h,w] upscaled to match (if any)."""
    if alpha is None:
        return bchw_to_image(rgb)
    from addsr_core.imaging.prepare import upscale_alpha

    resized = upscale_alpha(alpha[:, None].float(), tuple(rgb.shape[-2:]))
    return torch.cat([bchw_to_image(rgb), bchw_to_image(resized)], dim=-1)


# A tile widget at 0 is left to the device, as the library's AUTO tiles; the tooltip says so.
AUTO_TILE_TOOLTIP = ("0: auto, the largest that fits the GPU's free memory (the measured default on a CPU); "
                     "halved automatically on out-of-memory.")


def resolve_tiles_for(options, device: torch.device, dtype: torch.dtype, *, lr_hw=None, processing_hw=None):
    """``options`` with its AUTO (0) tiles chosen as the library chooses them (``stages.resolve_tiles``):
    from ComfyUI's free memory on a GPU for an LR of ``lr_hw`` (or an upscaled LR of ``processing_hw``),
    the measured CPU defaults elsewhere."""
    from addsr_core.stages import resolve_tiles

    from . import comfy_bridge

    return resolve_tiles(options, device, dtype, lr_hw, free_bytes=comfy_bridge.free_memory(device),
                         processing_hw=processing_hw)


# What to connect when the text width is wrong; {base}: the SD 2.x checkpoint(s) the sampler's model needs.
SD2_CLIP_FIX = "connect the CLIP output of Load Checkpoint (an SD 2.x checkpoint, 1024 wide: {base}) to {target}"
ADDSR_BASE = "v2-1_512-ema-pruned.safetensors"


def conditioning_tensor(conditioning, what: str = "positive", *, width: int | None = None,
                        base: str = ADDSR_BASE) -> torch.Tensor:
    """The text embedding inside a ComfyUI CONDITIONING ([[tensor, {...}], ...]); with ``width``,
    checked against the model's cross-attention width before any work is done."""
    try:
        tensor = conditioning[0][0]
    except (TypeError, IndexError, KeyError):
        raise AddSRInputError(f"{what} is not a CONDITIONING; connect a CLIP Text Encode node") from None
    if not torch.is_tensor(tensor) or tensor.ndim != 3:
        raise AddSRInputError(f"{what} conditioning has an unexpected shape; connect a CLIP Text Encode node")
    if width is not None:
        check_width(tensor, width, what, SD2_CLIP_FIX.format(base=base, target="CLIP Text Encode"))
    return tensor


def check_width(embeds: torch.Tensor, width: int, what: str, fix: str) -> None:
    """The library's text-width check, with ``fix`` saying what to connect in ComfyUI (its
    TextWidthError reaches the UI through comfy_bridge.node_errors)."""
    from addsr_core.text.conditioning import check_text_width

    check_text_width(embeds, width, what=what, fix=fix)


def encode_text(clip, text: str) -> torch.Tensor:
    """A ComfyUI CLIP object (or any callable taking a list of prompts) -> [1,77,C]."""
    if hasattr(clip, "tokenize"):
        return clip.encode_from_tokens(clip.tokenize(text))
    return clip([text])


def encode_prompts(clip, prompts: list[str]) -> torch.Tensor:
    """One embedding row per prompt, [N,77,C]: the text stage of AddSR Prompt and the all-in-one node."""
    return torch.cat([encode_text(clip, p) for p in prompts])


@dataclass
class VAEHandle:
    """Our AutoencoderKL over the same weights as a ComfyUI VAE (built without a copy), managed by ComfyUI
    through its own ModelPatcher (see :func:`as_addsr_vae`)."""

    managed: ManagedModule

    @property
    def vae(self) -> AutoencoderKL:
        return self.managed.module


_VAE_CACHE_ATTR = "_addsr_vae_handle"


def as_addsr_vae(vae) -> VAEHandle:
    """Accept ComfyUI's VAE (from Load Checkpoint / Load VAE) or our own AutoencoderKL."""
    if isinstance(vae, VAEHandle):
        return vae
    if isinstance(vae, AutoencoderKL):
        return VAEHandle(ManagedModule(vae))
    cached = getattr(vae, _VAE_CACHE_ATTR, None)
    if cached is not None:
        return cached
    model = getattr(vae, "first_stage_model", None)
    if model is None:
        raise AddSRInputError("the vae input is not a VAE; connect the VAE output of Load Checkpoint (SD2 base)")
    from addsr_core.loading import CheckpointError, assign_state_dict
    from addsr_core.loading.models import infer_vae_config

    from . import comfy_bridge

    sd = model.state_dict()
    sd = ldm_vae_to_diffusers(sd) if looks_like_ldm_vae(sd) else rename_legacy_vae_keys(sd)
    latent = sd.get("decoder.conv_in.weight")
    if latent is None or latent.shape[1] != 4:
        raise AddSRInputError(
            "this VAE is not a Stable Diffusion 1/2 VAE (4 latent channels); AddSR needs the SD2 base VAE"
        )
    groups = next((m.num_groups for m in model.modules() if isinstance(m, torch.nn.GroupNorm)), 32)
    with torch.device("meta"):
        ours = AutoencoderKL(infer_vae_config(sd, norm_num_groups=groups), operations=comfy_bridge.operations(latent.dtype))
    try:
        # assign=True shares storage with ComfyUI's weights: no second copy of them is loaded. (Where
        # ManagedModule makes the convs NHWC, as the precision policy does on a CPU and in bf16/fp16,
        # that copies the conv weights once; NHWC decodes are faster and need less activation memory.)
        assign_state_dict(ours, sd, family="SD2 VAE", source="the connected VAE")
    except CheckpointError as err:
        raise AddSRInputError(f"the connected VAE does not fit AddSR: {err}") from None
    # Memory management: our AutoencoderKL gets its OWN ModelPatcher (ComfyUI accounts for it as a
    # model of its own, can offload it, and can load it partially: it is built from
    # comfy_bridge.operations). We do not reuse ComfyUI's ``vae.patcher``: that patcher moves and flags
    # (comfy_cast_weights, lowvram) the layers of ComfyUI's first_stage_model, not ours: our
    # parameters are separate Parameter objects over the same storage (the attention projections
    # even reshaped views, [C,C,1,1] -> [C,C]), which its moves would not reach, so our module
    # would be left with weights on the wrong device and without the lowvram casting.
    # The cost: the storage is shared only until either patcher moves its copy (ComfyUI's
    # VAE Decode loading its VAE, or ours being offloaded); from then on the two are separate
    # copies of the VAE (~170 MB in fp16, twice that in fp32), each counted by ComfyUI's memory management.
    handle = VAEHandle(ManagedModule(ours.eval()))
    try:
        setattr(vae, _VAE_CACHE_ATTR, handle)
    except Exception:
        pass
    return handle


def warn_if_overlap_clamped(node: str, tile_px: int, overlap_px: int) -> None:
    """A deprecated node's saved overlap beyond half its tile runs at the one overlap rule's cap
    (``stages.tile_overlap_px``); the log says so (in pixels)."""
    from addsr_core.stages import tile_overlap_px

    from .comfy_bridge import log

    used = tile_overlap_px(tile_px, overlap_px)
    if used != overlap_px:
        log.warning("%s: a tile overlap of %d px is more than half the %d px tile; running with %d px (overlaps are "
                    "at most half the tile). Replace the node with its current version to set it.",
                    node, overlap_px, tile_px, used)
