"""Every loader of the pack under ComfyUI's DynamicVRAM, with the real ``comfy`` imported, against the same run with it off.

Run as a script in a fresh interpreter (importing ComfyUI changes process-wide state)::

    python tests/comfy_host/dynamic_vram.py COMFYUI_PATH WORKDIR   # prints one JSON line

For each setting of ``comfy.memory_management.aimdo_enabled`` (what main.py turns on for NVIDIA
GPUs, with ``CoreModelPatcher = ModelPatcherDynamic``), the five loaders build their networks
from ``comfy.ops`` (AddSR Load Model, AddSR Load RAM, the VAE built over ComfyUI's VAE, StableSR
Model Loader, StableSR CFW VAE Loader), then AddSR's Encode LR + Sampler and StableSR's Sampler +
CFW Decode run. Reported: how many Linear layers each loader saw built without weights (the
DynamicVRAM construction; 0 with the flag off), which patcher class the bridge asked
``CoreModelPatcher`` for and got (on a CPU load device ``ModelPatcherDynamic`` hands over to the
plain ModelPatcher), and whether every output is bit-identical between the two settings.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lowvram import _setup  # noqa: E402


def main(comfyui: str, workdir: str) -> dict:
    mm = _setup(comfyui)
    import comfy.memory_management
    import comfy.model_patcher
    import torch

    import addsr_core.loading.io as io
    from addsr_core.stablesr.tiny import write_tiny_stablesr_files
    from addsr_core.addsr.tiny import TEXT_WIDTH
    from nodekit import FakeComfyCLIP, FakeComfyVAE, make_kit

    root = Path(workdir)
    kit = make_kit(root)
    stablesr = write_tiny_stablesr_files(root / "stablesr_models", context_dim=TEXT_WIDTH)
    os.environ.update(ADDSR_ADDSR_DIR=str(root / "addsr"), ADDSR_RAM_DIR=str(root / "ram"),
                      ADDSR_STABLESR_DIR=str(root / "stablesr_models" / "stablesr"))
    import nodes
    from nodes.common import as_addsr_vae

    lazy_linears: list[int] = []
    real_layout = io.expected_layout

    def spy(module):  # the loaders' strict check reads the layout before loading: count what is unbuilt then
        if not any(p.device.type != "meta" for p in module.parameters()):
            lazy_linears.append(sum(1 for m in module.modules() if isinstance(m, torch.nn.Linear) and m.weight is None))
        return real_layout(module)

    io.expected_layout = spy
    image = torch.rand(1, 24, 32, 3, generator=torch.Generator().manual_seed(0))
    clip = FakeComfyCLIP(kit["sd2"])
    positive, negative = clip.conditioning("a dog"), clip.conditioning("blur")

    core_requests: list[str] = []

    def core_patcher(base):  # main.py's CoreModelPatcher, recording that our bridge asked for it
        def make(*args, **kwargs):
            core_requests.append(base.__name__)
            return base(*args, **kwargs)

        return make

    def run(dynamic: bool) -> dict:
        comfy.memory_management.aimdo_enabled = dynamic
        comfy.model_patcher.CoreModelPatcher = core_patcher(comfy.model_patcher.ModelPatcherDynamic if dynamic
                                                            else comfy.model_patcher.ModelPatcher)
        core_requests.clear()
        lazy: dict[str, int] = {}

        def counted(name, load):
            lazy_linears.clear()
            result = load()
            lazy[name] = sum(lazy_linears)
            return result

        (model,) = counted("addsr_model", lambda: nodes.AddSRModelLoader().load("AddSR-tiny", "fp32"))
        (ram,) = counted("ram", lambda: nodes.AddSRRAMLoader().load("ram_base.pth", "DAPE.pth", "fp32",
                                                                     tag_list="ram_tag_list.txt"))
        vae = FakeComfyVAE(kit["sd2"])  # a fresh ComfyUI VAE each time: as_addsr_vae caches on it
        handle = counted("vae", lambda: as_addsr_vae(vae))
        (sr_model,) = counted("stablesr_model", lambda: nodes.StableSRModelLoader().load(
            stablesr["StableSRModelLoader"]["model"], "auto", "fp32"))
        (cfw,) = counted("cfw_vae", lambda: nodes.StableSRCFWLoader().load(stablesr["StableSRCFWLoader"]["cfw_file"], "fp32"))

        (cond,) = nodes.AddSREncodeLR().encode(image, vae, ram, scale=2, vae_tile_size=256, min_size=64)
        (latent,) = nodes.AddSRSampler().sample(model, cond, positive, negative, seed=3, steps=2, psr_weight=0.4,
                                                cfg=1.5, tile_size=256, tile_overlap=64)
        (sr_latent,) = nodes.StableSRSampler().sample(sr_model, cfw, image, positive, seed=3, steps=1,
                                                      scale=4.0, min_size=64)
        (sr_image,) = nodes.StableSRCFWDecode().decode(sr_latent, cfw, fidelity=0.5, color_fix="adain")
        patchers = {name: type(m.patcher).__name__ for name, m in
                    {"unet": model.unet, "ram": ram.encoder, "vae": handle.managed, "stablesr": sr_model.managed,
                     "cfw": cfw.managed}.items()}
        mm.unload_all_models()
        return {"lazy_linears": lazy, "patchers": patchers, "core_requests": list(core_requests),
                "outputs": {"moments": cond.cond.moments, "tokens": cond.cond.lr_tokens, "z0": latent["samples"],
                            "stablesr_z0": sr_latent["samples"], "stablesr_image": sr_image}}

    off, on = run(False), run(True)
    return {
        "lazy_linears": {"off": off["lazy_linears"], "on": on["lazy_linears"]},
        "patchers": {"off": off["patchers"], "on": on["patchers"]},
        "core_requests": {"off": off["core_requests"], "on": on["core_requests"]},
        "identical": {k: bool(torch.equal(off["outputs"][k], on["outputs"][k])) for k in off["outputs"]},
        "aimdo_enabled_at_end": bool(comfy.memory_management.aimdo_enabled),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
