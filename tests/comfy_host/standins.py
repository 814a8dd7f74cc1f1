"""In-process stand-ins for the core ComfyUI nodes our workflows use, for execute_api_prompt.

Inputs and outputs mirror ComfyUI 0.3.64 (tests/comfy_host/core_object_info.json; a test compares
them); behaviour is the part our nodes depend on. The VAE and CLIP come from tests/nodekit.py
(FakeComfyVAE / FakeComfyCLIP over a tiny SD2 diffusers folder, which install_tiny_models writes
under the checkpoint's file name for the INPROCESS target).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def core_standins(models_dir, input_dir, output_dir, temp_dir=None) -> dict:
    """NODE_CLASS_MAPPINGS-style dict of stand-in classes bound to these folders."""
    from nodekit import FakeComfyCLIP, FakeComfyVAE

    models_dir, input_dir, output_dir = Path(models_dir), Path(input_dir), Path(output_dir)
    temp_dir = Path(temp_dir) if temp_dir else output_dir.parent / "temp"
    checkpoints = models_dir / "checkpoints"

    class LoadImage:
        RETURN_TYPES = ("IMAGE", "MASK")
        FUNCTION = "load_image"

        @classmethod
        def INPUT_TYPES(cls):
            files = sorted(p.name for p in input_dir.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            return {"required": {"image": (files, {"image_upload": True})}}

        def load_image(self, image):
            with Image.open(input_dir / image) as im:
                rgba = im.convert("RGBA")
            array = np.asarray(rgba, dtype=np.float32) / 255.0
            pixels = torch.from_numpy(array[..., :3].copy())[None]
            mask = 1.0 - torch.from_numpy(array[..., 3].copy())[None]  # ComfyUI: mask = 1 - alpha
            return pixels, mask

    class CheckpointLoaderSimple:
        RETURN_TYPES = ("MODEL", "CLIP", "VAE")
        FUNCTION = "load_checkpoint"

        @classmethod
        def INPUT_TYPES(cls):
            names = sorted(p.name for p in checkpoints.glob("*")) if checkpoints.is_dir() else []
            return {"required": {"ckpt_name": (names, {"tooltip": "The name of the checkpoint (model) to load."})}}

        def load_checkpoint(self, ckpt_name):
            folder = checkpoints / ckpt_name
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder} is not a tiny SD2 folder (install_tiny_models(..., INPROCESS))")
            return None, FakeComfyCLIP(folder), FakeComfyVAE(folder)

    class CLIPTextEncode:
        RETURN_TYPES = ("CONDITIONING",)
        FUNCTION = "encode"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"text": ("STRING", {"multiline": True, "dynamicPrompts": True}),
                                 "clip": ("CLIP",)}}

        def encode(self, clip, text):
            if clip is None:
                raise RuntimeError("ERROR: clip input is invalid: None")
            return (clip.conditioning(text),)

    class StringConcatenate:
        RETURN_TYPES = ("STRING",)
        FUNCTION = "execute"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"string_a": ("STRING", {"multiline": True}),
                                 "string_b": ("STRING", {"multiline": True}),
                                 "delimiter": ("STRING", {"default": "", "multiline": False})}}

        def execute(self, string_a, string_b, delimiter):
            return (delimiter.join((string_a, string_b)),)

    class ImageScaleBy:
        RETURN_TYPES = ("IMAGE",)
        FUNCTION = "upscale"
        METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"image": ("IMAGE",), "upscale_method": (cls.METHODS,),
                                 "scale_by": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01})}}

        def upscale(self, image, upscale_method, scale_by):
            if upscale_method not in ("nearest-exact", "bilinear", "area", "bicubic"):
                raise NotImplementedError(f"stand-in ImageScaleBy has no {upscale_method}")
            h, w = round(image.shape[1] * scale_by), round(image.shape[2] * scale_by)
            x = torch.nn.functional.interpolate(image.movedim(-1, 1), size=(h, w), mode=upscale_method)
            return (x.movedim(1, -1),)

    class _Saver:
        RETURN_TYPES = ()
        FUNCTION = "save_images"
        OUTPUT_NODE = True
        folder, kind = output_dir, "output"

        def _save(self, images, prefix):
            self.folder.mkdir(parents=True, exist_ok=True)
            results = []
            for image in images:
                array = np.clip(image.cpu().numpy() * 255.0, 0, 255).astype(np.uint8)
                subfolder = Path(prefix).parent.as_posix() if "/" in prefix else ""
                stem = Path(prefix).name
                target = self.folder / subfolder
                target.mkdir(parents=True, exist_ok=True)
                counter = len(list(target.glob(f"{stem}_*.png"))) + 1
                name = f"{stem}_{counter:05}_.png"
                Image.fromarray(array).save(target / name)
                results.append({"filename": name, "subfolder": subfolder, "type": self.kind})
            return {"ui": {"images": results}}

    class SaveImage(_Saver):
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"images": ("IMAGE", {"tooltip": "The images to save."}),
                                 "filename_prefix": ("STRING", {"default": "ComfyUI"})},
                    "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

        def save_images(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
            return self._save(images, filename_prefix)

    class PreviewImage(_Saver):
        folder, kind = temp_dir, "temp"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"images": ("IMAGE",)},
                    "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

        def save_images(self, images, prompt=None, extra_pnginfo=None):
            return self._save(images, "ComfyUI_temp")

    return {cls.__name__: cls for cls in (LoadImage, CheckpointLoaderSimple, CLIPTextEncode, StringConcatenate,
                                          ImageScaleBy, SaveImage, PreviewImage)}


def saved_files(ui: dict, output_dir, temp_dir=None) -> list[Path]:
    """Paths of the images an ExecutionResult.ui entry reports (like ComfyClient.output_files)."""
    output_dir = Path(output_dir)
    roots = {"output": output_dir, "temp": Path(temp_dir) if temp_dir else output_dir.parent / "temp"}
    return [roots[item["type"]] / item["subfolder"] / item["filename"] for item in ui.get("images", [])]
