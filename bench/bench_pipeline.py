"""Benchmark the AddSR pipeline with FULL-SIZE networks and random weights (not a test).

    python bench/bench_pipeline.py                       # 128->512 at 4 and 1 steps, then memory runs
    python bench/bench_pipeline.py --scenario 4step      # one scenario (each runs in its own process)
    python bench/bench_pipeline.py --scenario thin --tiny-unet   # 8x1000 LR vs a square one, s per output MP
    python bench/bench_pipeline.py --scenario seesr_vs_addsr     # one LR: SeeSR-50, AddSR-4, AddSR-1 and ratios
    python bench/bench_pipeline.py --scenario seesr_vs_addsr --tiny   # smoke run: every network tiny
    python bench/bench_pipeline.py --scenario seesr_vs_addsr --dtype auto   # any scenario in another precision
    python bench/bench_pipeline.py --precision               # 4 and 1 step: fp32 vs auto (bf16 where fast), ratios

Reports wall time per stage (VAE encode, RAM, ControlNet+UNet per step, PSR decodes, final decode, finish)
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
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from addsr_core.models import SD2_UNET, SD2_VAE, AutoencoderKL, ControlNetModel, UNet2DConditionModel, UNetConfig  # noqa: E402
from addsr_core.pipeline import AddSRModels, AddSROptions, SeeSROptions  # noqa: E402
from addsr_core.ram import RAM, RAMConfig  # noqa: E402

SCENARIOS = {
    # name: (lr side, steps, tiled)
    "4step": (128, 4, False),
    "1step": (128, 1, False),
    "untiled_768": (192, 1, False),
    "untiled_1024": (256, 1, False),
    "tiled_2048": (512, 1, True),
}
# Issue 11 §2.4: a thin LR next to a square one with as many pixels (same output megapixels), in
# one process, default tiling. Before the fix the 8x1000 one became a 512x64000 condition image.
THIN = {"square": (89, 90), "thin": (8, 1000)}  # LR sizes; the square runs first (warm-up)
THIN_STEPS = 1
# One LR through SeeSR (the 50-step teacher, CFG 5.5) and AddSR at 4 and 1 steps, official settings,
# same models and process. name: options (their class is the family).
SEESR_VS_ADDSR = {
    "seesr_50": SeeSROptions(use_tags=False),
    "addsr_4": AddSROptions(steps=4, use_tags=False),
    "addsr_1": AddSROptions(steps=1, use_tags=False),
}
SEESR_VS_ADDSR_LR = 128  # 4x: 512, one tile for both samplers


def random_full_size(module_cls, config, generator, dtype=torch.float32):
    """Built on meta, materialised once in ``dtype`` (no fp32 copy first: peak RSS is the run's own)."""
    with torch.device("meta"):
        module = module_cls(config).to(dtype)
    module = module.to_empty(device="cpu")
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.02, generator=generator)
    return module.eval()


def tiny_configs() -> tuple:
    """The tiny UNet and ControlNet, reading the full-size text width (1024)."""
    from addsr_core.addsr.tiny import TINY_CONTROLNET, TINY_UNET

    return tuple(UNetConfig.from_diffusers({**cfg, "cross_attention_dim": 1024}) for cfg in (TINY_UNET, TINY_CONTROLNET))


def build_models(tiny_unet: bool = False, tiny: bool = False, dtype: torch.dtype = torch.float32) -> AddSRModels:
    """Full-size networks; ``tiny_unet`` swaps in the tiny UNet and ControlNet (the VAE and RAM stay
    full-size); ``tiny`` makes every network tiny (a smoke run: the timings mean nothing). The
    weights are drawn in ``dtype``."""
    from addsr_core.models.config import VAEConfig
    from addsr_core.ram.tiny import TINY_RAM_CONFIG
    from addsr_core.addsr.tiny import TINY_VAE

    g = torch.Generator().manual_seed(0)
    unet_cfg, control_cfg = tiny_configs() if tiny_unet or tiny else (SD2_UNET, SD2_UNET)
    unet = random_full_size(UNet2DConditionModel, unet_cfg, g, dtype)
    controlnet = random_full_size(ControlNetModel, control_cfg, g, dtype)
    vae = random_full_size(AutoencoderKL, VAEConfig.from_diffusers(TINY_VAE) if tiny else SD2_VAE, g, dtype)
    ram = random_full_size(RAM, TINY_RAM_CONFIG if tiny else RAMConfig(), g, dtype)
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


def timed_upscale(models: AddSRModels, lr: torch.Tensor, options) -> dict:
    """One staged upscale (AddSR or SeeSR, the family taken from ``options``' type: the stages of
    ``pipeline.upscale`` in its order) with stage timers around the library's own entry points
    (removed after). A negative prompt goes in when the options use CFG."""
    import addsr_core.stages as stages
    from addsr_core.addsr import pipeline as addsr_family
    from addsr_core.pipeline import family_of, resolve_options

    family = family_of(options)
    options = resolve_options(options, models, lr.shape[-2:])
    clock = StageClock()
    g = torch.Generator().manual_seed(2)
    embeds = torch.randn(1, 77, 1024, generator=g)
    negative = torch.randn(1, 77, 1024, generator=g) if options.guidance_scale > 1 else None
    with ExitStack() as patches, torch.no_grad():
        def patch(obj, name, stage):
            patches.enter_context(mock.patch.object(obj, name, clock.wrap(stage, getattr(obj, name))))

        patch(stages, "vae_encode", "vae_encode")
        patch(models.ram, "represent", "ram")
        start = time.perf_counter()
        cond = family.condition(models, lr, options)
        patch(models.unet, "forward", "unet")
        patch(models.controlnet, "forward", "controlnet")
        patch(addsr_family, "vae_decode", "psr_decode")  # AddSR's decodes between steps (its own binding)
        patch(stages, "vae_decode", "final_decode")  # the decode stage's
        z0 = family.sample(models, cond, embeds, negative, options)
        image = family.decode(models, z0, cond, options)
        image = clock.wrap("finish", family.finish)(image, cond, options)  # colour fix, exact size
        total = time.perf_counter() - start
    return {
        "lr": list(lr.shape[-2:]), "condition": list(cond.control_image.shape[-2:]), "decoded": list(image.shape[-2:]),
        "output": list(cond.output_size),
        "total_s": round(total, 2), "stages_s": {k: round(v, 2) for k, v in clock.seconds.items()},
        "calls": dict(clock.calls),
    }


def _peak_rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def build_models_in(dtype: str, tiny_unet: bool = False, tiny: bool = False) -> tuple:
    """:func:`build_models` in ``dtype``'s precision on the CPU: (models, precision, seconds to build)."""
    from addsr_core.precision import apply_precision, resolve_precision

    t0 = time.perf_counter()
    precision = resolve_precision(dtype, torch.device("cpu"))
    models = build_models(tiny_unet, tiny, dtype=precision.dtype)
    for network in (models.unet, models.controlnet, models.vae, models.ram):
        apply_precision(network, precision)
    return models, precision, time.perf_counter() - t0


def run_scenario(name: str, dtype: str = "fp32") -> dict:
    lr_side, steps, tiled = SCENARIOS[name]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    models, precision, build_s = build_models_in(dtype)
    big = 10**6
    options = AddSROptions(
        steps=steps, min_size=512,
        latent_tile_px=1024 if tiled else big, latent_overlap_px=256,
        vae_encode_tile_px=1024 if tiled else big, vae_decode_tile_px=1024 if tiled else big,
    )
    lr = torch.rand(1, 3, lr_side, lr_side, generator=torch.Generator().manual_seed(1))
    run = timed_upscale(models, lr, options)
    return {
        "scenario": name, "dtype": dtype, "precision": precision.name, "lr": lr_side, "output": run["output"],
        "steps": steps, "tiled": tiled, "build_s": round(build_s, 1), "total_s": run["total_s"], "peak_rss_gib": _peak_rss_gib(),
        "stages_s": run["stages_s"], "calls": run["calls"], "threads": torch.get_num_threads(),
    }


def run_thin(tiny_unet: bool, dtype: str = "fp32") -> dict:
    """The thin LR and the square one through the same models: seconds per output megapixel, and their ratio."""
    models, precision, _ = build_models_in(dtype, tiny_unet)
    options = AddSROptions(steps=THIN_STEPS, use_tags=False)
    runs = {}
    for name, (h, w) in THIN.items():
        run = timed_upscale(models, torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(1)), options)
        run["s_per_output_mp"] = round(run["total_s"] / (run["output"][0] * run["output"][1] / 1e6), 1)
        runs[name] = run
    ratio = runs["thin"]["s_per_output_mp"] / runs["square"]["s_per_output_mp"]
    return {
        "scenario": "thin", "tiny_unet": tiny_unet, "precision": precision.name, "steps": THIN_STEPS, **runs,
        "thin_vs_square_per_mp": round(ratio, 2), "peak_rss_gib": _peak_rss_gib(), "threads": torch.get_num_threads(),
    }


def run_seesr_vs_addsr(tiny_unet: bool, tiny: bool, lr_side: int = SEESR_VS_ADDSR_LR, dtype: str = "fp32") -> dict:
    """The same LR through SeeSR-50, AddSR-4 and AddSR-1 on the same models, after one untimed warm-up
    (AddSR, 1 step): each wall time and the SeeSR-50 : AddSR-4 : AddSR-1 ratio."""
    models, precision, _ = build_models_in(dtype, tiny_unet, tiny)
    lr = torch.rand(1, 3, lr_side, lr_side, generator=torch.Generator().manual_seed(1))
    warmup = timed_upscale(models, lr, SEESR_VS_ADDSR["addsr_1"])
    runs = {name: timed_upscale(models, lr, options) for name, options in SEESR_VS_ADDSR.items()}
    base = runs["addsr_1"]["total_s"] or 1e-9
    ratio = ":".join(f"{runs[name]['total_s'] / base:.1f}" for name in SEESR_VS_ADDSR)
    return {
        "scenario": "seesr_vs_addsr", "tiny_unet": tiny_unet, "tiny": tiny, "precision": precision.name, "lr": lr_side,
        "output": runs["addsr_1"]["output"], "warmup_s": warmup["total_s"], **runs,
        "wall_s": {name: run["total_s"] for name, run in runs.items()},
        "ratio_seesr50_addsr4_addsr1": ratio, "peak_rss_gib": _peak_rss_gib(), "threads": torch.get_num_threads(),
    }


def _scenario_process(name: str, dtype: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--scenario", name, "--dtype", dtype], capture_output=True, text=True)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise SystemExit(f"{name} {dtype} failed:\n{out.stderr[-2000:]}") from None


def run_precision(force_bf16: bool = False) -> None:
    """fp32 vs auto (the device policy) at 512 px, 4 and 1 step, side by side in one invocation (one
    process per run, so peak RSS belongs to one run), with the ratio. ``force_bf16`` adds a bf16 run
    where auto is not bf16 (on a CPU without AMX/AVX512-BF16 it is far slower)."""
    from addsr_core.precision import auto_precision, cpu_has_fast_bf16

    auto = auto_precision(torch.device("cpu"))
    print(json.dumps({"auto_precision": auto.name, "fast_bf16": cpu_has_fast_bf16()}), flush=True)
    dtypes = ["fp32", "auto"] + (["bf16"] if force_bf16 and auto.dtype != torch.bfloat16 else [])
    for name in ("4step", "1step"):
        runs = {}
        for dtype in dtypes:
            runs[dtype] = _scenario_process(name, dtype)
            print(json.dumps(runs[dtype]), flush=True)
        fp32 = runs["fp32"]["total_s"]
        summary = {dtype: {"precision": r["precision"], "total_s": r["total_s"], "peak_rss_gib": r["peak_rss_gib"],
                           "vs_fp32": round(r["total_s"] / fp32, 3)} for dtype, r in runs.items()}
        print(json.dumps({"scenario": name, "summary": summary}), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario", choices=sorted(SCENARIOS) + ["thin", "seesr_vs_addsr"])
    parser.add_argument("--all", action="store_true", help="include the slow untiled/tiled size runs")
    parser.add_argument("--tiny-unet", action="store_true",
                        help="thin, seesr_vs_addsr: tiny UNet and ControlNet (full-size VAE and RAM)")
    parser.add_argument("--tiny", action="store_true", help="seesr_vs_addsr: every network tiny (smoke run only)")
    parser.add_argument("--lr", type=int, default=SEESR_VS_ADDSR_LR, help="seesr_vs_addsr: LR side in pixels")
    parser.add_argument("--dtype", choices=("fp32", "auto", "bf16", "fp16"), default="fp32",
                        help="a scenario's precision, thin and seesr_vs_addsr too (addsr_core.precision; auto = the device policy)")
    parser.add_argument("--precision", action="store_true",
                        help="4 and 1 step at 512 px in fp32 and auto (and bf16 where fast), one process each, ratios")
    parser.add_argument("--force-bf16", action="store_true", help="--precision: run bf16 even where it is slow")
    args = parser.parse_args()
    if args.precision:
        run_precision(args.force_bf16)
        return
    if args.scenario == "thin":
        print(json.dumps(run_thin(args.tiny_unet, args.dtype)))
        return
    if args.scenario == "seesr_vs_addsr":
        result = run_seesr_vs_addsr(args.tiny_unet, args.tiny, args.lr, args.dtype)
        print(json.dumps(result))
        walls = ", ".join(f"{name} {s} s" for name, s in result["wall_s"].items())
        print(f"{walls}; SeeSR-50 : AddSR-4 : AddSR-1 = {result['ratio_seesr50_addsr4_addsr1']}", file=sys.stderr)
        return
    if args.scenario:
        print(json.dumps(run_scenario(args.scenario, args.dtype)))
        return
    names = list(SCENARIOS) if args.all else ["4step", "1step"]
    for name in names:  # a fresh process each, so peak RSS belongs to one scenario
        out = subprocess.run([sys.executable, __file__, "--scenario", name], capture_output=True, text=True)
        print(out.stdout.strip() or out.stderr[-2000:], flush=True)


if __name__ == "__main__":
    main()
