"""The stages around the sampler: tags and prompt before it, Finish and the colour fix after it."""
from __future__ import annotations

import torch

from addsr_core.imaging.colorfix import apply_color_fix
from addsr_core.stages import COLOR_FIXES, FinishOptions, PromptOptions, build_prompts, finish, tag_images
from addsr_core.text.prompt import DEFAULT_ADDED_PROMPT

from . import comfy_bridge
from .common import CATEGORY, AddSRInputError, bchw_to_image, encode_prompts, image_to_bchw, with_alpha
from .encode import AddSRCond
from .loaders import RAMModel

COLOR_FIX_TOOLTIP = ("adain (official default): match mean and contrast per channel. wavelet: keep the upscale's "
                     "detail, take the reference's low frequencies.")


class AddSRFinish:
    DESCRIPTION = ("The last AddSR step: colour fix against the upscaled input, then the exact size (input x scale) "
                   "and the input's alpha, in the official order.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The finished image, as AddSR Upscale (all-in-one) gives it.",)
    FUNCTION = "finish"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The decoded image, from AddSR Tiled VAE Decode."}),
            "addsr_cond": ("ADDSR_COND", {"tooltip": "From AddSR Encode LR: the colour reference, size and alpha."}),
            "color_fix": (list(COLOR_FIXES), {"default": "adain", "tooltip": COLOR_FIX_TOOLTIP}),
        }}

    def finish(self, image, addsr_cond, color_fix="adain"):
        if not isinstance(addsr_cond, AddSRCond):
            raise AddSRInputError("addsr_cond must come from AddSR Encode LR")
        images = image_to_bchw(image)
        if images.shape[0] != addsr_cond.cond.batch:
            raise AddSRInputError(f"image has {images.shape[0]} images but addsr_cond {addsr_cond.cond.batch}: "
                                  "connect the AddSR Encode LR that fed this image's sampler")
        out = finish(images, addsr_cond.cond, FinishOptions(color_fix))
        return (with_alpha(out, addsr_cond.alpha),)


class AddSRPrompt:
    DESCRIPTION = ("The official AddSR prompt, one per image: the RAM tags, your text and the quality words, "
                   "encoded with the SD2 CLIP.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("The prompt for AddSR Sampler (one row per line of tags).",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip": ("CLIP", {"tooltip": "SD2 base CLIP, from Load Checkpoint."}),
                "prompt": ("STRING", {"default": "", "multiline": True,
                    "tooltip": "Optional description of the image, placed between the tags and the quality words."}),
                "quality_words": ("STRING", {"default": DEFAULT_ADDED_PROMPT,
                    "tooltip": "Added at the end (official AddSR words; SeeSR's: clean, high-resolution, 8k)."}),
            },
            "optional": {
                "tags": ("STRING", {"forceInput": True,
                    "tooltip": "From AddSR Tagger: one line of tags per image (a batch gets one prompt per image)."}),
            },
        }

    def encode(self, clip, prompt="", quality_words=DEFAULT_ADDED_PROMPT, tags=None):
        lines = tags.split("\n") if tags else None
        prompts = build_prompts(lines, PromptOptions(prompt=prompt, added_prompt=quality_words))
        return ([[encode_prompts(clip, prompts), {}]],)


class AddSRColorFix:
    DESCRIPTION = "Restores the colours of any reference image after super-resolution (diffusion tends to shift them)."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The image with the reference's colours.",)
    FUNCTION = "fix"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The upscaled image."}),
                "reference": ("IMAGE", {"tooltip": "The image whose colours to take (any size)."}),
                "method": (list(COLOR_FIXES), {"default": "adain", "tooltip": COLOR_FIX_TOOLTIP}),
            }
        }

    def fix(self, image, reference, method="adain"):
        from addsr_core.sampling.denoisers import match_batch

        if method == "none":
            return (image,)
        target, source = image_to_bchw(image), image_to_bchw(reference)
        source = match_batch(source, target.shape[0], "reference")
        out = apply_color_fix(method, target, source).clamp(0, 1)
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
        device = comfy_bridge.load_to_device([ram.encoder])
        return ("\n".join(tag_images(ram.tagger, image_to_bchw(image), ram=ram.encoder.module, device=device)),)
