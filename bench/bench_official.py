"""Our AddSR against the official code, and against this machine's peak (full-size networks, random weights).

    python bench/bench_official.py                     # every part below, in one run
    python bench/bench_official.py --percall           # ControlNet + UNet per call: ours vs diffusers' (same weights)
    python bench/bench_official.py --flops             # each network's GFLOP/s against the measured conv/matmul peak
    python bench/bench_official.py --pipeline          # the whole 512² upscale, official vs ours, 4 and 1 steps

Setup (dev/bench only; nothing here is a runtime dependency):

    python3 -m venv /work/venvs/official
    /work/venvs/official/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/venvs/official/bin/pip install diffusers==0.25.0 transformers==4.37.2 "accelerate<0.27" \\
        "huggingface_hub<0.26" safetensors einops numpy pillow tqdm
    # an extracted github:NJU-PCALab/AddSR (e.g. git archive HEAD | tar -x -C /work/venvs/AddSR-src)
    export ADDSR_OFFICIAL_SRC=/work/venvs/AddSR-src ADDSR_OFFICIAL_PYTHON=/work/venvs/official/bin/python

``--percall`` needs diffusers in the running interpreter: run it with ``$ADDSR_OFFICIAL_PYTHON``
(our library runs there too, so both sides use the same torch). ``--pipeline`` starts every run in
its own process, alternating official and ours: the official ones under ``$ADDSR_OFFICIAL_PYTHON``
(tools/official_addsr.py drives the official pipeline), ours under this interpreter (or
``--ours-python``). The machine is often shared: every comparison alternates the two sides and
reports the ratio of each pair, with its spread, and the load average before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench"), str(REPO / "tools")]

from bench_pipeline import random_full_size  # noqa: E402
from cpu_isa import ISAS, apply_isa, isa_in_effect  # noqa: E402
from addsr_core.models import SD2_UNET, ControlNetModel, UNet2DConditionModel  # noqa: E402
from addsr_core.precision import apply_precision, fast_low_precision, resolve_precision  # noqa: E402


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split(" ")[:3].__str__()
    except OSError:
        return "?"


def machine() -> dict:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "threads": torch.get_num_threads(), "torch": torch.__version__, "isa": isa_in_effect()}


def spread(values) -> dict:
    values = sorted(values)
    return {"median": round(statistics.median(values), 3), "min": round(values[0], 3), "max": round(values[-1], 3)}


def flat(out) -> torch.Tensor:
    """Every tensor of a network's output (the ControlNet's residuals: a tuple of lists), as one float32 vector."""
    if isinstance(out, torch.Tensor):
        return out.float().flatten()
    return torch.cat([flat(o) for o in out if o is not None and not isinstance(o, (int, float))])


def network_inputs(side: int, dtype: torch.dtype, seed: int = 3) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "z": torch.randn(1, 4, side, side, generator=g).to(dtype),
        "ctx": torch.randn(1, 77, 1024, generator=g).to(dtype),
        "tokens": torch.randn(1, 145, 512, generator=g).to(dtype),
        "cond": torch.rand(1, 3, 8 * side, 8 * side, generator=g).to(dtype),
    }


def build_pair(dtype: str):
    """Our full-size ControlNet and UNet in ``dtype``'s precision (random weights, seeded)."""
    precision = resolve_precision(dtype, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    controlnet = apply_precision(random_full_size(ControlNetModel, SD2_UNET, g, precision.dtype), precision)
    unet = apply_precision(random_full_size(UNet2DConditionModel, SD2_UNET, g, precision.dtype), precision)
    return controlnet, unet, precision


def ours_call(controlnet, unet, x, t=999):
    t0 = time.perf_counter()
    down, mid, _, _ = controlnet(x["z"], t, x["ctx"], x["cond"], 1.0, image_encoder_hidden_states=x["tokens"])
    t1 = time.perf_counter()
    eps = unet(x["z"], t, x["ctx"], x["tokens"], down, mid)
    return eps, t1 - t0, time.perf_counter() - t1


def official_call(controlnet, unet, x, t=999):
    t0 = time.perf_counter()
    down, mid, _, _ = controlnet(x["z"], t, encoder_hidden_states=x["ctx"], controlnet_cond=x["cond"], conditioning_scale=1.0,
                                 return_dict=False, image_encoder_hidden_states=x["tokens"])
    t1 = time.perf_counter()
    eps = unet(x["z"], t, encoder_hidden_states=x["ctx"], down_block_additional_residuals=down,
               mid_block_additional_residual=mid, return_dict=False, image_encoder_hidden_states=x["tokens"])[0]
    return eps, t1 - t0, time.perf_counter() - t1


def profile_table(run, rows: int = 15) -> str:
    """Self CPU time per operator over one call of ``run``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def percall(sides=(64, 128), dtypes=("fp32", "bf16"), reps: int = 3, profile: bool = False) -> list[dict]:
    """Steady ControlNet + UNet calls, ours and diffusers' (the official classes) on the SAME parameter
    tensors and inputs, alternating (ABBA), after one untimed call each. ``profile``: then one call of
    each side under torch.profiler, its per-operator table printed."""
    from official_addsr import official_twin

    results = []
    for dtype in dtypes:
        if dtype == "bf16" and fast_low_precision(torch.device("cpu")) is None:
            results.append({"dtype": dtype, "skipped": "no fast bf16 on this CPU (emulated: far slower than fp32)"})
            continue
        controlnet, unet, precision = build_pair(dtype)
        twins = official_twin(controlnet, "controlnet"), official_twin(unet, "unet")
        sides_out = []
        for side in sides:
            x = network_inputs(side, precision.dtype)
            runs = {"ours": lambda: ours_call(controlnet, unet, x), "diffusers": lambda: official_call(*twins, x)}
            times = {k: {"controlnet": [], "unet": [], "total": []} for k in runs}
            with torch.no_grad():
                eps = {k: run()[0].float() for k, run in runs.items()}  # warm-up, and the outputs compared
                for rep in range(reps):
                    for k in (("ours", "diffusers") if rep % 2 == 0 else ("diffusers", "ours")):
                        _, tc, tu = runs[k]()
                        times[k]["controlnet"].append(tc)
                        times[k]["unet"].append(tu)
                        times[k]["total"].append(tc + tu)
            rel = float((eps["ours"] - eps["diffusers"]).norm() / eps["diffusers"].norm())
            ratio = {part: spread([o / d for o, d in zip(times["ours"][part], times["diffusers"][part])])
                     for part in ("controlnet", "unet", "total")}
            row = {"dtype": dtype, "precision": precision.name, "latent": side, "reps": reps,
                   "ours_s": {p: spread(v) for p, v in times["ours"].items()},
                   "diffusers_s": {p: spread(v) for p, v in times["diffusers"].items()},
                   "ours_over_diffusers": ratio, "eps_rel_diff": f"{rel:.2e}"}
            print(json.dumps(row), flush=True)
            sides_out.append(row)
            if profile:
                with torch.no_grad():
                    for k, run in runs.items():
                        print(f"{k}, {precision.name}, latent {side}: self CPU time per operator, one call")
                        print(profile_table(run), flush=True)
        results += sides_out
        del controlnet, unet, twins
    return results


def flops_of(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def timed_best(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def machine_peaks(dtype: torch.dtype, reps: int = 3) -> dict:
    """This machine's measured GFLOP/s: a 3x3 conv (320 channels, 64², NCHW and NHWC) and a 4096² matmul."""
    x = torch.randn(1, 320, 64, 64).to(dtype)
    conv = torch.nn.Conv2d(320, 320, 3, padding=1).to(dtype).requires_grad_(False)
    a, b = torch.randn(4096, 4096).to(dtype), torch.randn(4096, 4096).to(dtype)
    peaks = {}
    with torch.no_grad():
        conv_flops = flops_of(lambda: conv(x))
        peaks["conv3x3_nchw"] = conv_flops / timed_best(lambda: conv(x), reps) / 1e9
        conv.to(memory_format=torch.channels_last)
        xl = x.contiguous(memory_format=torch.channels_last)
        peaks["conv3x3_nhwc"] = conv_flops / timed_best(lambda: conv(xl), reps) / 1e9
        peaks["matmul_4096"] = flops_of(lambda: a @ b) / timed_best(lambda: a @ b, reps) / 1e9
    return {k: round(v, 1) for k, v in peaks.items()}


def network_rates(side: int = 64, dtypes=("fp32",), reps: int = 2) -> list[dict]:
    """Each network's FLOPs per call (torch.utils.flop_counter) over its best measured call time,
    against the machine's conv and matmul peak in the same precision."""
    from addsr_core.models import SD2_VAE, AutoencoderKL

    rows = []
    for dtype in dtypes:
        if dtype == "bf16" and fast_low_precision(torch.device("cpu")) is None:
            continue
        precision = resolve_precision(dtype, torch.device("cpu"))
        peaks = machine_peaks(precision.dtype)
        x = network_inputs(side, precision.dtype)
        g = torch.Generator().manual_seed(0)
        calls = {}
        with torch.no_grad():
            controlnet = apply_precision(random_full_size(ControlNetModel, SD2_UNET, g, precision.dtype), precision)
            down, mid, _, _ = controlnet(x["z"], 999, x["ctx"], x["cond"], 1.0, image_encoder_hidden_states=x["tokens"])
            calls["controlnet"] = lambda: controlnet(x["z"], 999, x["ctx"], x["cond"], 1.0, image_encoder_hidden_states=x["tokens"])
            rows += _rate_rows(calls, dtype, side, peaks, reps)
            del controlnet, calls["controlnet"]
            unet = apply_precision(random_full_size(UNet2DConditionModel, SD2_UNET, g, precision.dtype), precision)
            rows += _rate_rows({"unet": lambda: unet(x["z"], 999, x["ctx"], x["tokens"], down, mid)}, dtype, side, peaks, reps)
            del unet
            auto = resolve_precision("auto", torch.device("cpu"))
            vae_precision = precision if dtype != "fp32" else auto if auto.dtype == torch.float32 else precision
            vae = apply_precision(random_full_size(AutoencoderKL, SD2_VAE, g, precision.dtype), vae_precision)
            image = (x["cond"] * 2 - 1)
            rows += _rate_rows({"vae_decode (" + vae_precision.name + ")": lambda: vae.decode(x["z"]),
                                "vae_encode (" + vae_precision.name + ")": lambda: vae.encode_moments(image)},
                               dtype, side, peaks, reps)
    return rows


def _rate_rows(calls: dict, dtype: str, side: int, peaks: dict, reps: int) -> list[dict]:
    rows = []
    for name, fn in calls.items():
        flops = flops_of(fn)
        seconds = timed_best(fn, reps)
        rate = flops / seconds / 1e9
        row = {"network": name, "dtype": dtype, "latent": side, "tflop": round(flops / 1e12, 3), "best_s": round(seconds, 2),
               "gflops": round(rate, 1), "of_conv_peak": round(rate / max(peaks["conv3x3_nchw"], peaks["conv3x3_nhwc"]), 2),
               "of_matmul_peak": round(rate / peaks["matmul_4096"], 2), "peaks_gflops": peaks}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# The whole upscale: one kit of full-size random weights on disk, read by both sides.

SD2_VAE_DIFFUSERS = {
    "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "sample_size": 512, "scaling_factor": 0.18215,
}
LR_SIDE, SEED = 128, 1241
# Our side takes the official route to 8 bits (the decode rounded to 8 bits, the colour fix on that,
# truncated), not our default float route. With random weights the decode is nearly flat (its values
# span ~10 of the 256 levels) and adain stretches it to the LR's spread, ~30x: the two routes'
# half-level rounding difference becomes up to 44 levels (mean 18) on the same decode. The cost of
# either route is a few milliseconds at 512².
COMPARED_ROUNDING = "official"


def bench_precision(dtype: str):
    """``resolve_precision``, plus ``auto-fp32cpu``: what ``auto`` picks on a CPU without fast bf16
    (fp32, the VAE NHWC and sub-pixel), to measure that case on any CPU."""
    from addsr_core.precision import Precision

    if dtype == "auto-fp32cpu":
        return Precision(torch.float32, channels_last=False, vae_channels_last=True, vae_subpixel=True)
    return resolve_precision(dtype, torch.device("cpu"))


def write_kit(root: Path) -> Path:
    """``root/addsr/{unet,controlnet}`` and ``root/sd2/vae`` (diffusers layouts), ``root/ram.safetensors``
    (our RAM's state dict: both sides run our RAM), ``root/lr.png`` (skimage's astronaut at 128 px)
    and ``root/inputs.safetensors`` (prompt embeddings and initial latents). Written once (~7 GB)."""
    from PIL import Image
    from safetensors.torch import save_file

    from official_addsr import CONTROLNET_ONLY, SD2_UNET_DIFFUSERS, UNET_ONLY
    from addsr_core.loading.models import write_diffusers_folder
    from addsr_core.models import SD2_VAE, AutoencoderKL
    from addsr_core.ram import RAM, RAMConfig

    if (root / "done").exists():
        return root
    g = torch.Generator().manual_seed(0)
    for cls, folder, cfg in ((UNet2DConditionModel, "unet", {"_class_name": "UNet2DConditionModel", **SD2_UNET_DIFFUSERS, **UNET_ONLY}),
                             (ControlNetModel, "controlnet", {"_class_name": "ControlNetModel", **SD2_UNET_DIFFUSERS, **CONTROLNET_ONLY})):
        net = random_full_size(cls, SD2_UNET, g)
        write_diffusers_folder(root / "addsr" / folder, cfg, net.state_dict())
        del net
    write_diffusers_folder(root / "sd2" / "vae", SD2_VAE_DIFFUSERS, random_full_size(AutoencoderKL, SD2_VAE, g).state_dict())
    save_file({k: v.contiguous() for k, v in random_full_size(RAM, RAMConfig(), g).state_dict().items()}, str(root / "ram.safetensors"))
    from skimage import data

    Image.fromarray(data.astronaut()).resize((LR_SIDE, LR_SIDE), Image.BICUBIC).save(root / "lr.png")
    gi = torch.Generator().manual_seed(SEED)
    side = LR_SIDE * 4 // 8
    save_file({"prompt_embeds": torch.randn(1, 77, 1024, generator=gi),
               "initial_latents": torch.randn(1, 4, side, side, generator=gi)}, str(root / "inputs.safetensors"))
    (root / "done").write_text("ok")
    return root


def load_kit_ram(kit: Path, dtype=torch.float32):
    from safetensors.torch import load_file

    from addsr_core.ram import RAM, RAMConfig

    with torch.device("meta"):
        ram = RAM(RAMConfig())
    ram.load_state_dict(load_file(str(kit / "ram.safetensors")), strict=False, assign=True)
    ram.rebuild_buffers("cpu")
    return ram.to(dtype).eval().requires_grad_(False)


def global_rng_draws(seed: int, shape, steps: int) -> dict:
    """The draws the official pipeline takes from torch's global RNG after ``manual_seed(seed)``, in its
    order: the VAE posterior sample, the start step's ``randint``, then one re-noise per step but the last."""
    g = torch.Generator().manual_seed(seed)
    draws = {"posterior_eps": torch.randn(shape, generator=g)}
    torch.randint(999, 1000, (1,), generator=g)
    for t in (999, 749, 499)[: steps - 1]:
        draws[f"renoise_after_t{t}"] = torch.randn(shape, generator=g)
    return draws


def ours_upscale(kit: Path, out_png: Path, steps: int, dtype: str = "auto", compile_mode: str = "off",
                 decoded_latents: list | None = None) -> dict:
    """Our pipeline on the kit: load (files to networks), compute (LR file to PNG) and stages, with the
    official run's prompt embeddings and random draws, and the official 8-bit route to the PNG
    (``rounding="official"``: see COMPARED_ROUNDING). ``decoded_latents`` receives each VAE decode's
    input, as :func:`official_addsr.official_upscale` records the official run's."""
    from safetensors.torch import load_file

    import addsr_core.stages as stages
    from bench_pipeline import StageClock
    from addsr_core.addsr import pipeline as addsr_family
    from addsr_core.imaging.prepare import load_image, save_image
    from addsr_core.loading.models import load_vae
    from addsr_core.loading.pack import load_addsr
    from addsr_core.pipeline import AddSRModels, AddSROptions, family_of, resolve_options
    from addsr_core.sampling.noise import ReplayNoise

    t0 = time.perf_counter()
    precision = bench_precision(dtype)
    unet, controlnet = load_addsr(kit / "addsr", dtype=precision.dtype)
    vae = load_vae(kit / "sd2", dtype=precision.dtype)
    ram = load_kit_ram(kit, precision.dtype)
    for network in (unet, controlnet, vae, ram):
        apply_precision(network, precision)
    models = AddSRModels(unet, controlnet, vae, ram)
    if compile_mode != "off":
        from addsr_core.compiling import compile_models

        compile_models(models, compile_mode)
    load_s = time.perf_counter() - t0
    inputs = load_file(str(kit / "inputs.safetensors"))
    draws = {"initial_latents": inputs["initial_latents"], **global_rng_draws(SEED, inputs["initial_latents"].shape, steps)}
    options = AddSROptions(steps=steps, use_tags=False, seed=SEED, rounding=COMPARED_ROUNDING)
    clock = StageClock()
    # The stages of pipeline.upscale in its order, on the official run's prompt embeddings and draws
    # (the official pipeline's clock counts every vae.decode: its decodes between steps and the last).
    family = family_of(options)
    with torch.no_grad():
        t1 = time.perf_counter()
        lr = load_image(kit / "lr.png").rgb
        options = resolve_options(options, models, lr.shape[-2:])
        stages.vae_encode = clock.wrap("vae_encode", stages.vae_encode)
        models.ram.represent = clock.wrap("ram", models.ram.represent)
        unet.forward = clock.wrap("unet", unet.forward)
        controlnet.forward = clock.wrap("controlnet", controlnet.forward)
        record = (lambda fn: fn) if decoded_latents is None else (lambda fn: recording(fn, decoded_latents))
        stages.vae_decode = clock.wrap("vae_decode", record(stages.vae_decode))  # the final decode
        addsr_family.vae_decode = clock.wrap("vae_decode", record(addsr_family.vae_decode))  # the decodes between steps
        cond = family.condition(models, lr, options)
        z0 = family.sample(models, cond, inputs["prompt_embeds"], None, options, noise=ReplayNoise(draws))
        image = family.finish(family.decode(models, z0, cond, options), cond, options)
        save_image(image, out_png)
        compute_s = time.perf_counter() - t1
    return {"precision": precision.name, "load_s": round(load_s, 2), "compute_s": round(compute_s, 2),
            "stages_s": {k: round(v, 2) for k, v in clock.seconds.items()}}


def recording(decode_fn, latents: list):
    """``pipeline.vae_decode`` that first keeps a copy of its latent (outside the stage's clock)."""

    def decode(vae, latent, *args, **kwargs):
        latents.append(latent.detach().float().clone())
        return decode_fn(vae, latent, *args, **kwargs)

    return decode


def run_one(side: str, kit: Path, steps: int, out_png: Path, dtype: str, compile_mode: str) -> dict:
    """One whole upscale in this process (``--run``)."""
    import resource

    from safetensors.torch import load_file

    from safetensors.torch import save_file

    torch.set_num_threads(max(1, torch.get_num_threads()))
    latents: list = []
    if side == "official":
        from official_addsr import official_upscale

        inputs = load_file(str(kit / "inputs.safetensors"))
        draws = {"initial_latents": inputs["initial_latents"], "global_seed": SEED}
        result = official_upscale(kit, kit / "lr.png", out_png, steps, draws, inputs["prompt_embeds"], load_kit_ram(kit),
                                  decoded_latents=latents)
    else:
        result = ours_upscale(kit, out_png, steps, dtype, compile_mode, decoded_latents=latents)
    save_file({f"decode{i}": z.float().contiguous() for i, z in enumerate(latents)}, str(latents_file(out_png)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"side": side, "steps": steps, "torch": torch.__version__, **result, "peak_rss_gib": round(peak, 2)}


def run_in_process(python: str, side: str, kit: Path, steps: int, out_png: Path, dtype: str, compile_mode: str) -> dict:
    import subprocess

    cmd = [python, str(Path(__file__).resolve()), "--run", side, "--kit", str(kit), "--steps", str(steps),
           "--out", str(out_png), "--dtype", dtype, "--compile", compile_mode]
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{side} run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def latents_file(png: Path) -> Path:
    return png.with_suffix(".latents.safetensors")


def png_diff(a: Path, b: Path) -> dict:
    """How far two PNGs are apart, in 8-bit levels: max, mean, and the share of values more than 2
    levels apart (with random weights, see COMPARED_ROUNDING, a decode that lands on the other side
    of an 8-bit rounding boundary is stretched to tens of levels: a few values, not the image)."""
    import numpy as np
    from PIL import Image

    x, y = (np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in (a, b))
    d = np.abs(x - y)
    return {"max_levels": int(d.max()), "mean_levels": round(float(d.mean()), 4),
            "over_2_levels": int((d > 2).sum()), "values": int(d.size)}


def latent_diff(a: Path, b: Path) -> dict:
    """Each VAE decode's input (PSR steps, then the final latent) of two runs: ‖a − b‖ / ‖b‖."""
    from safetensors.torch import load_file

    x, y = load_file(str(latents_file(a))), load_file(str(latents_file(b)))
    if sorted(x) != sorted(y):
        return {"decodes": [len(x), len(y)], "error": "the runs decoded a different number of latents"}
    return {k: f"{float((x[k] - y[k]).norm() / y[k].norm()):.2e}" for k in sorted(x)}


def whole_upscale(kit: Path, steps_list=(4, 1), reps: int = 2, dtype: str = "auto", ours_python: str | None = None,
                  official_python: str | None = None, compile_mode: str = "off") -> list[dict]:
    """Official and ours, each run in its own process, alternating (official first, then ours first)."""
    official_python = official_python or os.environ.get("ADDSR_OFFICIAL_PYTHON") or sys.executable
    ours_python = ours_python or sys.executable
    rows = []
    for steps in steps_list:
        runs = {"official": [], "ours": []}
        for rep in range(reps):
            for side in (("official", "ours") if rep % 2 == 0 else ("ours", "official")):
                python = official_python if side == "official" else ours_python
                run = run_in_process(python, side, kit, steps, kit / f"{side}_{steps}.png", dtype, compile_mode)
                run["load_before"] = loadavg()
                print(json.dumps(run), flush=True)
                runs[side].append(run)
        ratios = [o["compute_s"] / f["compute_s"] for o, f in zip(runs["ours"], runs["official"])]
        row = {"steps": steps, "dtype": dtype, "reps": reps,
               "official_compute_s": spread([r["compute_s"] for r in runs["official"]]),
               "ours_compute_s": spread([r["compute_s"] for r in runs["ours"]]),
               "ours_over_official": spread(ratios),
               "decoded_latents_rel_diff": latent_diff(kit / f"ours_{steps}.png", kit / f"official_{steps}.png"),
               "png_diff": png_diff(kit / f"official_{steps}.png", kit / f"ours_{steps}.png")}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--percall", action="store_true")
    parser.add_argument("--sides", type=int, nargs="+", default=[64, 128], help="latent sides for --percall")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], help="precisions for --percall")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="--percall: then each side's per-operator profile")
    parser.add_argument("--pipeline", action="store_true")
    parser.add_argument("--flops", action="store_true")
    parser.add_argument("--kit", type=Path, default=Path(os.environ.get("ADDSR_BENCH_KIT", "/tmp/addsr-bench-kit")),
                        help="where the full-size random weights are written once (~7 GB)")
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 1])
    parser.add_argument("--dtype", default="auto", help="our precision in --pipeline (the official code runs fp32)")
    parser.add_argument("--compile", default="off", help="our compile mode in --pipeline (off, inductor, freezing)")
    parser.add_argument("--pipeline-reps", type=int, default=2)
    parser.add_argument("--ours-python", default=None)
    parser.add_argument("--isa", choices=ISAS, default="native",
                        help="avx2: both sides' kernels capped at AVX2, as on a CPU whose fast path is fp32 (bench/cpu_isa.py)")
    parser.add_argument("--run", choices=["official", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    apply_isa(args.isa)  # the runs of --pipeline inherit the caps
    if args.run:
        print(json.dumps(run_one(args.run, args.kit, args.steps[0], args.out, args.dtype, args.compile)))
        return 0
    report = {"machine": machine(), "load_before": loadavg()}
    print(json.dumps(report), flush=True)
    everything = not (args.percall or args.flops or args.pipeline)
    if args.percall or everything:
        report["percall"] = percall(tuple(args.sides), tuple(args.dtypes), args.reps, args.profile)
    if args.flops or everything:
        report["flops"] = network_rates(args.sides[0], tuple(args.dtypes), max(1, args.reps - 1))
    if args.pipeline or everything:
        write_kit(args.kit)
        report["pipeline"] = whole_upscale(args.kit, tuple(args.steps), args.pipeline_reps, args.dtype, args.ours_python,
                                           compile_mode=args.compile)
    report["load_after"] = loadavg()
    print(json.dumps({"load_after": report["load_after"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
