"""The full-size VAE whole (untiled) in fp32, contiguous vs channels_last (NHWC): time and peak memory.

    python bench/bench_vae_layout.py            # 768 px
    python bench/bench_vae_layout.py --side 1024

Why ``auto`` makes the VAE NHWC on a CPU that stays fp32 (addsr_core/precision.py). Each of the four
runs (decode/encode x layout) is its own process, so its peak RSS above the built VAE is its own;
prints each run and the NHWC/contiguous ratios. Random weights. Not a test.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def run_one(kind: str, side: int, nhwc: bool) -> dict:
    from bench_pipeline import SD2_VAE, random_full_size
    from addsr_core.models.vae import AutoencoderKL
    from addsr_core.precision import Precision, apply_precision

    vae = random_full_size(AutoencoderKL, SD2_VAE, torch.Generator().manual_seed(0)).eval()
    apply_precision(vae, Precision(torch.float32, channels_last=False, vae_channels_last=nhwc))  # as auto does
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, side // 8, side // 8, generator=g) if kind == "decode" else torch.rand(1, 3, side, side, generator=g) * 2 - 1
    rss_gib = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**30  # noqa: E731
    base = rss_gib()
    with torch.no_grad():
        t0 = time.perf_counter()
        vae.decode(x) if kind == "decode" else vae.encode_moments(x)
        seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    return {"kind": kind, "layout": "channels_last" if nhwc else "contiguous", "side": side, "seconds": round(seconds, 1),
            "peak_above_weights_gib": round(peak - base, 2), "bytes_per_px": round((peak - base) * 2**30 / side / side)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=768)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # the child process: kind, layout
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], args.side, args.one[1] == "channels_last")), flush=True)
        return
    rows = {}
    for kind in ("decode", "encode"):
        for layout in ("contiguous", "channels_last"):
            out = subprocess.run([sys.executable, __file__, "--side", str(args.side), "--one", kind, layout],
                                 capture_output=True, text=True)
            try:
                rows[kind, layout] = json.loads(out.stdout.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                raise SystemExit(f"{kind} {layout} failed:\n{out.stderr[-3000:]}") from None
            print(json.dumps(rows[kind, layout]), flush=True)
        a, b = rows[kind, "contiguous"], rows[kind, "channels_last"]
        print(json.dumps({"ratio": kind, "time_nhwc_over_contiguous": round(b["seconds"] / a["seconds"], 3),
                          "memory_nhwc_over_contiguous": round(b["bytes_per_px"] / a["bytes_per_px"], 3)}), flush=True)


if __name__ == "__main__":
    main()
