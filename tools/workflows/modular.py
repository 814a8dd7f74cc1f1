"""The node-by-node graph AddSR and SeeSR share: the same loaders, RAM prompt, Encode LR, decode and
finish; only the sampler (and the files and prompt that go with it) differ, as a :class:`Method`.

    LoadImage -> tags -> prompt -> Encode LR -> Sampler -> Tiled Decode -> Finish -> Save
"""
from __future__ import annotations

from dataclasses import dataclass

from addsr_core.memory import AUTO
from addsr_core.stages import DEFAULT_LATENT_OVERLAP_PX, DEFAULT_VAE_OVERLAP_PX
from addsr_core.text.prompt import DEFAULT_ADDED_PROMPT, DEFAULT_NEGATIVE_PROMPT

from .builder import Layout, WorkflowBuilder, start
from .files import ADDSR_RELEASE, DAPE_FILE, FILES_NOTE, INPUT_IMAGE, RAM_FILE, SD2_CHECKPOINT, TAG_LIST, Release, loader_models

ADDED_PROMPT, NEGATIVE_PROMPT = DEFAULT_ADDED_PROMPT, DEFAULT_NEGATIVE_PROMPT  # official


@dataclass
class Loaded:
    image: int
    checkpoint: int
    addsr: int
    ram: int


def model_loader(b: WorkflowBuilder, release: Release = ADDSR_RELEASE, family: str = "auto",
                 title: str | None = None) -> int:
    return b.add("AddSRModelLoader", title=title, model=release.folder, dtype="auto", family=family)


def load_nodes(b: WorkflowBuilder, release: Release = ADDSR_RELEASE, family: str = "auto",
               model_title: str | None = None) -> Loaded:
    loaded = Loaded(
        image=b.add("LoadImage", title="Low-resolution image", image=INPUT_IMAGE),
        checkpoint=b.add("CheckpointLoaderSimple", title="SD2 base (VAE + CLIP)", ckpt_name=SD2_CHECKPOINT),
        addsr=model_loader(b, release, family, model_title),
        ram=b.add("AddSRRAMLoader", ram=RAM_FILE, dape=DAPE_FILE, dtype="auto", tag_list=TAG_LIST),
    )
    for node_id in (loaded.checkpoint, loaded.ram):
        node = b.nodes[node_id - 1]
        models = loader_models(node["type"])
        if models:
            node["properties"]["models"] = models
    return loaded


def place_loaders(layout: Layout, loaded: Loaded, note: int, *extra: int) -> None:
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


def prompt_nodes(b: WorkflowBuilder, loaded: Loaded, *, added: str = ADDED_PROMPT,
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


def encode_lr(b: WorkflowBuilder, loaded: Loaded, vae_tile: int) -> int:
    encode = b.add("AddSREncodeLR", scale=4, vae_tile_size=vae_tile, min_size=512)
    b.connect(loaded.image, "IMAGE", encode, "image")
    b.connect(loaded.checkpoint, "VAE", encode, "vae")
    b.connect(loaded.ram, "ram", encode, "ram")
    return encode


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


def addsr_method(*, steps: int = 4, tile: int = AUTO, overlap: int = DEFAULT_LATENT_OVERLAP_PX) -> Method:
    return Method("AddSRSampler", dict(seed=0, steps=steps, psr_weight=0.4, cfg=0.0, tile_size=tile,
                                       tile_overlap=overlap, recompute_tokens=True))


def sampler(b: WorkflowBuilder, method: Method, model: int, encode: int, prompts: Prompts, loaded: Loaded,
            title: str | None = None) -> int:
    """AddSR Sampler or SeeSR Sampler on the Encode LR bundle and the prompts; the AddSR Sampler's
    refinement VAE and RAM are wired visibly (the ones Encode LR used)."""
    node = b.add(method.sampler, title=title, **method.values)
    b.connect(model, "addsr_model", node, "addsr_model")
    b.connect(encode, "addsr_cond", node, "addsr_cond")
    b.connect(prompts.positive, "CONDITIONING", node, "positive")
    b.connect(prompts.negative, "CONDITIONING", node, "negative")
    if method.sampler == "AddSRSampler":
        b.connect(loaded.checkpoint, "VAE", node, "vae")
        b.connect(loaded.ram, "ram", node, "ram")
    return node


def decode_and_finish(b: WorkflowBuilder, loaded: Loaded, sampler_node: int, encode: int, decode_tile: int, *,
                      titles: tuple = (None, None)) -> tuple[int, int]:
    """Tiled VAE Decode of the sampler's latent, then AddSR Finish (adain colour fix against the
    upscaled LR, exact size, alpha) with the Encode LR bundle: the all-in-one node's last stages."""
    decode = b.add("AddSRTiledVAEDecode", title=titles[0], tile_size=decode_tile, overlap=DEFAULT_VAE_OVERLAP_PX)
    finish = b.add("AddSRFinish", title=titles[1], color_fix="adain")
    b.connect(sampler_node, "latent", decode, "samples")
    b.connect(loaded.checkpoint, "VAE", decode, "vae")
    b.connect(decode, "IMAGE", finish, "image")
    b.connect(encode, "addsr_cond", finish, "addsr_cond")
    return decode, finish


def modular(name: str, *, steps: int = 4, sampler_tile: int = AUTO,
            sampler_overlap: int = DEFAULT_LATENT_OVERLAP_PX, vae_tile: int,
            decode_tile: int, about: str, method: Method | None = None) -> dict:
    """LoadImage -> tags -> prompt -> Encode LR -> Sampler -> Tiled Decode -> Finish -> Save."""
    method = method or addsr_method(steps=steps, tile=sampler_tile, overlap=sampler_overlap)
    b, layout = start(name)
    files = b.note(method.files_note, title="Model files")
    loaded = load_nodes(b, method.release, method.family, method.model_title)
    prompts = prompt_nodes(b, loaded, added=method.added_prompt, negative_title=method.negative_title)
    encode = encode_lr(b, loaded, vae_tile)
    sample = sampler(b, method, loaded.addsr, encode, prompts, loaded)
    decode, colorfix = decode_and_finish(b, loaded, sample, encode, decode_tile)
    save = b.add("SaveImage", filename_prefix=f"AddSR/{name}")
    preview = b.add("PreviewImage", title="Preview: before the colour fix")
    about_note = b.note(about, title="About this workflow")
    b.connect(colorfix, "IMAGE", save, "images")
    b.connect(decode, "IMAGE", preview, "images")

    place_loaders(layout, loaded, files)
    layout.place(about_note, 0, width=420, height=260)
    for node_id in prompts.nodes:
        layout.place(node_id, 2)
    for node_id in (encode, sample):
        layout.place(node_id, 3)
    for node_id in (decode, colorfix):
        layout.place(node_id, 4)
    layout.place(save, 5, width=420, height=420)
    layout.place(preview, 5, width=420, height=420)
    layout.group("1. Input and models", [loaded.image, loaded.checkpoint, loaded.addsr, loaded.ram])
    layout.group("2. Prompt from RAM tags", prompts.nodes, color="#8a8")
    layout.group(f"3. {method.section}", [encode, sample], color="#b58b2a")
    layout.group("4. Decode and finish", [decode, colorfix], color="#a1309b")
    layout.group("5. Output", [save, preview], color="#444")
    return b.build_with(layout)
