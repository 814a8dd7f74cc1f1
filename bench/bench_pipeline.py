"""Benchmark the AddSR pipeline with FULL-SIZE networks and random weights (not a test).

    python bench/bench_pipeline.py                       # 128->512 at 4 and 1 steps, then memory runs
    python bench/bench_pipeline.py --scenario 4step      # one scenario (each runs in its own process)

Reports wall time per stage (VAE encode, RAM, ControlNet+UNet per step, PSR decodes, final decode)
and the peak RSS of each scenario. Random weights: the timings and memory are real, the image is not.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from addsr_core.models import SD2_UNET, SD2_VAE, AutoencoderKL, ControlNetModel, UNet2DConditionModel  # noqa: E402
from addsr_core.pipeline import AddSRModels, UpscaleOptions, condition_from_lr, decode, sample  # noqa: E402
from addsr_core.ram import RAM, RAMConfig  # noqa: E402

SCENARIOS = {
    # name: (lr side, steps, tiled)
    "4step": (128, 4, False),
    "1step": (128, 1, False),
    "untiled_768": (192, 1, False),
    "untiled_1024": (256, 1, False),
    "tiled_2048": (512, 1, True),
}


def random_full_size(module_cls, config, generator):
    with torch.device("meta"):
        module = module_cls(config)
    module = module.to_empty(device="cpu")
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.02, generator=generator)
    return module.eval()


def build_models() -> AddSRModels:
    g = torch.Generator().manual_seed(0)
    unet = random_full_size(UNet2DConditionModel, SD2_UNET, g)
    controlnet = random_full_size(ControlNetModel, SD2_UNET, g)
    vae = random_full_size(AutoencoderKL, SD2_VAE, g)
    ram = random_full_size(RAM, RAMConfig(), g)
    ram.rebuild_buffers("cpu")
    return AddSRModels(unet, controlnet, vae, ram)


class StageClock:
    """Wraps callables to accumulate wall time per stage."""

    def __init__(self):
        self.seconds, self.calls = defaultdict(float), defaultdict(int)

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.seconds[name] += time.perf_counter() - start
            self.calls[name] += 1
            return out

        return timed


def run_scenario(name: str) -> dict:
    import addsr_core.pipeline as pipeline

    lr_side, steps, tiled = SCENARIOS[name]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    models = build_models()
    build_s = time.perf_counter() - t0
    clock = StageClock()
    # Stage timers around the library's own entry points.
    pipeline.vae_encode = clock.wrap("vae_encode", pipeline.vae_encode)
    decode_fn = pipeline.vae_decode
    models.ram.represent = clock.wrap("ram", models.ram.represent)
    big = 10**6
    options = UpscaleOptions(
        steps=steps, process_size=512,
        latent_tile_px=1024 if tiled else big, latent_overlap_px=256,
        vae_encode_tile_px=1024 if tiled else big, vae_decode_tile_px=1024 if tiled else big,
    )
    lr = torch.rand(1, 3, lr_side, lr_side, generator=torch.Generator().manual_seed(1))
    embeds = torch.randn(1, 77, 1024, generator=torch.Generator().manual_seed(2))
    start = time.perf_counter()
    with torch.no_grad():
        cond = condition_from_lr(models, lr, options)
        models.unet.forward = clock.wrap("unet", models.unet.forward)
        models.controlnet.forward = clock.wrap("controlnet", models.controlnet.forward)
        pipeline.vae_decode = clock.wrap("psr_decode", decode_fn)
        z0 = sample(models, cond, embeds, None, options)
        pipeline.vae_decode = clock.wrap("final_decode", decode_fn)
        image = decode(models, z0, options)
    total = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "scenario": name, "lr": lr_side, "output": list(image.shape[-2:]), "steps": steps, "tiled": tiled,
        "build_s": round(build_s, 1), "total_s": round(total, 1), "peak_rss_gib": round(peak_gib, 2),
        "stages_s": {k: round(v, 2) for k, v in clock.seconds.items()}, "calls": dict(clock.calls),
        "threads": torch.get_num_threads(),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--all", action="store_true", help="include the slow untiled/tiled size runs")
    args = parser.parse_args()
    if args.scenario:
        print(json.dumps(run_scenario(args.scenario)))
        return
    names = list(SCENARIOS) if args.all else ["4step", "1step"]
    for name in names:  # a fresh process each, so peak RSS belongs to one scenario
        out = subprocess.run([sys.executable, __file__, "--scenario", name], capture_output=True, text=True)
        print(out.stdout.strip() or out.stderr[-2000:], flush=True)


if __name__ == "__main__":
    main()
