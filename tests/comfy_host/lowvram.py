"""Run the pack's nodes on tiny models with the real ``comfy`` imported, fully and partially loaded.

Run as a script in a fresh interpreter (importing ComfyUI changes process-wide state, which other
tests must not see)::

    python tests/comfy_host/lowvram.py COMFYUI_PATH WORKDIR   # prints one JSON line

On a CPU-only machine ComfyUI never loads partially (a CPU load device means "no VRAM
management"), so for the partial run ``load_models_gpu`` is called as on a GPU with no free
memory: ``vram_state`` NO_VRAM (what ``--novram`` sets) and the load device not counted as a CPU,
for the duration of that call only. ComfyUI then gives every model a budget of 0.1 bytes, i.e. its
own lowvram path (ModelPatcher.partially_load -> load with lowvram_model_memory) flags every
layer ``comfy_cast_weights`` and keeps its weights on the offload device.
"""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _setup(comfyui: str):
    # The pack's ``nodes`` package must win over ComfyUI's nodes.py: the repo goes first.
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    sys.path.append(comfyui)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # no CUDA here; main.py --cpu sets the same
    import comfy.model_management as mm

    return mm


@contextlib.contextmanager
def no_free_vram(mm):
    real_load, real_is_cpu, real_state = mm.load_models_gpu, mm.is_device_cpu, mm.vram_state

    def load_models_gpu(models, *args, **kwargs):
        mm.is_device_cpu, mm.vram_state = (lambda device: False), mm.VRAMState.NO_VRAM
        try:
            return real_load(models, *args, **kwargs)
        finally:
            mm.is_device_cpu, mm.vram_state = real_is_cpu, real_state

    mm.load_models_gpu = load_models_gpu
    try:
        yield
    finally:
        mm.load_models_gpu = real_load


def _state(managed) -> dict:
    flags = [m.comfy_cast_weights for m in managed.module.modules() if hasattr(m, "comfy_cast_weights")]
    return {"cast_layers": sum(flags), "layers": len(flags), "lowvram": bool(managed.module.model_lowvram),
            "device": str(managed.device)}


def main(comfyui: str, workdir: str) -> dict:
    import os

    mm = _setup(comfyui)
    import torch

    from nodekit import FakeComfyCLIP, FakeComfyVAE, make_kit

    root = Path(workdir)
    kit = make_kit(root)
    os.environ["ADDSR_ADDSR_DIR"] = str(root / "addsr")
    os.environ["ADDSR_RAM_DIR"] = str(root / "ram")
    import nodes
    from nodes import comfy_bridge
    from nodes.common import as_addsr_vae

    (model,) = nodes.AddSRModelLoader().load("AddSR-tiny", "fp32")
    (ram,) = nodes.AddSRRAMLoader().load("ram_base.pth", "DAPE.pth", "fp32", tag_list="ram_tag_list.txt")
    vae, clip = FakeComfyVAE(kit["sd2"]), FakeComfyCLIP(kit["sd2"])
    handle = as_addsr_vae(vae)
    managed = {"unet": model.unet, "controlnet": model.controlnet, "vae": handle.managed, "ram": ram.encoder}
    image = torch.rand(1, 24, 32, 3, generator=torch.Generator().manual_seed(0))
    positive, negative = clip.conditioning("a dog"), clip.conditioning("blur")

    def run():
        (cond,) = nodes.AddSREncodeLR().encode(image, vae, ram, scale=2, vae_tile_size=256, min_size=64)
        (latent,) = nodes.AddSRSampler().sample(model, cond, positive, negative, seed=3, steps=2, psr_weight=0.4,
                                                cfg=1.5, tile_size=256, tile_overlap=64)
        return cond, latent["samples"]

    result = {
        "patchers": {k: m.patcher is not None for k, m in managed.items()},
        "ops": {k: type(m.module.conv_in if k != "ram" else m.module.image_proj).__module__ for k, m in managed.items()
                if k != "vae"} | {"vae": type(handle.vae.decoder.conv_in).__module__},
    }
    cond_full, z_full = run()
    result["full"] = {k: _state(m) for k, m in managed.items()}
    mm.unload_all_models()  # as if other models had pushed ours out: the next run loads them afresh
    with no_free_vram(mm):
        cond_low, z_low = run()
    result["partial"] = {k: _state(m) for k, m in managed.items()}
    result["identical"] = {
        "z0": torch.equal(z_full, z_low),
        "moments": torch.equal(cond_full.cond.moments, cond_low.cond.moments),
        "tokens": torch.equal(cond_full.cond.lr_tokens, cond_low.cond.lr_tokens),
    }
    result["max_abs_diff"] = float((z_full - z_low).abs().max())
    result["load_device"] = str(comfy_bridge.load_to_device(list(managed.values())))
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
