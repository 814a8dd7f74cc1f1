"""The SeeSR workflows: SeeSR alone (50 steps) and AddSR vs SeeSR on the same input.

SeeSR runs on the AddSR nodes and files (only the sampler differs), so these graphs are the shared
modular chain with SeeSR's :class:`~tools.workflows.modular.Method`.
"""
from __future__ import annotations

from typing import Callable

from addsr_core.memory import AUTO
from addsr_core.seesr import pipeline as seesr

from .builder import start
from .files import ADDSR_RELEASE, SEESR_RELEASE, files_note
from .modular import (
    Method,
    addsr_method,
    decode_and_finish,
    encode_lr,
    load_nodes,
    model_loader,
    modular,
    place_loaders,
    prompt_nodes,
    sampler,
)

DAPE_ROLE = "SeeSR's degradation-aware RAM LoRA, which AddSR uses too"


def seesr_method() -> Method:
    """test_seesr.py's setting: 50 DDPM steps, CFG 5.5 with the negative, 768 px tiles overlapping by 32 px
    (96 and 4 latents), from the LR."""
    values = dict(seed=0, steps=seesr.DEFAULT_STEPS, cfg=seesr.DEFAULT_GUIDANCE, tile_size=seesr.OFFICIAL_TILE_PX,
                  tile_overlap=seesr.OFFICIAL_OVERLAP_PX, start_point="lr", official_tiles=True)
    return Method(
        "SeeSRSamplerV2", values, release=SEESR_RELEASE, family="seesr", added_prompt=seesr.SEESR_ADDED_PROMPT,
        negative_title="Negative prompt (official; cfg 5.5 uses it)", model_title="SeeSR weights (family seesr)",
        section="SeeSR (50 steps, cfg 5.5)", files_note=files_note((SEESR_RELEASE,), DAPE_ROLE),
    )


def seesr_quality_50() -> dict:
    return modular(
        "seesr_quality_50", vae_tile=AUTO, decode_tile=AUTO, method=seesr_method(),
        about="## SeeSR 4x, 50 steps (quality)\n\nThe official SeeSR run (`test_seesr.py`): **50 DDPM steps** "
              "from the LR latent noised to t=999, **CFG 5.5** with the negative prompt, RAM tags + "
              "'clean, high-resolution, 8k' as the prompt, 768 px tiles overlapping by 32 px (96 and 4 latents), **adain** "
              "colour fix.\n\nSlow: 100 network calls per tile (50 steps, CFG doubles each) against AddSR's 4. "
              "*AddSR Load Model* has family **seesr**; the SeeSR Sampler warns when given AddSR weights.",
    )


def addsr_vs_seesr() -> dict:
    """Same LR, same prompts: AddSR (4 steps) and SeeSR (50 steps), each decoded and colour-fixed."""
    name = "addsr_vs_seesr"
    b, layout = start(name)
    files = b.note(files_note((ADDSR_RELEASE, SEESR_RELEASE), DAPE_ROLE), title="Model files")
    loaded = load_nodes(b, model_title="AddSR weights")
    seesr_model = model_loader(b, SEESR_RELEASE, "seesr", "SeeSR weights (family seesr)")
    prompts = prompt_nodes(b, loaded, negative_title="Negative prompt (SeeSR's cfg 5.5 uses it)")
    encode = encode_lr(b, loaded, AUTO)
    addsr = sampler(b, addsr_method(), loaded.addsr, encode, prompts, loaded, title="AddSR Sampler (4 steps)")
    seesr_sampler = sampler(b, seesr_method(), seesr_model, encode, prompts, loaded, title="SeeSR Sampler (50 steps)")
    addsr_decode, addsr_fix = decode_and_finish(b, loaded, addsr, encode, AUTO,
                                                titles=("AddSR: Tiled VAE Decode", "AddSR: Finish"))
    seesr_decode, seesr_fix = decode_and_finish(b, loaded, seesr_sampler, encode, AUTO,
                                                titles=("SeeSR: Tiled VAE Decode", "SeeSR: Finish"))
    # Two Save Image nodes, not one over a Batch Images: ComfyUI 0.33 marks ImageBatch deprecated.
    addsr_save = b.add("SaveImage", title="AddSR, 4 steps", filename_prefix=f"AddSR/{name}_addsr")
    seesr_save = b.add("SaveImage", title="SeeSR, 50 steps", filename_prefix=f"AddSR/{name}_seesr")
    about = b.note(
        "## AddSR vs SeeSR\n\nThe same low-resolution image, the same **Encode LR** bundle and the same prompts "
        "(RAM tags + AddSR's quality words, which start with SeeSR's 'clean, high-resolution, 8k') go to "
        "**AddSR** (4 steps, PSR 0.4, no CFG: the official setting) and to its 50-step teacher **SeeSR** "
        "(50 steps, CFG 5.5 with the negative prompt: the official setting). Each result is decoded and "
        "finished (colour fix against the upscaled input, exact size).\n\nThe two results sit side by side, each in its own "
        "*Save Image* (files `addsr_vs_seesr_addsr_*` and `addsr_vs_seesr_seesr_*`). SeeSR makes 100 network calls per "
        "tile against AddSR's 4.",
        title="About this workflow")
    c = b.connect
    c(addsr_fix, "IMAGE", addsr_save, "images")
    c(seesr_fix, "IMAGE", seesr_save, "images")

    place_loaders(layout, loaded, files, seesr_model)
    layout.place(about, 0, width=420, height=260)
    for node_id in prompts.nodes:
        layout.place(node_id, 2)
    for node_id in (encode, addsr, seesr_sampler):
        layout.place(node_id, 3)
    for node_id in (addsr_decode, addsr_fix, seesr_decode, seesr_fix):
        layout.place(node_id, 4)
    layout.place(addsr_save, 5, width=420, height=420)  # side by side: same row, next column
    layout.place(seesr_save, 6, width=420, height=420)
    layout.group("1. Input and models", [loaded.image, loaded.checkpoint, loaded.addsr, seesr_model, loaded.ram])
    layout.group("2. Prompt from RAM tags", prompts.nodes, color="#8a8")
    layout.group("3. AddSR (4 steps) and SeeSR (50 steps)", [encode, addsr, seesr_sampler], color="#b58b2a")
    layout.group("4. Decode and finish", [addsr_decode, addsr_fix, seesr_decode, seesr_fix], color="#a1309b")
    layout.group("5. Side by side, saved", [addsr_save, seesr_save], color="#444")
    return b.build_with(layout)


WORKFLOWS: dict[str, Callable[[], dict]] = {
    "seesr_quality_50": seesr_quality_50,
    "addsr_vs_seesr": addsr_vs_seesr,
}

THUMBNAILS: dict[str, dict] = {
    "seesr_quality_50": {"photo": "rocket", "title": "SeeSR 4x, 50 steps", "product": "SeeSR"},
    "addsr_vs_seesr": {"photo": "chelsea", "title": "AddSR (4 steps) vs SeeSR (50 steps)", "product": "model"},
}
