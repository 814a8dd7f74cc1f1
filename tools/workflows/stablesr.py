"""The StableSR workflows: StableSR-Turbo (4 steps) and StableSR (200 steps), each with the CFW decode."""
from __future__ import annotations

from typing import Callable

from addsr_core.memory import AUTO
from addsr_core.stablesr.pipeline import OFFICIAL_OVERLAP_PX, OFFICIAL_PIXEL_OVERLAP_PX

from .builder import start
from .files import CFW, INPUT_IMAGE, SD2_CHECKPOINT, SD_TURBO, STABLESR_512, STABLESR_TURBO, model_entry, stablesr_files_note


def stablesr(name: str, *, turbo: bool) -> dict:
    b, layout = start(name)
    base, model = (SD_TURBO, STABLESR_TURBO) if turbo else (SD2_CHECKPOINT, STABLESR_512)
    role = "SD-Turbo: CLIP, and the UNet under the SR layers" if turbo else "SD 2.1-512: its CLIP encodes the prompt"
    files = b.note(stablesr_files_note(base, model, role), title="Model files")
    image = b.add("LoadImage", title="Low-resolution image", image=INPUT_IMAGE)
    checkpoint = b.add("CheckpointLoaderSimple", title=f"{'SD-Turbo' if turbo else 'SD 2.1'} base (CLIP{' + UNet' if turbo else ''})",
                       ckpt_name=base)
    loader = b.add("StableSRModelLoader", model=model, prediction="auto", dtype="auto")
    cfw = b.add("StableSRCFWLoader", cfw_file=CFW, dtype="auto", fusion_file="none")
    # Only what the frontend can download (.safetensors from Hugging Face): the .ckpt files are in the Note.
    b.nodes[checkpoint - 1]["properties"]["models"] = [model_entry(base, "checkpoints")]

    positive = b.add("CLIPTextEncode", title="Prompt (official: empty)", text="")
    sampler = b.add("StableSRSamplerV2", seed=0, steps=4 if turbo else 200, scale=4.0, procedure="official",
                    tile_size=AUTO, tile_overlap=OFFICIAL_OVERLAP_PX, pixel_tile_size=AUTO,
                    pixel_tile_overlap=OFFICIAL_PIXEL_OVERLAP_PX, cfg=1.0, start_point="lr", min_size=0)
    decode = b.add("StableSRCFWDecodeV2", fidelity=0.5, color_fix="adain")
    save = b.add("SaveImage", filename_prefix=f"StableSR/{name}")
    nearest = b.add("ImageScaleBy", title="Input, 4x nearest (for comparison)", upscale_method="nearest-exact", scale_by=4.0)
    preview = b.add("PreviewImage", title="Preview: input 4x nearest")
    if turbo:
        about_text = ("## StableSR-Turbo 4x\n\nStableSR trained on **SD-Turbo**: **4 steps** (DDPM respaced to "
                      "999/666/333/0) from the LR latent noised to t=999, each 1280 px pixel tile on its own (the "
                      "official procedure); the time-aware encoder re-runs on every 512 px diffusion tile. CFW decode with **fidelity 0.5**, then the **adain** colour fix.\n\n"
                      "SD-Turbo's MODEL feeds *base_model*: with `stablesr_turbo.ckpt` it is the same UNet; with a "
                      "webui SR module it is required.")
    else:
        about_text = ("## StableSR 4x, 200 steps (quality)\n\nThe official StableSR run: **200 DDPM steps** "
                      "(respaced from 1000) from the LR latent noised to t=999, each 1280 px pixel tile on its own, "
                      "512 px diffusion tiles overlapping by 256 px, empty prompt, CFW **fidelity 0.5**, **adain** colour fix. Slow: about 50x the "
                      "Turbo workflow.\n\nFidelity: lower for more generated detail, higher to stay closer to the "
                      "input.")
    about = b.note(about_text, title="About this workflow")

    c = b.connect
    c(checkpoint, "CLIP", positive, "clip")
    if turbo:
        c(checkpoint, "MODEL", loader, "base_model")
    c(loader, "stablesr_model", sampler, "stablesr_model")
    c(cfw, "cfw_vae", sampler, "cfw_vae")
    c(image, "IMAGE", sampler, "image")
    c(positive, "CONDITIONING", sampler, "positive")
    c(sampler, "latent", decode, "samples")
    c(cfw, "cfw_vae", decode, "cfw_vae")
    c(decode, "IMAGE", save, "images")
    c(image, "IMAGE", nearest, "image")
    c(nearest, "IMAGE", preview, "images")

    layout.place(files, 0, width=420, height=420)
    layout.place(about, 0, width=420, height=260)
    for node_id in (image, checkpoint, loader, cfw):
        layout.place(node_id, 1, height=330 if node_id == image else None)
    for node_id in (positive, sampler):
        layout.place(node_id, 2)
    for node_id in (decode, nearest):
        layout.place(node_id, 3)
    layout.place(save, 4, width=420, height=420)
    layout.place(preview, 4, width=420, height=420)
    layout.group("1. Input and models", [image, checkpoint, loader, cfw])
    layout.group("2. StableSR", [positive, sampler], color="#b58b2a")
    layout.group("3. CFW decode", [decode, nearest], color="#a1309b")
    layout.group("4. Output", [save, preview], color="#444")
    return b.build_with(layout)


def stablesr_turbo_4x() -> dict:
    return stablesr("stablesr_turbo_4x", turbo=True)


def stablesr_quality_200() -> dict:
    return stablesr("stablesr_quality_200", turbo=False)


WORKFLOWS: dict[str, Callable[[], dict]] = {
    "stablesr_turbo_4x": stablesr_turbo_4x,
    "stablesr_quality_200": stablesr_quality_200,
}

THUMBNAILS: dict[str, dict] = {
    "stablesr_turbo_4x": {"photo": "coffee", "title": "StableSR-Turbo 4x (4 steps)", "product": "StableSR"},
    "stablesr_quality_200": {"photo": "chelsea", "title": "StableSR 4x, 200 steps", "product": "StableSR"},
}
