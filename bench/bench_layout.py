"""Each full-size network contiguous (NCHW), channels_last (NHWC), and with sub-pixel upsampling (the
decoder's, models/subpixel.py): time, side by side.

    python bench/bench_layout.py                          # fp32, 64² latent (512² image), every network, 3 rounds
    python bench/bench_layout.py --isa avx2               # as a CPU without AVX-512 runs it (bench/cpu_isa.py)
    python bench/bench_layout.py --networks decode encode --side 128 --reps 4
    python bench/bench_layout.py --dtype bf16 --networks decode --variants nhwc nhwc+subpixel
    python bench/bench_layout.py --networks decode --variants nhwc nhwc+subpixel --isa avx2

Which layout ``auto`` should give each network (addsr_core/precision.py), and what the decoder's
sub-pixel upsampling saves. One process, one network at a time
(random weights): one untimed call per variant, then rounds of one call per variant, in turn
forwards and backwards, the weights converted between them outside the clock. Prints per
network each variant's time over the first variant's in the same round (median, min, max; and
fastest over fastest), in wall time and in the process's CPU time (less disturbed by other jobs
on a shared machine), and how far its output is from the first's (‖a − b‖ / ‖b‖). bench/bench_vae_layout.py measures the
VAE's memory per layout.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from bench_official import flat, loadavg, machine, network_inputs, spread  # noqa: E402
from bench_pipeline import random_full_size  # noqa: E402
from cpu_isa import ISAS, apply_isa  # noqa: E402
from addsr_core.models import SD2_UNET, SD2_VAE, AutoencoderKL, ControlNetModel, UNet2DConditionModel  # noqa: E402
from addsr_core.models.layers import Upsample2D  # noqa: E402
from addsr_core.precision import resolve_precision  # noqa: E402

NETWORKS = ("controlnet", "unet", "decode", "encode")


def calls(name: str, side: int, generator: torch.Generator, dtype: torch.dtype = torch.float32):
    """(network, a call of it on fixed inputs) for ``name``."""
    x = network_inputs(side, dtype)
    if name in ("controlnet", "unet"):
        controlnet = random_full_size(ControlNetModel, SD2_UNET, generator, dtype)
        cn = lambda: controlnet(x["z"], 999, x["ctx"], x["cond"], 1.0, image_encoder_hidden_states=x["tokens"])  # noqa: E731
        if name == "controlnet":
            return controlnet, cn
        down, mid, _, _ = cn()  # the UNet is fed real residuals (NCHW; each layout gets the same)
        del controlnet, cn
        unet = random_full_size(UNet2DConditionModel, SD2_UNET, generator, dtype)
        return unet, lambda: unet(x["z"], 999, x["ctx"], x["tokens"], down, mid)
    vae = random_full_size(AutoencoderKL, SD2_VAE, generator, dtype)
    if name == "decode":
        return vae, lambda: vae.decode(x["z"])
    image = x["cond"] * 2 - 1
    return vae, lambda: vae.encode_moments(image)


VARIANTS = {  # name: (memory format, sub-pixel upsampling)
    "nchw": (torch.contiguous_format, False),
    "nhwc": (torch.channels_last, False),
    "nchw+subpixel": (torch.contiguous_format, True),
    "nhwc+subpixel": (torch.channels_last, True),
}


def set_variant(network: torch.nn.Module, variant: str) -> None:
    fmt, subpixel = VARIANTS[variant]
    network.to(memory_format=fmt)
    for layer in network.modules():
        if isinstance(layer, Upsample2D):
            layer.subpixel = subpixel


def ratios(a: list, b: list) -> dict:
    """a / b per round (median, min, max), and the fastest a over the fastest b: on a shared machine
    the least disturbed calls."""
    return {**spread([x / y for x, y in zip(a, b)]), "of_fastest": round(min(a) / min(b), 3)}


def compare(name: str, side: int, reps: int, variants=tuple(VARIANTS), dtype: str = "fp32") -> dict:
    precision = resolve_precision(dtype, torch.device("cpu"))
    with torch.no_grad():
        network, call = calls(name, side, torch.Generator().manual_seed(0), precision.dtype)
        out, times, cpu = {}, {k: [] for k in variants}, {k: [] for k in variants}
        for variant in variants:  # untimed first call of each variant, and its output
            set_variant(network, variant)
            out[variant] = flat(call())
        for rep in range(reps):
            for variant in (variants if rep % 2 == 0 else variants[::-1]):
                set_variant(network, variant)
                t, c = time.perf_counter(), time.process_time()
                call()
                times[variant].append(time.perf_counter() - t)
                cpu[variant].append(time.process_time() - c)
    base = variants[0]
    row = {"network": name, "latent": side, "dtype": dtype, "reps": reps, "seconds": {k: spread(v) for k, v in times.items()},
           "cpu_seconds": {k: spread(v) for k, v in cpu.items()}}
    for variant in variants[1:]:
        row[f"{variant}_over_{base}"] = ratios(times[variant], times[base])
        row[f"{variant}_over_{base}_cpu"] = ratios(cpu[variant], cpu[base])
        row[f"{variant}_vs_{base}_rel_diff"] = f"{float((out[variant] - out[base]).norm() / out[base].norm()):.1e}"
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", choices=NETWORKS, default=list(NETWORKS))
    parser.add_argument("--side", type=int, default=64, help="latent side (the image is 8x)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=["nchw", "nhwc", "nhwc+subpixel"],
                        help="the first is the base of the ratios")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--isa", choices=ISAS, default="native")
    args = parser.parse_args(argv)
    apply_isa(args.isa)
    print(json.dumps({"machine": machine(), "load_before": loadavg()}), flush=True)
    for name in args.networks:
        compare(name, args.side, args.reps, tuple(args.variants), args.dtype)
    print(json.dumps({"load_after": loadavg()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
