"""The StableSR workflows (workflows/stablesr_*.json) and their thumbnails.

    python tools/stablesr_workflows.py          # both workflows and thumbnails
    python tools/build_workflows.py             # writes them too (registered there), without thumbnails

Built with tools/build_workflows.py's WorkflowBuilder and Layout, so they follow the same layout,
Note and properties.models rules as the AddSR workflows.
"""
from __future__ import annotations

import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

HF = "https://huggingface.co/Iceclear/StableSR/resolve/main/"
SD21_BASE = "v2-1_512-ema-pruned.safetensors"
SD_TURBO = "sd_turbo.safetensors"
STABLESR_512 = "stablesr_000117.ckpt"
STABLESR_TURBO = "stablesr_turbo.ckpt"
STABLESR_768V = "stablesr_768v_000139.ckpt"
CFW = "vqgan_cfw_00011.ckpt"
URLS = {
    SD21_BASE: "https://huggingface.co/stabilityai/stable-diffusion-2-1-base/resolve/main/v2-1_512-ema-pruned.safetensors",
    SD_TURBO: "https://huggingface.co/stabilityai/sd-turbo/resolve/main/sd_turbo.safetensors",
    STABLESR_512: HF + STABLESR_512,
    STABLESR_TURBO: HF + STABLESR_TURBO,
    STABLESR_768V: HF + STABLESR_768V,
    CFW: HF + CFW,
}
INPUT_IMAGE = "example.png"


def _entry(name: str, directory: str) -> dict:
    return {"name": name, "url": URLS[name], "directory": directory}


def _files_note(base: str, model: str, base_role: str) -> str:
    return f"""## Files this workflow needs

| file | put it in |
|---|---|
| `{base}` ({base_role}) | `ComfyUI/models/checkpoints/` ([download]({URLS[base]})) |
| `{model}` (StableSR: SFT layers + time-aware encoder) | `ComfyUI/models/stablesr/` ([download]({URLS[model]})) |
| `{CFW}` (CFW VAE) | `ComfyUI/models/stablesr/` or `models/vae/` ([download]({URLS[CFW]})) |

Other StableSR files work in the same loader: `{STABLESR_512}` (SD 2.1-512 base), `{STABLESR_768V}`
(SD 2.1-768-v, `v2-1_768-ema-pruned`; its native tile is 96 latent = 768 px, picked automatically) or a
webui **SR module** file on top of the connected **base_model**. A split CFW pair: VAE-only file in
`cfw_file`, CFW-only file in `fusion_file`. Both loaders take `.safetensors` copies of the `.ckpt` files:
`python -m addsr_core convert safetensors models/stablesr/{model}` (likewise `{CFW}`).
Missing files show their expected name in the loader widgets.
"""


def _stablesr(bw, name: str, *, turbo: bool) -> dict:
    b = bw.WorkflowBuilder(bw.definitions(), bw._stable_id(name))
    layout = bw.Layout(b)
    layout.leave_room_for_groups()
    base, model = (SD_TURBO, STABLESR_TURBO) if turbo else (SD21_BASE, STABLESR_512)
    role = "SD-Turbo: CLIP, and the UNet under the SR layers" if turbo else "SD 2.1-512: its CLIP encodes the prompt"
    files = b.note(_files_note(base, model, role), title="Model files")
    image = b.add("LoadImage", title="Low-resolution image", image=bw.INPUT_IMAGE)
    checkpoint = b.add("CheckpointLoaderSimple", title=f"{'SD-Turbo' if turbo else 'SD 2.1'} base (CLIP{' + UNet' if turbo else ''})",
                       ckpt_name=base)
    loader = b.add("StableSRModelLoader", model=model, prediction="auto", dtype="auto")
    cfw = b.add("StableSRCFWLoader", cfw_file=CFW, dtype="auto", fusion_file="none")
    # Only what the frontend can download (.safetensors from Hugging Face): the .ckpt files are in the Note.
    b.nodes[checkpoint - 1]["properties"]["models"] = [_entry(base, "checkpoints")]

    positive = b.add("CLIPTextEncode", title="Prompt (official: empty)", text="")
    sampler = b.add("StableSRSampler", seed=0, steps=4 if turbo else 200, scale=4.0, tile_size=0, tile_overlap=32,
                    cfg=1.0, start="lr_noised", min_size=0)
    decode = b.add("StableSRCFWDecode", fidelity=0.5, color_fix="adain", tile_size=1280, tile_overlap=280)
    save = b.add("SaveImage", filename_prefix=f"StableSR/{name}")
    nearest = b.add("ImageScaleBy", title="Input, 4x nearest (for comparison)", upscale_method="nearest-exact", scale_by=4.0)
    preview = b.add("PreviewImage", title="Preview: input 4x nearest")
    if turbo:
        about_text = ("## StableSR-Turbo 4x\n\nStableSR trained on **SD-Turbo**: **4 steps** (DDPM respaced to "
                      "999/666/333/0) from the LR latent noised to t=999; the time-aware encoder re-runs on every "
                      "64-latent (512 px) tile. CFW decode with **fidelity 0.5**, then the **adain** colour fix.\n\n"
                      "SD-Turbo's MODEL feeds *base_model*: with `stablesr_turbo.ckpt` it is the same UNet; with a "
                      "webui SR module it is required.")
    else:
        about_text = ("## StableSR 4x, 200 steps (quality)\n\nThe official StableSR run: **200 DDPM steps** "
                      "(respaced from 1000) from the LR latent noised to t=999, 64-latent (512 px) tiles with 32 "
                      "overlap, empty prompt, CFW **fidelity 0.5**, **adain** colour fix. Slow: about 50x the "
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


THUMBNAILS = {
    "stablesr_turbo_4x": {"photo": "coffee", "title": "StableSR-Turbo 4x (4 steps)", "product": "StableSR"},
    "stablesr_quality_200": {"photo": "chelsea", "title": "StableSR 4x, 200 steps", "product": "StableSR"},
}


def register(bw) -> None:
    """Add the StableSR workflows to tools/build_workflows.py's registry (``bw`` is that module)."""
    bw.WORKFLOWS.setdefault("stablesr_turbo_4x", lambda: _stablesr(bw, "stablesr_turbo_4x", turbo=True))
    bw.WORKFLOWS.setdefault("stablesr_quality_200", lambda: _stablesr(bw, "stablesr_quality_200", turbo=False))
    for name, info in THUMBNAILS.items():
        bw.THUMBNAILS.setdefault(name, info)


def build_workflows() -> dict:
    bw = _bw()
    return {name: bw.WORKFLOWS[name]() for name in THUMBNAILS}


def _bw():
    import build_workflows

    register(build_workflows)
    return build_workflows


def main() -> int:
    bw = _bw()
    for name in THUMBNAILS:
        path = bw.write_workflow(name)
        thumb = bw.make_thumbnail(name, path.with_suffix(".png"))
        print(f"wrote {path.name} and {thumb.name} ({thumb.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
