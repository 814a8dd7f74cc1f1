"""GPU check for a lent accelerator (the `device` tool): one call, a few minutes (not a test).

    python bench/bench_gpu.py                  # on the GPU: bf16 and fp16 speed, then peak VRAM
    python bench/bench_gpu.py --device cpu --tiny-unet --sizes 256   # a quick dry run of the same code here

Full-size networks with random weights. Prints one JSON line per measurement:
- 512² output (128² LR), 4 and 1 steps, in bf16 and fp16 (channels_last): wall time per stage, after
  one warm-up run so cuDNN autotuning and allocation are not counted;
- peak VRAM (torch.cuda.max_memory_allocated) at 2048² and 4096² outputs, 1 step, default tiles.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_pipeline import build_models, timed_upscale  # noqa: E402

from addsr_core.pipeline import AddSROptions  # noqa: E402
from addsr_core.precision import apply_precision, resolve_precision  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _lr(side: int, device: torch.device) -> torch.Tensor:
    return torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(1)).to(device)


def _options(steps: int, out_side: int) -> AddSROptions:
    # min-size enlargement off below 512 so a dry run stays as small as asked (no effect at >= 512)
    return AddSROptions(steps=steps, use_tags=False, min_size=min(512, out_side))


def speed(models, device, name: str, steps: int, out_side: int) -> dict:
    options = _options(steps, out_side)
    timed_upscale(models, _lr(out_side // 4, device), options)  # warm-up
    _sync(device)
    start = time.perf_counter()
    run = timed_upscale(models, _lr(out_side // 4, device), options)
    _sync(device)
    return {"what": "speed", "precision": name, "steps": steps, "output": run["output"],
            "wall_s": round(time.perf_counter() - start, 3), "stages_s": run["stages_s"]}


def peak_memory(models, device, name: str, out_side: int) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    run = timed_upscale(models, _lr(out_side // 4, device), _options(1, out_side))
    _sync(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"what": "memory", "precision": name, "steps": 1, "output": run["output"],
            "wall_s": round(time.perf_counter() - start, 1), "peak_vram_gib": peak and round(peak, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precisions", default="bf16,fp16")
    parser.add_argument("--speed-side", type=int, default=512, help="output side of the speed runs")
    parser.add_argument("--sizes", default="2048,4096", help="output sides of the memory runs")
    parser.add_argument("--tiny-unet", action="store_true", help="tiny UNet/ControlNet (full VAE and RAM): a dry run")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(json.dumps({"device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
                      "torch": torch.__version__}), flush=True)
    base = build_models(args.tiny_unet)
    for name in args.precisions.split(","):
        precision = resolve_precision(name, device)
        models = base
        for network in (models.unet, models.controlnet, models.vae, models.ram):
            apply_precision(network.to(device), precision)
        for steps in (4, 1):
            print(json.dumps(speed(models, device, precision.name, steps, args.speed_side)), flush=True)
        for side in (int(s) for s in args.sizes.split(",") if s):
            print(json.dumps(peak_memory(models, device, precision.name, side)), flush=True)


if __name__ == "__main__":
    main()
