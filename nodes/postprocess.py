"""Colour fix and tagging."""
from __future__ import annotations

import torch

from . import host
from .common import CATEGORY, AddSRInputError, bchw_to_image, image_to_bchw
from .loaders import RAMModel


class AddSRColorFix:
    DESCRIPTION = "Restores the colours of the input after super-resolution (diffusion tends to shift them)."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The image with the reference's colours.",)
    FUNCTION = "fix"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The upscaled image."}),
                "reference": ("IMAGE", {"tooltip": "The original low-resolution image (any size)."}),
                "method": (["adain", "wavelet", "none"], {"default": "adain",
                    "tooltip": "adain (official default): match mean and contrast per channel. wavelet: keep the "
                               "upscale's detail, take the reference's low frequencies."}),
            }
        }

    def fix(self, image, reference, method="adain"):
        from addsr_core.imaging.colorfix import adain_color_fix, wavelet_color_fix

        if method == "none":
            return (image,)
        target, source = image_to_bchw(image), image_to_bchw(reference)
        if source.shape[0] not in (1, target.shape[0]):
            raise AddSRInputError(f"reference batch ({source.shape[0]}) must be 1 or match the image batch ({target.shape[0]})")
        source = source.expand(target.shape[0], -1, -1, -1)
        fix = adain_color_fix if method == "adain" else wavelet_color_fix
        out = fix(target, source).clamp(0, 1)
        if image.shape[-1] == 4:  # keep the alpha channel as it was
            return (torch.cat([bchw_to_image(out), image[..., 3:].float().cpu()], dim=-1),)
        return (bchw_to_image(out),)


class AddSRTagger:
    DESCRIPTION = "Describes an image with RAM tags (e.g. 'dog, grass, tree'), to use in the prompt."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("tags",)
    OUTPUT_TOOLTIPS = ("Comma-separated tags (one line per image in a batch).",)
    FUNCTION = "tag"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "Image to tag (the LR image works)."}),
            "ram": ("ADDSR_RAM", {"tooltip": "From AddSR Load RAM, with a tag list selected."}),
        }}

    def tag(self, image, ram):
        if not isinstance(ram, RAMModel):
            raise AddSRInputError("ram must come from AddSR Load RAM")
        if ram.tagger is None:
            raise AddSRInputError("this RAM was loaded without a tag list: select ram_tag_list.txt in AddSR Load RAM")
        device = host.load_to_device([ram.encoder])
        with torch.no_grad():
            tags = ram.tagger.tags(image_to_bchw(image).to(device))
        return ("\n".join(tags),)
