"""What the workflow tests feed a graph: a small real photo as the LR, and the graph made CPU-sized."""
from __future__ import annotations

from PIL import Image


def lr_photo(width: int, height: int) -> Image.Image:
    """A real photo (skimage's astronaut), degraded: a face crop shrunk to width x height."""
    from skimage import data

    photo = Image.fromarray(data.astronaut())
    return photo.crop((120, 20, 340, 220)).resize((width, height), Image.BICUBIC)


def shrink_for_cpu(prompt: dict, min_tile: bool) -> dict:
    """Same graph, CPU-sized: no enlarging of small inputs, 2 steps for samplers shipped with more
    than 4 (AddSR ships 1-4 and keeps them), and (optionally) the smallest tiles, so a small image
    still crosses tile borders. Everything else stays as shipped."""
    for node in prompt.values():
        inputs = node["inputs"]
        if "min_size" in inputs:
            inputs["min_size"] = 64
        if isinstance(inputs.get("steps"), int) and inputs["steps"] > 4:
            inputs["steps"] = 2
        if min_tile:
            for key in ("tile_size", "vae_tile_size"):
                if key in inputs and not isinstance(inputs[key], list):
                    inputs[key] = 256
            if "tile_overlap" in inputs:
                inputs["tile_overlap"] = 64
    return prompt
