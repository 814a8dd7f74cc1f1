"""How cost grows with the image: the whole upscale at several output sizes, DEFAULT options.

    python bench/bench_scaling.py                        # 1 step: 512-4096 px; 4 steps: 512-2048 px (~30 min in bf16 on
                                                         # a 2-core AMX Xeon, hours in fp32)
    python bench/bench_scaling.py --steps 1 --sizes 1024 2048
    python bench/bench_scaling.py --dtype fp32           # default: auto (the device's precision policy)
    python bench/bench_scaling.py --tiny --steps 1 --sizes 1024 2048   # what the image itself holds

Each size runs in its own process (so its peak RSS is its own) on the full-size networks with random
weights: a square LR of side/4 through ``AddSROptions()`` as the CLI and the all-in-one node use
it (condition, sampling, final decode, finish). Prints per size the wall time (without building the
networks), seconds per output megapixel, peak RSS and the stages; then, per step count, the
exponent of time vs pixels fitted over the sizes from 1024 px up, the spread of s/MP around their
mean over those sizes, and the peak RSS of the largest size over the 1024 px one. ``over_weights``
is the peak beyond the process's memory once the networks are built: the tiles' activations plus
what grows with the image; with ``--tiny`` (tiny networks, tiny tiles) it is nearly all the latter,
as bytes per output pixel. Not a test.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_RUNS = {1: (512, 1024, 2048, 4096), 4: (512, 1024, 2048)}
FIT_FROM_PX = 1024


def _rss_bytes() -> int:
    """This process's resident memory now (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def run_one(side: int, steps: int, dtype: str, tiny: bool = False) -> dict:
    from bench_pipeline import _peak_rss_gib, build_models_in, timed_upscale

    from addsr_core.pipeline import AddSROptions

    models, precision, build_s = build_models_in(dtype, tiny=tiny)
    built_rss = _rss_bytes()
    options = AddSROptions(steps=steps)
    lr = torch.rand(1, 3, side // options.scale, side // options.scale, generator=torch.Generator().manual_seed(1))
    run = timed_upscale(models, lr, options)
    mp = side * side / 1e6
    peak = _peak_rss_gib()
    # beyond the weights (and the interpreter): the tiles' activations plus what grows with the image
    over = max(0.0, peak * 2**30 - built_rss) if built_rss else None
    return {"output_px": side, "steps": steps, "precision": precision.name, "build_s": round(build_s, 1),
            "total_s": run["total_s"], "s_per_mp": round(run["total_s"] / mp, 1), "peak_rss_gib": peak,
            "over_weights_gib": None if over is None else round(over / 2**30, 2),
            "over_weights_bytes_per_px": None if over is None else round(over / (side * side), 1),
            "stages_s": run["stages_s"], "calls": run["calls"], "threads": torch.get_num_threads(), "tiny": tiny}


def fitted_exponent(rows: list[dict]) -> float:
    """Least-squares slope of log(time) against log(pixels)."""
    xs = [math.log(r["output_px"] ** 2) for r in rows]
    ys = [math.log(r["total_s"]) for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def summary(rows: list[dict]) -> dict:
    fit = [r for r in rows if r["output_px"] >= FIT_FROM_PX]
    out = {"steps": rows[0]["steps"], "sizes": [r["output_px"] for r in rows]}
    if len(fit) >= 2:
        per_mp = [r["s_per_mp"] for r in fit]
        mean = sum(per_mp) / len(per_mp)
        base = fit[0]
        out.update({
            "fitted_exponent": round(fitted_exponent(fit), 3),
            "s_per_mp_spread_vs_mean_pct": [round(100 * (v / mean - 1), 1) for v in per_mp],
            "peak_rss_largest_vs_1024": round(fit[-1]["peak_rss_gib"] / base["peak_rss_gib"], 3),
        })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, choices=(1, 2, 3, 4), nargs="+", help="default: 1 and 4")
    parser.add_argument("--sizes", type=int, nargs="+", help="output sides in px (default: per step count, see above)")
    parser.add_argument("--dtype", choices=("fp32", "auto", "bf16", "fp16"), default="auto")
    parser.add_argument("--tiny", action="store_true",
                        help="every network tiny: the timings mean nothing, the memory beyond the weights is what "
                             "the image itself costs (bytes per output pixel)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child process: one size
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.steps[0], args.dtype, args.tiny)), flush=True)
        return
    for steps in args.steps or sorted(DEFAULT_RUNS):
        rows = []
        for side in args.sizes or DEFAULT_RUNS.get(steps, DEFAULT_RUNS[1]):
            cmd = [sys.executable, __file__, "--one", str(side), "--steps", str(steps), "--dtype", args.dtype]
            cmd += ["--tiny"] if args.tiny else []
            out = subprocess.run(cmd, capture_output=True, text=True)
            try:
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            except (IndexError, json.JSONDecodeError):
                raise SystemExit(f"{side} px, {steps} steps failed:\n{out.stderr[-3000:]}") from None
            print(json.dumps(rows[-1]), flush=True)
        print(json.dumps({"summary": summary(rows)}), flush=True)


if __name__ == "__main__":
    main()
