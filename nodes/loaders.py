"""Loader nodes: the AddSR UNet + ControlNet, and the RAM/DAPE encoder."""
from __future__ import annotations

from dataclasses import dataclass

from addsr_core.loading.family import CHOICES as FAMILY_CHOICES

from . import comfy_bridge, model_files
from .common import CATEGORY

DTYPE_CHOICES = ["auto", "fp16", "bf16", "fp32"]
NONE = "none"
RAM_FOLDERS = ("ram", "addsr")  # RAM/DAPE weights and tag lists: models/ram, or beside the AddSR release


@dataclass
class AddSRModel:
    """ComfyUI's ``ADDSR_MODEL``: the UNet and ControlNet, each managed by ComfyUI."""

    unet: comfy_bridge.ManagedModule
    controlnet: comfy_bridge.ManagedModule
    name: str
    family: str = "addsr"  # or "seesr": the same networks, sampled differently (addsr_core.loading.family)


@dataclass
class RAMModel:
    """ComfyUI's ``ADDSR_RAM``: the RAM/DAPE encoder (and tagger when a tag list was given)."""

    encoder: comfy_bridge.ManagedModule
    tagger: object | None
    name: str


class AddSRModelLoader:
    DESCRIPTION = ("Loads the AddSR (or SeeSR) UNet and ControlNet from models/addsr (release folder or packed "
                   ".safetensors).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("ADDSR_MODEL",)
    RETURN_NAMES = ("addsr_model",)
    OUTPUT_TOOLTIPS = ("The AddSR UNet + ControlNet, for AddSR Sampler / AddSR Upscale.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (model_files.list_models("addsr", folders_with="unet"), {
                    "tooltip": "An AddSR release folder (with unet/ and controlnet/) or a packed .safetensors in models/addsr."}),
                "dtype": (DTYPE_CHOICES, {"default": "auto",
                    "tooltip": "Weight precision. auto: what ComfyUI picks for your GPU (fp16/bf16), fp32 on CPU."}),
            },
            "optional": {
                "family": (list(FAMILY_CHOICES), {"default": "auto",
                    "tooltip": "AddSR or SeeSR weights (same layout). auto: the packed file's metadata, else "
                               "'seesr' in the name, else AddSR."}),
                "compile": (["off", "inductor"], {"default": "off",
                    "tooltip": "torch.compile the UNet and ControlNet. The first run of each tile size compiles "
                               "(minutes on a CPU); it pays only over many images of one size. Off by default."}),
            },
        }

    def load(self, model, dtype="auto", family="auto", compile="off"):
        from addsr_core.loading.family import resolve_family
        from addsr_core.loading.pack import load_addsr

        path = model_files.resolve("addsr", model)
        torch_dtype = comfy_bridge.pick_dtype(dtype)
        family, why = resolve_family(path, family)
        comfy_bridge.log.info("AddSR: %r loads as %s weights (%s)", model, family, why)
        # Built from ComfyUI's layer classes (comfy_bridge.operations) so its ModelPatcher can load them partially.
        unet, controlnet = load_addsr(path, dtype=torch_dtype, device=comfy_bridge.offload_device(),
                                      operations=comfy_bridge.operations(torch_dtype))
        # No freezing here: ComfyUI moves and casts the weights, which freezing would bake into the graph.
        from addsr_core.compiling import compile_network

        unet, controlnet = compile_network(unet, compile), compile_network(controlnet, compile)
        return (AddSRModel(comfy_bridge.ManagedModule(unet), comfy_bridge.ManagedModule(controlnet), model, family),)


class AddSRRAMLoader:
    DESCRIPTION = "Loads RAM (Swin-L) with the DAPE LoRA merged, which turns images into AddSR's image tokens and tags."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("ADDSR_RAM",)
    RETURN_NAMES = ("ram",)
    OUTPUT_TOOLTIPS = ("The RAM/DAPE image encoder (and tagger), for Encode LR, Tagger and AddSR Upscale.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        files = sorted(set(model_files.list_models("ram") + _ram_files_in_addsr()))
        return {
            "required": {
                "ram": (files, {"tooltip": "ram_swin_large_14m.pth or its .safetensors copy (from models/ram or models/addsr)."}),
                "dape": ([NONE] + files, {"default": NONE,
                    "tooltip": "DAPE.pth (or its .safetensors copy), the degradation-aware LoRA AddSR was trained "
                               "with. Strongly recommended."}),
                "dtype": (DTYPE_CHOICES, {"default": "auto", "tooltip": "Weight precision of the encoder."}),
            },
            "optional": {
                "tag_list": ([NONE] + model_files.list_files(RAM_FOLDERS, model_files.TEXT_EXTENSIONS), {"default": NONE,
                    "tooltip": "ram_tag_list.txt (ships with the RAM weights); enables the Tagger and automatic tags."}),
            },
        }

    def load(self, ram, dape=NONE, dtype="auto", tag_list=NONE):
        from addsr_core.ram import load_ram

        torch_dtype = comfy_bridge.pick_dtype(dtype)
        if dape == NONE:
            comfy_bridge.log.warning("AddSR: loading RAM without DAPE; AddSR was trained with DAPE tokens, expect weaker results")
        encoder, tagger = load_ram(
            model_files.resolve(RAM_FOLDERS, ram),
            None if dape == NONE else model_files.resolve(RAM_FOLDERS, dape),
            tag_list=None if tag_list in (None, NONE) else model_files.resolve(RAM_FOLDERS, tag_list, what="tag list"),
            dtype=torch_dtype, device=comfy_bridge.offload_device(), operations=comfy_bridge.operations(torch_dtype),
        )
        return (RAMModel(comfy_bridge.ManagedModule(encoder), tagger, ram),)


def _ram_files_in_addsr() -> list[str]:
    """RAM/DAPE files kept beside the AddSR release: ``.pth``, or a safetensors copy (``convert
    safetensors``), i.e. any safetensors file there that is not a packed AddSR model (the header
    check is cached per file while it is unchanged)."""
    from addsr_core.loading.io import SAFETENSORS_SUFFIXES
    from addsr_core.loading.pack import is_packed_file

    def is_ram(name: str) -> bool:
        lower = name.lower()
        if lower.endswith(".pth"):
            return True
        if not lower.endswith(SAFETENSORS_SUFFIXES):
            return False
        return not model_files.file_fact(model_files.resolve("addsr", name), "packed", is_packed_file)

    return [f for f in model_files.list_models("addsr") if is_ram(f)]
