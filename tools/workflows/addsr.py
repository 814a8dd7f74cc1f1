"""The AddSR workflows: three node-by-node graphs (basic, fast, large/tiled) and the all-in-one node."""
from __future__ import annotations

from typing import Callable

from addsr_core.memory import AUTO

from .builder import start
from .files import FILES_NOTE
from .modular import NEGATIVE_PROMPT, load_nodes, modular, place_loaders


def addsr_basic_4x() -> dict:
    return modular(
        "addsr_basic_4x", steps=4, vae_tile=AUTO, decode_tile=AUTO,
        about="## AddSR basic 4x\n\nThe official setting: **4 steps**, PSR weight **0.4**, no CFG, RAM tags + "
              "quality words as the prompt, **adain** colour fix against the input.\n\n"
              "Load your low-resolution photo in *Low-resolution image*. Inputs whose upscaled short side is "
              "below 512 px are first enlarged (`min_size`, the official `process_size`). The tile sizes are "
              "0, auto: on a GPU the largest that fit its free memory, on a CPU 1024 px; larger images are "
              "tiled.",
    )


def addsr_fast_1step() -> dict:
    return modular(
        "addsr_fast_1step", steps=1, vae_tile=AUTO, decode_tile=AUTO,
        about="## AddSR fast (1 step)\n\nThe same graph as the basic workflow with **1 step** instead of 4: "
              "about 4x faster sampling, a little less generated detail. PSR weight has no effect with one "
              "step (there is no next step to refine).",
    )


def addsr_large_tiled() -> dict:
    return modular(
        "addsr_large_tiled", steps=4, sampler_tile=768, vae_tile=512, decode_tile=512,
        about="## AddSR for large images (tiled)\n\nFor inputs whose 4x result is larger than one tile. "
              "The sampler works in tiles of at most **768 px** with **64 px** overlap (Gaussian-weighted blend), and "
              "the VAE encodes (*Encode LR*, `vae_tile_size`) and decodes (*Tiled VAE Decode*) in **512 px** "
              "tiles with shared normalisation statistics, so memory is bounded by the tile, not the image. "
              "Lower the tile sizes further if you run out of memory (each node also halves its tile and "
              "retries on out-of-memory).",
    )


def addsr_all_in_one() -> dict:
    name = "addsr_all_in_one"
    b, layout = start(name)
    files = b.note(FILES_NOTE, title="Model files")
    loaded = load_nodes(b)
    upscale = b.add("AddSRUpscale", prompt="", seed=0, steps=4, scale=4, psr_weight=0.4, color_fix="adain",
                    tile_size=AUTO, use_tags=True, cfg=0.0, negative_prompt=NEGATIVE_PROMPT,
                    min_size=512, vae_tile_size=AUTO)
    nearest = b.add("ImageScaleBy", title="Input, 4x nearest (for comparison)", upscale_method="nearest-exact",
                    scale_by=4.0)
    save = b.add("SaveImage", filename_prefix=f"AddSR/{name}")
    preview = b.add("PreviewImage", title="Preview: input 4x nearest")
    about = b.note("## AddSR all-in-one\n\n**AddSR Upscale** does everything in one node: RAM tags + quality "
                   "words as the prompt, 4 steps with PSR weight 0.4, tiled decode and adain colour fix; large "
                   "images are tiled automatically and an alpha channel is upscaled separately.\n\n"
                   "The preview beside it shows the input enlarged with nearest-neighbour, for comparison.",
                   title="About this workflow")
    c = b.connect
    c(loaded.image, "IMAGE", upscale, "image")
    c(loaded.addsr, "addsr_model", upscale, "addsr_model")
    c(loaded.ram, "ram", upscale, "ram")
    c(loaded.checkpoint, "VAE", upscale, "vae")
    c(loaded.checkpoint, "CLIP", upscale, "clip")
    c(upscale, "IMAGE", save, "images")
    c(loaded.image, "IMAGE", nearest, "image")
    c(nearest, "IMAGE", preview, "images")

    place_loaders(layout, loaded, files)
    layout.place(about, 0, width=420, height=220)
    layout.place(upscale, 2, width=380)
    layout.place(nearest, 2, width=380)
    layout.place(save, 3, width=420, height=420)
    layout.place(preview, 3, width=420, height=420)
    layout.group("1. Input and models", [loaded.image, loaded.checkpoint, loaded.addsr, loaded.ram])
    layout.group("2. AddSR", [upscale, nearest], color="#b58b2a")
    layout.group("3. Output", [save, preview], color="#444")
    return b.build_with(layout)


WORKFLOWS: dict[str, Callable[[], dict]] = {
    "addsr_basic_4x": addsr_basic_4x,
    "addsr_fast_1step": addsr_fast_1step,
    "addsr_large_tiled": addsr_large_tiled,
    "addsr_all_in_one": addsr_all_in_one,
}

# name -> thumbnail description: (skimage.data photo, right-hand panel label).
THUMBNAILS: dict[str, dict] = {
    "addsr_basic_4x": {"photo": "astronaut", "title": "AddSR basic 4x (4 steps)"},
    "addsr_fast_1step": {"photo": "coffee", "title": "AddSR fast (1 step)"},
    "addsr_large_tiled": {"photo": "chelsea", "title": "AddSR large image (tiled)"},
    "addsr_all_in_one": {"photo": "astronaut", "title": "AddSR all-in-one node"},
}
