"""Cancel in the middle of AddSR Sampler, with the real ``comfy`` imported: where it stops and what it leaves behind.

Run as a script in a fresh interpreter (importing ComfyUI changes process-wide state)::

    python tests/comfy_host/cancel.py COMFYUI_PATH WORKDIR   # prints one JSON line

A first run warms everything up (models loaded, the VAE handle cached). Then Cancel is pressed the
way the server presses it (``interrupt_current_processing``) while the UNet's 3rd call runs. Reported:
the exception that reached the caller (ComfyUI's own InterruptProcessingException: a BaseException
since 0.16, an Exception before), how many UNet calls ran, the torch tensors still alive after the
cancelled run that were not alive before it (what we would be holding), ComfyUI's loaded models
before and after, and whether a rerun gives the first run's latent bit for bit.
"""
from __future__ import annotations

import gc
import json
import os
import sys
import warnings
import weakref
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lowvram import _setup  # noqa: E402

CANCEL_AT_CALL = 3


def _live_tensors() -> list:
    import torch

    gc.collect()
    with warnings.catch_warnings():  # isinstance() touches torch.distributed's deprecated aliases
        warnings.simplefilter("ignore")
        return [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]


def main(comfyui: str, workdir: str) -> dict:
    mm = _setup(comfyui)
    import torch

    from nodekit import FakeComfyCLIP, FakeComfyVAE, make_kit

    root = Path(workdir)
    kit = make_kit(root)
    os.environ.update(ADDSR_ADDSR_DIR=str(root / "addsr"), ADDSR_RAM_DIR=str(root / "ram"))
    import nodes

    (model,) = nodes.AddSRModelLoader().load("AddSR-tiny", "fp32")
    (ram,) = nodes.AddSRRAMLoader().load("ram_base.pth", "DAPE.pth", "fp32", tag_list="ram_tag_list.txt")
    vae, clip = FakeComfyVAE(kit["sd2"]), FakeComfyCLIP(kit["sd2"])
    image = torch.rand(1, 40, 48, 3, generator=torch.Generator().manual_seed(0))
    positive, negative = clip.conditioning("a dog"), clip.conditioning("blur")
    (cond,) = nodes.AddSREncodeLR().encode(image, vae, ram, scale=4, vae_tile_size=256, min_size=64)

    unet = model.unet.module
    calls = {"n": 0, "cancel_at": None}
    forward = unet.forward

    def counting_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["cancel_at"]:
            mm.interrupt_current_processing(True)  # what POST /interrupt does, while this call runs
        return forward(*args, **kwargs)

    unet.forward = counting_forward

    def sample():
        (latent,) = nodes.AddSRSampler().sample(model, cond, positive, negative, seed=3, steps=4, psr_weight=0.4,
                                                cfg=1.5, tile_size=256, tile_overlap=64)
        return latent["samples"]

    first = sample()
    loaded_before = sorted(type(m.model.model).__name__ for m in mm.current_loaded_models)
    calls.update(n=0, cancel_at=CANCEL_AT_CALL)
    before = {id(t): weakref.ref(t) for t in _live_tensors()}
    stopped_by = None
    try:
        sample()
    except BaseException as err:  # noqa: BLE001 - the point is to see exactly what comes out
        stopped_by = f"{type(err).__module__}.{type(err).__name__}"
        del err
    calls_when_stopped = calls["n"]
    left = [t for t in _live_tensors() if id(t) not in before or before[id(t)]() is not t]
    loaded_after = sorted(type(m.model.model).__name__ for m in mm.current_loaded_models)
    calls.update(n=0, cancel_at=None)
    again = sample()
    return {
        "stopped_by": stopped_by,
        "is_comfy_interrupt": stopped_by == f"{mm.InterruptProcessingException.__module__}.InterruptProcessingException",
        "calls_when_stopped": calls_when_stopped,
        "calls_uninterrupted": calls["n"],
        "tensors_left": [f"{tuple(t.shape)} {t.dtype}" for t in left],
        "loaded_before": loaded_before,
        "loaded_after": loaded_after,
        "flag_cleared": not mm.processing_interrupted(),
        "rerun_identical": bool(torch.equal(first, again)),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
