"""The model files the workflows expect, where to get them, and the Model files Note that says where each goes.

The frontend matches ``properties.models`` against the files it lists in a model folder (weight
extensions only), by the exact widget value, and offers a download only for .safetensors/.sft
files from huggingface.co or civitai.com; anything else is a red error in its missing-models
dialog (tests/test_workflows.py checks this). So only the SD checkpoints are listed there: the
release folders, RAM/DAPE (.pth, partly on Google Drive), the tag list and StableSR's .ckpt files
are explained in the Note.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

INPUT_IMAGE = "example.png"  # ships in ComfyUI/input

SD2_CHECKPOINT = "v2-1_512-ema-pruned.safetensors"
ADDSR_FOLDER = "addsr"  # the official release folder (unet/ + controlnet/) in models/addsr/
SEESR_FOLDER = "seesr"  # the official SeeSR release folder (same layout), in models/addsr/
RAM_FILE = "ram_swin_large_14m.pth"
DAPE_FILE = "DAPE.pth"
TAG_LIST = "ram_tag_list.txt"

SD_TURBO = "sd_turbo.safetensors"
STABLESR_512 = "stablesr_000117.ckpt"
STABLESR_TURBO = "stablesr_turbo.ckpt"
STABLESR_768V = "stablesr_768v_000139.ckpt"
CFW = "vqgan_cfw_00011.ckpt"
STABLESR_HF = "https://huggingface.co/Iceclear/StableSR/resolve/main/"

URLS = {
    SD2_CHECKPOINT: "https://huggingface.co/stabilityai/stable-diffusion-2-1-base/resolve/main/v2-1_512-ema-pruned.safetensors",
    ADDSR_FOLDER: "https://drive.google.com/file/d/19dMAc4mzFSSfU23y5g44v3nZS-edubGw/view?usp=sharing",
    RAM_FILE: "https://huggingface.co/spaces/xinyu1205/recognize-anything/resolve/main/ram_swin_large_14m.pth",
    DAPE_FILE: "https://drive.google.com/drive/folders/12HXrRGEXUAnmHRaf0bIn-S8XSK4Ku0JO",
    TAG_LIST: "https://github.com/xinyu1205/recognize-anything/tree/main/ram/data",
    SD_TURBO: "https://huggingface.co/stabilityai/sd-turbo/resolve/main/sd_turbo.safetensors",
    STABLESR_512: STABLESR_HF + STABLESR_512,
    STABLESR_TURBO: STABLESR_HF + STABLESR_TURBO,
    STABLESR_768V: STABLESR_HF + STABLESR_768V,
    CFW: STABLESR_HF + CFW,
}
URLS[SEESR_FOLDER] = URLS[DAPE_FILE]  # SeeSR's Google Drive folder holds seesr/ and DAPE.pth


def model_entry(name: str, directory: str) -> dict:
    """One ``properties.models`` entry, the format the frontend's missing-models check reads."""
    return {"name": name, "url": URLS[name], "directory": directory}


# What the AddSR/SeeSR loaders list in properties.models (only what the frontend can download).
LOADER_MODELS = {
    "CheckpointLoaderSimple": [model_entry(SD2_CHECKPOINT, "checkpoints")],
}


def loader_models(node_type: str) -> list[dict] | None:
    """A fresh copy of the properties.models list of ``node_type``, None when it lists nothing."""
    models = LOADER_MODELS.get(node_type)
    return json.loads(json.dumps(models)) if models else None


@dataclass(frozen=True)
class Release:
    """One UNet + ControlNet release folder a workflow loads with AddSR Load Model."""

    folder: str
    label: str  # "AddSR release folder"
    pack_name: str  # the packed file the Note's convert command writes
    pack_flags: str = ""  # extra convert pack flags (SeeSR: --family seesr)


ADDSR_RELEASE = Release(ADDSR_FOLDER, "AddSR release folder", "addsr_fp16.safetensors")
SEESR_RELEASE = Release(SEESR_FOLDER, "SeeSR release folder", "seesr_fp16.safetensors", " --family seesr")


def files_note(releases=(ADDSR_RELEASE,), dape_role: str = "AddSR's degradation-aware RAM LoRA") -> str:
    """The Model files Note of an AddSR/SeeSR workflow: where each file goes."""
    rows = "".join(
        f"| {r.label} `{r.folder}/` (with `unet/` and `controlnet/`) | `ComfyUI/models/addsr/{r.folder}/` "
        f"([Google Drive]({URLS[r.folder]})) |\n" for r in releases)
    one = len(releases) == 1
    packs = " or\n".join(
        f"`python -m addsr_core convert pack <{'release folder' if one else r.label}> models/addsr/{r.pack_name} "
        f"--dtype fp16{r.pack_flags}`" for r in releases)
    return f"""## Files this workflow needs

| file | put it in |
|---|---|
| `{SD2_CHECKPOINT}` (SD 2 base: its VAE and text encoder are used) | `ComfyUI/models/checkpoints/` ([download]({URLS[SD2_CHECKPOINT]})) |
{rows}| `{RAM_FILE}` (RAM Swin-L) | `ComfyUI/models/ram/` ([download]({URLS[RAM_FILE]})) |
| `{DAPE_FILE}` ({dape_role}) | `ComfyUI/models/ram/` ([Google Drive]({URLS[DAPE_FILE]})) |
| `{TAG_LIST}` and `ram_tag_list_threshold.txt` | `ComfyUI/models/ram/`, side by side ([RAM's ram/data]({URLS[TAG_LIST]})) |

A packed single file works too: {packs},
then pick it in **AddSR Load Model**. `.safetensors` copies of the `.pth` files work in **AddSR Load RAM**:
`python -m addsr_core convert safetensors models/ram/{RAM_FILE}` (likewise `{DAPE_FILE}`).
Missing files show their expected name in the loader widgets.
"""


FILES_NOTE = files_note()


def stablesr_files_note(base: str, model: str, base_role: str) -> str:
    """The Model files Note of a StableSR workflow (``base``: the SD checkpoint, ``model``: the StableSR file)."""
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
