"""Write the shipped ComfyUI workflows (workflows/*.json) and their thumbnails (workflows/*.png).

    python tools/build_workflows.py                 # every workflow and thumbnail
    python tools/build_workflows.py addsr_fast_1step --no-thumbnails

One function per workflow, listed in WORKFLOWS (name -> function returning the UI workflow dict);
another model family adds its own functions and registry entries next to these. Node definitions
come from tests/comfy_host/core_object_info.json (core nodes, as ComfyUI 0.3.64 serves them) and the
pack's own classes, so the files are checked against the same definitions the tests use.

Layout: nodes sit in columns; sizes are at least what the 1.27 frontend computes for them
(:func:`min_node_size`), so nothing overlaps once the frontend grows a node to its computed size.
"""
from __future__ import annotations

import argparse
import json
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_DIR = REPO / "workflows"
CORE_SNAPSHOT = REPO / "tests" / "comfy_host" / "core_object_info.json"

for _path in (REPO, REPO / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from addsr_core.pipeline import DEFAULT_LATENT_OVERLAP_PX, DEFAULT_LATENT_TILE_PX, DEFAULT_VAE_TILE_PX  # noqa: E402
from addsr_core.text.prompt import DEFAULT_ADDED_PROMPT, DEFAULT_NEGATIVE_PROMPT  # noqa: E402
from comfy_host.workflow_graph import UIWorkflowBuilder  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Model files the workflows expect (also what the frontend's missing-models dialog shows)

SD2_CHECKPOINT = "v2-1_512-ema-pruned.safetensors"
ADDSR_FOLDER = "addsr"  # the official release folder (unet/ + controlnet/) in models/addsr/
RAM_FILE = "ram_swin_large_14m.pth"
DAPE_FILE = "DAPE.pth"
TAG_LIST = "ram_tag_list.txt"

URLS = {
    SD2_CHECKPOINT: "https://huggingface.co/stabilityai/stable-diffusion-2-1-base/resolve/main/v2-1_512-ema-pruned.safetensors",
    ADDSR_FOLDER: "https://drive.google.com/file/d/19dMAc4mzFSSfU23y5g44v3nZS-edubGw/view?usp=sharing",
    RAM_FILE: "https://huggingface.co/spaces/xinyu1205/recognize-anything/resolve/main/ram_swin_large_14m.pth",
    DAPE_FILE: "https://drive.google.com/drive/folders/12HXrRGEXUAnmHRaf0bIn-S8XSK4Ku0JO",
    TAG_LIST: "https://github.com/xinyu1205/recognize-anything/tree/main/ram/data",
}


def model_entry(name: str, directory: str) -> dict:
    """One ``properties.models`` entry, the format the frontend's missing-models check reads."""
    return {"name": name, "url": URLS[name], "directory": directory}


# The frontend matches properties.models against the files it lists in a model folder (weight
# extensions only), by the exact widget value, and offers a download only for .safetensors/.sft
# files from huggingface.co or civitai.com; anything else is a red error in its missing-models
# dialog (tests/test_workflows.py checks this). So only the SD2 checkpoint is listed: the AddSR
# folder, RAM/DAPE (.pth, partly on Google Drive) and the tag list are explained in the Note.
LOADER_MODELS = {
    "CheckpointLoaderSimple": [model_entry(SD2_CHECKPOINT, "checkpoints")],
}

INPUT_IMAGE = "example.png"  # ships in ComfyUI/input
ADDED_PROMPT, NEGATIVE_PROMPT = DEFAULT_ADDED_PROMPT, DEFAULT_NEGATIVE_PROMPT  # official

SEESR_FOLDER = "seesr"  # the official SeeSR release folder (same layout), in models/addsr/
URLS[SEESR_FOLDER] = URLS[DAPE_FILE]  # SeeSR's Google Drive folder holds seesr/ and DAPE.pth


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
    """The Model files Note: where each file goes (only the SD2 checkpoint is in properties.models)."""
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


# ---------------------------------------------------------------------------------------------
# Definitions and layout


def definitions() -> dict:
    """Core node definitions (snapshot) plus the pack's classes."""
    from comfy_host.pack import load_pack

    core = json.loads(CORE_SNAPSHOT.read_text())["nodes"]
    return {**core, **load_pack().NODE_CLASS_MAPPINGS}


TITLE_HEIGHT = 30  # the frontend draws the title bar above pos[1]
SLOT_HEIGHT = 20
WIDGET_HEIGHT = 24  # 20 px widget + 4 px spacing
MULTILINE_HEIGHT = 90
IMAGE_NODES = {"LoadImage": 330, "SaveImage": 300, "PreviewImage": 300}  # room for the image preview
NOTE_TYPES = ("Note", "MarkdownNote")


def min_node_size(node: dict, specs: dict) -> tuple[float, float]:
    """At least what LiteGraph's computeSize gives this node in the 1.27 frontend (body, no title)."""
    if node["type"] in NOTE_TYPES:
        return 300.0, 120.0
    spec = specs[node["type"]]
    sockets = len(spec.sockets)
    outputs = len(spec.outputs)
    widgets = spec.widgets
    multiline = sum(1 for w in widgets if w.type == "STRING" and w.options.get("multiline"))
    height = 10 + SLOT_HEIGHT * max(sockets, outputs, 1) + WIDGET_HEIGHT * (len(widgets) - multiline)
    height += MULTILINE_HEIGHT * multiline
    height += WIDGET_HEIGHT * sum(1 for w, kind in spec.widget_layout() if kind == "control")
    height = max(height, IMAGE_NODES.get(node["type"], 0))
    return 340.0, float(height)


def node_rect(node: dict) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) including the title bar."""
    x, y = node["pos"]
    w, h = node["size"]
    return x, y - TITLE_HEIGHT, x + w, y + h


def rects_overlap(a, b, gap: float = 0.0) -> bool:
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


@dataclass
class Layout:
    """Stacks nodes in columns and draws groups around them."""

    builder: UIWorkflowBuilder
    column_width: float = 480.0
    gap: float = 40.0
    top: float = 0.0
    _bottom: dict = field(default_factory=dict)
    groups: list = field(default_factory=list)

    def place(self, node_id: int, column: int, *, width: float = 340.0, height: float | None = None,
              below: float | None = None) -> int:
        node = self.builder.nodes[node_id - 1]
        min_w, min_h = min_node_size(node, self.builder.specs_with_notes)
        y = self._bottom.get(column, self.top) if below is None else below
        y = max(y, self._bottom.get(column, self.top))
        node["pos"] = [column * self.column_width, y + TITLE_HEIGHT]
        node["size"] = [max(width, min_w), max(height or 0.0, min_h)]
        self._bottom[column] = y + TITLE_HEIGHT + node["size"][1] + self.gap
        return node_id

    def group(self, title: str, node_ids: list[int], color: str = "#3f789e") -> None:
        rects = [node_rect(self.builder.nodes[i - 1]) for i in node_ids]
        pad, head = 14.0, 44.0
        x0 = min(r[0] for r in rects) - pad
        y0 = min(r[1] for r in rects) - head
        x1 = max(r[2] for r in rects) + pad
        y1 = max(r[3] for r in rects) + pad
        self.groups.append({"id": len(self.groups) + 1, "title": title, "bounding": [x0, y0, x1 - x0, y1 - y0],
                            "color": color, "font_size": 24, "flags": {}})

    def leave_room_for_groups(self) -> None:
        """Push every column's start down so group title bars fit above the first node."""
        self.top = 44.0


class WorkflowBuilder(UIWorkflowBuilder):
    """UIWorkflowBuilder plus frontend-only Note nodes, groups and stable ids."""

    def __init__(self, definitions_: dict, workflow_id: str):
        super().__init__(definitions_)
        self.workflow_id = workflow_id
        self.specs_with_notes = self.specs

    def note(self, text: str, *, title: str = "Note", markdown: bool = True) -> int:
        node_id = len(self.nodes) + 1
        self.nodes.append({
            "id": node_id, "type": "MarkdownNote" if markdown else "Note",
            "pos": [0, 0], "size": [300, 120], "flags": {}, "order": node_id - 1, "mode": 0,
            "inputs": [], "outputs": [], "title": title, "properties": {}, "widgets_values": [text],
            "color": "#432", "bgcolor": "#653",
        })
        return node_id

    def build_with(self, layout: Layout) -> dict:
        workflow = self.build()
        workflow["id"] = self.workflow_id
        workflow["groups"] = layout.groups
        workflow["extra"] = {"ds": {"scale": 0.75, "offset": [460, 80]}, "frontendVersion": "1.27.10"}
        return workflow


def _loader_models(builder: WorkflowBuilder, node_id: int) -> None:
    node = builder.nodes[node_id - 1]
    models = LOADER_MODELS.get(node["type"])
    if models:
        node["properties"]["models"] = json.loads(json.dumps(models))


def _stable_id(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"addsr-comfyui/workflows/{name}"))


# ---------------------------------------------------------------------------------------------
# Shared pieces


@dataclass
class Loaded:
    image: int
    checkpoint: int
    addsr: int
    ram: int


def _model_loader(b: WorkflowBuilder, release: Release = ADDSR_RELEASE, family: str = "auto",
                  title: str | None = None) -> int:
    return b.add("AddSRModelLoader", title=title, model=release.folder, dtype="auto", family=family)


def _load_nodes(b: WorkflowBuilder, release: Release = ADDSR_RELEASE, family: str = "auto",
                model_title: str | None = None) -> Loaded:
    loaded = Loaded(
        image=b.add("LoadImage", title="Low-resolution image", image=INPUT_IMAGE),
        checkpoint=b.add("CheckpointLoaderSimple", title="SD2 base (VAE + CLIP)", ckpt_name=SD2_CHECKPOINT),
        addsr=_model_loader(b, release, family, model_title),
        ram=b.add("AddSRRAMLoader", ram=RAM_FILE, dape=DAPE_FILE, dtype="auto", tag_list=TAG_LIST),
    )
    for node_id in (loaded.checkpoint, loaded.ram):
        _loader_models(b, node_id)
    return loaded


def _place_loaders(layout: Layout, loaded: Loaded, note: int, *extra: int) -> None:
    layout.place(note, 0, width=420, height=420)
    layout.place(loaded.image, 1, height=330)
    for node_id in (loaded.checkpoint, loaded.addsr, *extra, loaded.ram):
        layout.place(node_id, 1)


@dataclass
class Prompts:
    tagger: int
    positive: int
    negative: int

    @property
    def nodes(self) -> list[int]:
        return [self.tagger, self.positive, self.negative]


def _prompt_nodes(b: WorkflowBuilder, loaded: Loaded, *, added: str = ADDED_PROMPT,
                  negative_title: str = "Negative prompt (used when cfg > 1)") -> Prompts:
    """RAM tags -> AddSR Prompt (official prompt per image, SD2 CLIP), + the negative (CLIP Text Encode)."""
    prompts = Prompts(
        tagger=b.add("AddSRTagger"),
        positive=b.add("AddSRPrompt", title="Prompt: tags + official quality words", prompt="", quality_words=added),
        negative=b.add("CLIPTextEncode", title=negative_title, text=NEGATIVE_PROMPT),
    )
    c = b.connect
    c(loaded.image, "IMAGE", prompts.tagger, "image")
    c(loaded.ram, "ram", prompts.tagger, "ram")
    c(prompts.tagger, "tags", prompts.positive, "tags")
    c(loaded.checkpoint, "CLIP", prompts.positive, "clip")
    c(loaded.checkpoint, "CLIP", prompts.negative, "clip")
    return prompts


def _encode_lr(b: WorkflowBuilder, loaded: Loaded, vae_tile: int) -> int:
    encode = b.add("AddSREncodeLR", scale=4, vae_tile_size=vae_tile, min_size=512)
    b.connect(loaded.image, "IMAGE", encode, "image")
    b.connect(loaded.checkpoint, "VAE", encode, "vae")
    b.connect(loaded.ram, "ram", encode, "ram")
    return encode


def _sampler(b: WorkflowBuilder, method: "Method", model: int, encode: int, prompts: Prompts, loaded: Loaded,
             title: str | None = None) -> int:
    """AddSR Sampler or SeeSR Sampler on the Encode LR bundle and the prompts; the AddSR Sampler's
    refinement VAE and RAM are wired visibly (the ones Encode LR used)."""
    sampler = b.add(method.sampler, title=title, **method.values)
    b.connect(model, "addsr_model", sampler, "addsr_model")
    b.connect(encode, "addsr_cond", sampler, "addsr_cond")
    b.connect(prompts.positive, "CONDITIONING", sampler, "positive")
    b.connect(prompts.negative, "CONDITIONING", sampler, "negative")
    if method.sampler == "AddSRSampler":
        b.connect(loaded.checkpoint, "VAE", sampler, "vae")
        b.connect(loaded.ram, "ram", sampler, "ram")
    return sampler


def _decode_and_finish(b: WorkflowBuilder, loaded: Loaded, sampler: int, encode: int, decode_tile: int, *,
                       titles: tuple = (None, None)) -> tuple[int, int]:
    """Tiled VAE Decode of the sampler's latent, then AddSR Finish (adain colour fix against the
    upscaled LR, exact size, alpha) with the Encode LR bundle: the all-in-one node's last stages."""
    decode = b.add("AddSRTiledVAEDecode", title=titles[0], tile_size=decode_tile, overlap=64)
    finish = b.add("AddSRFinish", title=titles[1], color_fix="adain")
    b.connect(sampler, "latent", decode, "samples")
    b.connect(loaded.checkpoint, "VAE", decode, "vae")
    b.connect(decode, "IMAGE", finish, "image")
    b.connect(encode, "addsr_cond", finish, "addsr_cond")
    return decode, finish


@dataclass(frozen=True)
class Method:
    """The sampler of a modular graph, and what differs with it (SeeSR: its files, prompt, group title)."""

    sampler: str
    values: dict
    release: Release = ADDSR_RELEASE
    family: str = "auto"
    added_prompt: str = ADDED_PROMPT
    negative_title: str = "Negative prompt (used when cfg > 1)"
    model_title: str | None = None
    section: str = "AddSR"
    files_note: str = FILES_NOTE


def _addsr_method(*, steps: int = 4, tile: int = DEFAULT_LATENT_TILE_PX, overlap: int = DEFAULT_LATENT_OVERLAP_PX) -> Method:
    return Method("AddSRSampler", dict(seed=0, steps=steps, psr_weight=0.4, cfg=0.0, tile_size=tile,
                                       tile_overlap=overlap, recompute_tokens=True))


def _modular(name: str, *, steps: int = 4, sampler_tile: int = DEFAULT_LATENT_TILE_PX,
             sampler_overlap: int = DEFAULT_LATENT_OVERLAP_PX, vae_tile: int,
             decode_tile: int, about: str, method: Method | None = None) -> dict:
    """LoadImage -> tags -> prompt -> Encode LR -> Sampler -> Tiled Decode -> Finish -> Save."""
    method = method or _addsr_method(steps=steps, tile=sampler_tile, overlap=sampler_overlap)
    b = WorkflowBuilder(definitions(), _stable_id(name))
    layout = Layout(b)
    layout.leave_room_for_groups()
    files = b.note(method.files_note, title="Model files")
    loaded = _load_nodes(b, method.release, method.family, method.model_title)
    prompts = _prompt_nodes(b, loaded, added=method.added_prompt, negative_title=method.negative_title)
    encode = _encode_lr(b, loaded, vae_tile)
    sampler = _sampler(b, method, loaded.addsr, encode, prompts, loaded)
    decode, colorfix = _decode_and_finish(b, loaded, sampler, encode, decode_tile)
    save = b.add("SaveImage", filename_prefix=f"AddSR/{name}")
    preview = b.add("PreviewImage", title="Preview: before the colour fix")
    about_note = b.note(about, title="About this workflow")
    b.connect(colorfix, "IMAGE", save, "images")
    b.connect(decode, "IMAGE", preview, "images")

    _place_loaders(layout, loaded, files)
    layout.place(about_note, 0, width=420, height=260)
    for node_id in prompts.nodes:
        layout.place(node_id, 2)
    for node_id in (encode, sampler):
        layout.place(node_id, 3)
    for node_id in (decode, colorfix):
        layout.place(node_id, 4)
    layout.place(save, 5, width=420, height=420)
    layout.place(preview, 5, width=420, height=420)
    layout.group("1. Input and models", [loaded.image, loaded.checkpoint, loaded.addsr, loaded.ram])
    layout.group("2. Prompt from RAM tags", prompts.nodes, color="#8a8")
    layout.group(f"3. {method.section}", [encode, sampler], color="#b58b2a")
    layout.group("4. Decode and finish", [decode, colorfix], color="#a1309b")
    layout.group("5. Output", [save, preview], color="#444")
    return b.build_with(layout)


# ---------------------------------------------------------------------------------------------
# The workflows


def addsr_basic_4x() -> dict:
    return _modular(
        "addsr_basic_4x", steps=4, vae_tile=DEFAULT_VAE_TILE_PX, decode_tile=DEFAULT_VAE_TILE_PX,
        about="## AddSR basic 4x\n\nThe official setting: **4 steps**, PSR weight **0.4**, no CFG, RAM tags + "
              "quality words as the prompt, **adain** colour fix against the input.\n\n"
              "Load your low-resolution photo in *Low-resolution image*. Inputs whose upscaled short side is "
              "below 512 px are first enlarged (official `process_size`). Images larger than one tile "
              "(1024 px) are tiled automatically.",
    )


def addsr_fast_1step() -> dict:
    return _modular(
        "addsr_fast_1step", steps=1, vae_tile=DEFAULT_VAE_TILE_PX, decode_tile=DEFAULT_VAE_TILE_PX,
        about="## AddSR fast (1 step)\n\nThe same graph as the basic workflow with **1 step** instead of 4: "
              "about 4x faster sampling, a little less generated detail. PSR weight has no effect with one "
              "step (there is no next step to refine).",
    )


def addsr_large_tiled() -> dict:
    return _modular(
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
    b = WorkflowBuilder(definitions(), _stable_id(name))
    layout = Layout(b)
    layout.leave_room_for_groups()
    files = b.note(FILES_NOTE, title="Model files")
    loaded = _load_nodes(b)
    upscale = b.add("AddSRUpscale", prompt="", seed=0, steps=4, scale=4, psr_weight=0.4, color_fix="adain",
                    tile_size=DEFAULT_LATENT_TILE_PX, use_tags=True, cfg=0.0, negative_prompt=NEGATIVE_PROMPT,
                    min_size=512, vae_tile_size=DEFAULT_VAE_TILE_PX)
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

    _place_loaders(layout, loaded, files)
    layout.place(about, 0, width=420, height=220)
    layout.place(upscale, 2, width=380)
    layout.place(nearest, 2, width=380)
    layout.place(save, 3, width=420, height=420)
    layout.place(preview, 3, width=420, height=420)
    layout.group("1. Input and models", [loaded.image, loaded.checkpoint, loaded.addsr, loaded.ram])
    layout.group("2. AddSR", [upscale, nearest], color="#b58b2a")
    layout.group("3. Output", [save, preview], color="#444")
    return b.build_with(layout)


# name -> function returning the UI workflow. Other families register theirs here too.
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


# Other families register their workflows here (each module adds its own entries).
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import seesr_workflows  # noqa: E402
import stablesr_workflows  # noqa: E402

seesr_workflows.register(sys.modules[__name__])
stablesr_workflows.register(sys.modules[__name__])


# ---------------------------------------------------------------------------------------------
# Thumbnails


def make_thumbnail(name: str, out: Path, *, max_bytes: int = 200_000) -> Path:
    """Input vs 4x, side by side, labelled honestly.

    The right-hand panel is a bicubic 4x upscale with the workflow's adain colour fix, a stand-in:
    no AddSR weights are available when the thumbnails are built, and tiny random weights only make
    noise. The label says so.
    """
    import numpy as np
    import torch
    from PIL import Image, ImageDraw, ImageFont
    from skimage import data

    from addsr_core.imaging.colorfix import adain_color_fix

    info = THUMBNAILS[name]
    photo = getattr(data, info["photo"])()
    hr = Image.fromarray(photo).convert("RGB")
    side = min(hr.size)
    hr = hr.crop(((hr.width - side) // 2, 0, (hr.width - side) // 2 + side, side)).resize((256, 256), Image.LANCZOS)
    # Degrade: blur + 4x down + JPEG, the usual blind-SR test recipe.
    from PIL import ImageFilter
    import io

    lr = hr.filter(ImageFilter.GaussianBlur(1.2)).resize((64, 64), Image.BICUBIC)
    buffer = io.BytesIO()
    lr.save(buffer, "JPEG", quality=35)
    lr = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    nearest = lr.resize((256, 256), Image.NEAREST)
    bicubic = lr.resize((256, 256), Image.BICUBIC)
    to_t = lambda im: torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    fixed = adain_color_fix(to_t(bicubic), to_t(lr)).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    right = Image.fromarray((fixed * 255).round().astype(np.uint8))

    pad, head, foot = 8, 30, 22
    canvas = Image.new("RGB", (256 * 2 + pad * 3, 256 + head + foot + pad), (24, 24, 28))
    canvas.paste(nearest, (pad, head))
    canvas.paste(right, (256 + 2 * pad, head))
    draw = ImageDraw.Draw(canvas)
    try:
        title_font, label_font = ImageFont.load_default(size=16), ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1
        title_font = label_font = ImageFont.load_default()
    draw.text((pad, 7), info["title"], fill=(240, 240, 240), font=title_font)
    draw.text((pad, head + 256 + 5), "input (64 px, 4x nearest)", fill=(200, 200, 200), font=label_font)
    draw.text((256 + 2 * pad, head + 256 + 5), f"preview: bicubic 4x + adain, NOT {info.get('product', 'AddSR')} output",
              fill=(255, 200, 120), font=label_font)
    out.parent.mkdir(parents=True, exist_ok=True)
    for colors in (256, 128, 64):
        canvas.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(
            out, optimize=True)
        if out.stat().st_size < max_bytes:
            break
    return out


# ---------------------------------------------------------------------------------------------


def write_workflow(name: str, out_dir: Path = WORKFLOW_DIR) -> Path:
    workflow = WORKFLOWS[name]()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(workflow, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"workflows to write (default: all of {sorted(WORKFLOWS)})")
    parser.add_argument("--out", type=Path, default=WORKFLOW_DIR)
    parser.add_argument("--no-thumbnails", action="store_true")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in WORKFLOWS]
    if unknown:
        parser.error(f"unknown workflow(s) {unknown}; known: {sorted(WORKFLOWS)}")
    for name in args.names or list(WORKFLOWS):
        path = write_workflow(name, args.out)
        print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
        if not args.no_thumbnails and name in THUMBNAILS:
            thumb = make_thumbnail(name, args.out / f"{name}.png")
            print(f"wrote {thumb.name} ({thumb.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
