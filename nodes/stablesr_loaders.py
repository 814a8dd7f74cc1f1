"""StableSR loaders: the diffusion model (SD2 UNet + SFT + time-aware encoder) and the CFW VAE."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import comfy_bridge, model_files
from .common import AddSRInputError

STABLESR_CATEGORY = "AddSR/StableSR"
STABLESR_FOLDER = "stablesr"
DTYPE_CHOICES = ["auto", "fp16", "bf16", "fp32"]
PREDICTION_CHOICES = ["auto", "epsilon", "v_prediction"]
NONE = "none"


@dataclass
class StableSRHandle:
    """ComfyUI's ``ADDSR_STABLESR_MODEL``: a StableSRModel managed by ComfyUI."""

    managed: comfy_bridge.ManagedModule
    name: str

    @property
    def model(self):
        return self.managed.module


@dataclass
class CFWHandle:
    """ComfyUI's ``ADDSR_STABLESR_VAE``: the CFW autoencoder (SD2 VAE + fusion layers), managed by ComfyUI."""

    managed: comfy_bridge.ManagedModule
    name: str

    @property
    def vae(self):
        return self.managed.module


def comfy_unet_state_dict(model) -> dict:
    """The LDM-layout UNet weights of a ComfyUI MODEL (ModelPatcher), without copying them."""
    diffusion_model = getattr(getattr(model, "model", None), "diffusion_model", None)
    if diffusion_model is None or not hasattr(diffusion_model, "state_dict"):
        raise AddSRInputError("base_model is not a MODEL; connect the MODEL output of Load Checkpoint (SD 2.x or SD-Turbo)")
    sd = diffusion_model.state_dict()
    if "input_blocks.0.0.weight" not in sd or "out.2.weight" not in sd:
        raise AddSRInputError("base_model is not a Stable Diffusion 1/2-style UNet; StableSR needs SD 2.1-512, SD 2.1-768-v or SD-Turbo")
    return sd


def comfy_prediction_type(model) -> str | None:
    """epsilon / v_prediction from a ComfyUI MODEL's model_type, when it says."""
    name = getattr(getattr(getattr(model, "model", None), "model_type", None), "name", None)
    return {"EPS": "epsilon", "V_PREDICTION": "v_prediction"}.get(name)


class StableSRModelLoader:
    DESCRIPTION = ("Loads StableSR (SD2 UNet + SFT layers + time-aware encoder) from models/stablesr: an official "
                   "full .ckpt (stablesr_000117 / stablesr_768v_000139 / stablesr_turbo), or a webui SR-module file "
                   "on top of the MODEL from Load Checkpoint.")
    CATEGORY = STABLESR_CATEGORY
    RETURN_TYPES = ("ADDSR_STABLESR_MODEL",)
    RETURN_NAMES = ("stablesr_model",)
    OUTPUT_TOOLTIPS = ("The StableSR diffusion model, for StableSR Sampler.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (model_files.list_models(STABLESR_FOLDER), {
                    "tooltip": "A StableSR file in models/stablesr: stablesr_000117.ckpt (SD 2.1-512), "
                               "stablesr_768v_000139.ckpt (SD 2.1-768-v), stablesr_turbo.ckpt (SD-Turbo), "
                               "their .safetensors copies (convert safetensors), "
                               "or a webui SR module (then connect base_model)."}),
                "prediction": (PREDICTION_CHOICES, {"default": "auto",
                    "tooltip": "What the UNet predicts. auto: the connected base model's type, else v_prediction "
                               "for files named *768*, epsilon otherwise (512 and Turbo models)."}),
                "dtype": (DTYPE_CHOICES, {"default": "auto",
                    "tooltip": "Weight precision. auto: what ComfyUI picks for your GPU (fp16/bf16), fp32 on CPU."}),
            },
            "optional": {
                "base_model": ("MODEL", {
                    "tooltip": "The SD 2.x / SD-Turbo MODEL from Load Checkpoint. Needed for SR-module files "
                               "(SFT + encoder only); with a full .ckpt it replaces the file's UNet weights."}),
            },
        }

    def load(self, model, prediction="auto", dtype="auto", base_model=None):
        from addsr_core.stablesr.loading import guess_prediction_type, load_stablesr

        if prediction not in PREDICTION_CHOICES:
            raise AddSRInputError(f"prediction must be one of {PREDICTION_CHOICES}, got {prediction!r}")
        path = model_files.resolve(STABLESR_FOLDER, model)
        base = comfy_unet_state_dict(base_model) if base_model is not None else None
        if prediction == "auto":
            prediction = (comfy_prediction_type(base_model) if base_model is not None else None) or guess_prediction_type(path)
        torch_dtype = comfy_bridge.pick_dtype(dtype)
        loaded = load_stablesr(path, base=base, prediction_type=prediction, dtype=torch_dtype,
                               device=comfy_bridge.offload_device(), operations=comfy_bridge.operations(torch_dtype))
        return (StableSRHandle(comfy_bridge.ManagedModule(loaded), model),)


class StableSRCFWLoader:
    DESCRIPTION = ("Loads StableSR's CFW autoencoder (the SD2 VAE whose decoder also sees the LR image): "
                   "vqgan_cfw_00011.ckpt, or a VAE-only + CFW-only pair, or CFW-only + the VAE from Load Checkpoint.")
    CATEGORY = STABLESR_CATEGORY
    RETURN_TYPES = ("ADDSR_STABLESR_VAE",)
    RETURN_NAMES = ("cfw_vae",)
    OUTPUT_TOOLTIPS = ("The CFW VAE, for StableSR Sampler (encoding the LR) and StableSR CFW Decode.",)
    FUNCTION = "load"

    @classmethod
    def files(cls) -> list[str]:
        return sorted(set(model_files.list_models(STABLESR_FOLDER)) | set(model_files.list_models("vae")))

    @classmethod
    def INPUT_TYPES(cls):
        files = cls.files()
        return {
            "required": {
                "cfw_file": (files + [NONE], {
                    "tooltip": "vqgan_cfw_00011.ckpt or its .safetensors copy (models/stablesr or models/vae); or the "
                               "VAE-only half of a split pair; or a CFW-only file when the vae input is connected. "
                               "none: only the connected VAE plus fusion_file."}),
                "dtype": (DTYPE_CHOICES, {"default": "auto",
                    "tooltip": "Weight precision. auto: ComfyUI's VAE precision (fp32/bf16); fp16 may overflow."}),
            },
            "optional": {
                "fusion_file": ([NONE] + files, {"default": NONE,
                    "tooltip": "The CFW-only file (decoder.fusion_layer_*) of a split pair; none when cfw_file "
                               "already holds the fusion layers."}),
                "vae": ("VAE", {
                    "tooltip": "Optional: the VAE from Load Checkpoint, used for the plain VAE part when the "
                               "files hold only the CFW fusion layers (its weights are reused, not copied)."}),
            },
        }

    def load(self, cfw_file, dtype="auto", fusion_file=NONE, vae=None):
        from addsr_core.stablesr.loading import load_cfw_vae

        kinds = (STABLESR_FOLDER, "vae")
        path = None if cfw_file in (None, NONE) else model_files.resolve(kinds, cfw_file)
        fusion = None if fusion_file in (None, NONE) else model_files.resolve(kinds, fusion_file)
        if path is None and fusion is None:
            raise AddSRInputError("pick the CFW file in cfw_file (vqgan_cfw_00011.ckpt) or fusion_file (CFW-only file)")
        if path is None:
            path, fusion = fusion, None
        vae_sd = comfy_vae_state_dict(vae) if vae is not None else None
        names = " + ".join(n for n in (cfw_file, fusion_file) if n not in (None, NONE))
        torch_dtype = comfy_bridge.pick_vae_dtype(dtype)
        loaded = load_cfw_vae(path, fusion_path=fusion, vae_state_dict=vae_sd, dtype=torch_dtype,
                              device=comfy_bridge.offload_device(), operations=comfy_bridge.operations(torch_dtype))
        return (CFWHandle(comfy_bridge.ManagedModule(loaded), names),)


def comfy_vae_state_dict(vae) -> dict:
    model = getattr(vae, "first_stage_model", None)
    if model is None or not hasattr(model, "state_dict"):
        raise AddSRInputError("vae is not a VAE; connect the VAE output of Load Checkpoint (SD 2.x)")
    sd = {k: v for k, v in model.state_dict().items() if torch.is_tensor(v)}
    latent = sd.get("decoder.conv_in.weight")
    if latent is None or latent.ndim != 4 or latent.shape[1] != 4:
        raise AddSRInputError("the connected VAE is not a Stable Diffusion 1/2 VAE (4 latent channels); StableSR needs the SD2 VAE")
    return sd
