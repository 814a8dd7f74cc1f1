"""``--compile`` on the full-size networks (random weights): what the first call costs, what a steady
call gains, and how far the output moves, against eager in the same process.

    python bench/bench_compile.py                                  # ControlNet, 64² latent, inductor and freezing
    python bench/bench_compile.py --network unet --side 128 --modes freezing
    python bench/bench_compile.py --dtype bf16                     # bf16 + channels_last (where the CPU has it)
    python bench/bench_compile.py --isa avx2                       # as a CPU without AVX-512 (bench/cpu_isa.py)

Each mode runs in its own process with an empty inductor cache (a cold compile, as a user's first
image; ``--warm-cache`` reuses one). In that process: the eager output, then the compiled
network's first call (compile + run, timed), then steady calls alternating eager (``forward``
called directly) and compiled (ABBA). Prints the first call's time, the steady ratio compiled /
eager per pair, the output's difference from eager (‖a − b‖ / ‖b‖), and whether compiling pays
within ``--calls`` calls (a 4-step image: 4 calls per tile): n eager calls cost n × eager, compiled
first + (n − 1) × compiled.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from bench_official import flat, loadavg, machine, network_inputs, spread  # noqa: E402
from bench_pipeline import random_full_size  # noqa: E402
from cpu_isa import ISAS, apply_isa  # noqa: E402
from addsr_core.models import SD2_UNET, ControlNetModel, UNet2DConditionModel  # noqa: E402
from addsr_core.precision import apply_precision, resolve_precision  # noqa: E402


def one_mode(network: str, side: int, mode: str, dtype: str, reps: int) -> dict:
    from addsr_core.compiling import compile_network

    precision = resolve_precision(dtype, torch.device("cpu"))
    x = network_inputs(side, precision.dtype)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        controlnet = apply_precision(random_full_size(ControlNetModel, SD2_UNET, g, precision.dtype), precision)

        def cn(call):
            return call(x["z"], 999, x["ctx"], x["cond"], 1.0, image_encoder_hidden_states=x["tokens"])

        if network == "controlnet":
            net, run = controlnet, cn
        else:
            down, mid, _, _ = cn(controlnet)
            del controlnet
            net = apply_precision(random_full_size(UNet2DConditionModel, SD2_UNET, g, precision.dtype), precision)

            def run(call):
                return call(x["z"], 999, x["ctx"], x["tokens"], down, mid)

        t = time.perf_counter()
        eager_out = flat(run(net.forward))
        eager_first = time.perf_counter() - t
        compile_network(net, mode)
        t = time.perf_counter()
        compiled_out = flat(run(net))
        compiled_first = time.perf_counter() - t
        times = {"eager": [], "compiled": []}
        calls = {"eager": net.forward, "compiled": net}
        for rep in range(reps):
            for k in (("eager", "compiled") if rep % 2 == 0 else ("compiled", "eager")):
                t = time.perf_counter()
                run(calls[k])
                times[k].append(time.perf_counter() - t)
    rel = float((compiled_out - eager_out).norm() / eager_out.norm())
    return {"network": network, "latent": side, "mode": mode, "precision": precision.name, "reps": reps,
            "eager_first_s": round(eager_first, 2), "compiled_first_s": round(compiled_first, 2),
            "eager_s": spread(times["eager"]), "compiled_s": spread(times["compiled"]),
            "compiled_over_eager": spread([c / e for c, e in zip(times["compiled"], times["eager"])]),
            "output_rel_diff": f"{rel:.1e}", "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", choices=("controlnet", "unet"), default="controlnet")
    parser.add_argument("--side", type=int, default=64, help="latent side (the image is 8x)")
    parser.add_argument("--modes", nargs="+", choices=("inductor", "freezing"), default=["inductor", "freezing"])
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--calls", type=int, default=4, help="calls of one shape a compile must pay back within")
    parser.add_argument("--warm-cache", action="store_true", help="keep inductor's cache between runs")
    parser.add_argument("--isa", choices=ISAS, default="native")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    apply_isa(args.isa)
    if args.one:
        print(json.dumps(one_mode(args.network, args.side, args.one, args.dtype, args.reps)), flush=True)
        return 0
    print(json.dumps({"machine": machine(), "load_before": loadavg()}), flush=True)
    for mode in args.modes:
        env = dict(os.environ)
        if not args.warm_cache:
            env["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="addsr-inductor-")
        cmd = [sys.executable, __file__, "--network", args.network, "--side", str(args.side), "--dtype", args.dtype,
               "--reps", str(args.reps), "--one", mode]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            print(json.dumps({"mode": mode, "failed": done.returncode, "stderr": done.stderr[-2000:]}), flush=True)
            continue
        row = json.loads(lines[-1])
        e, c, first = row["eager_s"]["median"], row["compiled_s"]["median"], row["compiled_first_s"]
        # n calls cost n x e eager, first + (n - 1) x c compiled
        row["pays_within_calls"] = {"calls": args.calls, "saved_s": round(args.calls * e - first - (args.calls - 1) * c, 1),
                                    "break_even_calls": round((first - c) / (e - c), 1) if e > c else None}
        row["load_after"] = loadavg()
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
