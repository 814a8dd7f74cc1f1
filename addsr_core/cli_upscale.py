"""The ``upscale`` command: files or folders, resumable, sharded under torchrun, with a progress bar
over the network calls.

``--method addsr`` (default), ``seesr`` or ``stablesr``: the same files, batch, resume and sharding;
the method picks the options class, and the options class the family (:mod:`.pipeline`)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .cli_jobs import CLIError, plan_jobs, rank_shard, resolve_device, resolve_dtype, write_atomically
from .memory import AUTO
from .pipeline import AddSROptions, SeeSROptions, StableSROptions, resolve_options, upscale, upscale_calls
from .stablesr.sampling import TURBO_STEPS

OPTIONS = {"addsr": AddSROptions, "seesr": SeeSROptions, "stablesr": StableSROptions}
# The files each method needs (flag -> what it is), checked before anything loads.
NEEDS = {"addsr": ("addsr", "ram"), "seesr": ("addsr", "ram"), "stablesr": ("stablesr", "cfw")}
# Flags that only one method reads: given to another, they would silently do nothing.
ONLY = {"psr_weight": ("addsr",), "vae_tile": ("addsr", "seesr"), "tag_list": ("addsr", "seesr"),
        "rounding": ("addsr", "seesr"), "pixel_tile": ("stablesr",), "pixel_tile_overlap": ("stablesr",),
        "base": ("stablesr",), "procedure": ("stablesr",), "fidelity": ("stablesr",), "compile": ("addsr", "seesr"),
        "start_point": ("seesr", "stablesr")}
FLAG_DEFAULTS = {"psr_weight": 0.4, "rounding": "float", "procedure": "official", "fidelity": 0.5, "compile": "off",
                 "start_point": "lr"}


def check_method_args(args) -> str | None:
    """What is wrong with the flags for ``--method`` (a parser error), or None."""
    method = args.method
    missing = [f"--{flag.replace('_', '-')}" for flag in NEEDS[method] if getattr(args, flag) is None]
    if missing:
        return f"--method {method} needs {' and '.join(missing)}"
    for flag, methods in ONLY.items():
        value = getattr(args, flag)
        if method not in methods and value is not None and value != FLAG_DEFAULTS.get(flag):
            return f"--{flag.replace('_', '-')} is for --method {' or '.join(methods)}, not {method}"
    if method == "addsr" and args.steps not in (None, 1, 2, 3, 4):
        return f"AddSR samples with 1 to 4 steps, got --steps {args.steps} (--method seesr or stablesr takes more)"
    if method != "stablesr" and args.scale != int(args.scale):
        return f"--method {method} upscales by a whole number, got --scale {args.scale}"
    return None


def load_models(args, device):
    """The networks of ``--method``, in the precision of ``--dtype`` (its policy for ``device``)."""
    from .compiling import compile_models
    from .precision import apply_layout, apply_precision, resolve_precision
    from .text import TextConditioner

    precision = resolve_precision(args.dtype, device)
    dtype = precision.dtype
    text = TextConditioner.from_pretrained(args.sd2, args.tokenizer, dtype=dtype, device=device)
    if args.method == "stablesr":
        from .stablesr import load_cfw_vae, load_stablesr
        from .stablesr.pipeline import StableSRModels

        model = load_stablesr(args.stablesr, base=args.base, dtype=dtype, device=device)
        # The CFW decoder's activations can overflow fp16 (as ComfyUI's VAE in fp16): fp32 there instead.
        vae = load_cfw_vae(args.cfw, dtype=torch.float32 if dtype == torch.float16 else dtype, device=device)
        apply_precision(model, precision)
        apply_layout(vae, precision)
        return StableSRModels(model, vae, text)
    from .loading.models import load_vae
    from .loading.pack import load_addsr
    from .ram import load_ram
    from .stages import AddSRModels

    unet, controlnet = load_addsr(args.addsr, dtype=dtype, device=device)
    vae = load_vae(args.sd2, dtype=dtype, device=device)
    ram, tagger = load_ram(args.ram, args.dape, tag_list=args.tag_list, dtype=dtype, device=device)
    for network in (unet, controlnet, vae, ram):  # NHWC convs with low precision (the text encoder has none)
        apply_precision(network, precision)
    return compile_models(AddSRModels(unet, controlnet, vae, ram, tagger, text), getattr(args, "compile", "off"))


def run_upscale(args) -> int:
    from tqdm import tqdm

    rank, world = rank_shard()
    device = resolve_device(args.device)
    if world > 1 and device.type == "cuda" and device.index is None:  # torchrun: one GPU per rank
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    resolve_dtype(args.dtype, device)  # an unusable --dtype fails before the files are listed
    who = f"rank {rank}/{world}: " if world > 1 else ""
    options = build_options(args, device)
    options.validate()
    jobs = plan_jobs(args.input, args.output, args.overwrite, shard=(rank, world))
    if not jobs:
        print(f"{who}nothing to do: every output exists (use --overwrite to redo them)")
        return 0
    models = load_models(args, device)
    failures = 0
    for src, dst in jobs:
        try:
            upscale_file(models, src, dst, options, device, tqdm)
        except (ValueError, OSError) as err:
            failures += 1
            print(f"{who}skipped {src.name}: {err}")
    print(f"{who}done: {len(jobs) - failures} written, {failures} failed")
    return 1 if failures else 0


def build_options(args, device: torch.device = torch.device("cpu")):
    """The method's options; flags left unset (None) keep the method's official default. Unset (or 0)
    tiles are the measured defaults on a CPU and :data:`AUTO` on a GPU (chosen per image from its free
    memory, :func:`~addsr_core.stages.resolve_tiles`)."""
    method = args.method
    make = OPTIONS[method]
    defaults = make()
    gpu = torch.device(device).type == "cuda"

    def pick(value, default):
        return default if value is None else value

    def tile(value, name):
        return (AUTO if gpu else getattr(defaults, name)) if not value else value

    common = dict(
        scale=args.scale if method == "stablesr" else int(args.scale), seed=args.seed,
        guidance_scale=pick(args.cfg, defaults.guidance_scale), prompt=args.prompt, negative_prompt=args.negative,
        color_fix=args.color_fix, min_size=pick(args.min_size, defaults.min_size),
        latent_tile_px=tile(args.tile, "latent_tile_px"),
        latent_overlap_px=pick(args.tile_overlap, defaults.latent_overlap_px),
    )
    if method == "stablesr":
        turbo = "turbo" in Path(args.stablesr).name.lower()
        return make(steps=pick(args.steps, TURBO_STEPS if turbo else defaults.steps),
                    start_point=args.start_point, fidelity=pick(args.fidelity, defaults.fidelity),
                    procedure=pick(args.procedure, defaults.procedure),
                    pixel_tile_px=tile(args.pixel_tile, "pixel_tile_px"),
                    pixel_overlap_px=pick(args.pixel_tile_overlap, defaults.pixel_overlap_px), **common)
    vae_tile = tile(args.vae_tile, "vae_encode_tile_px")
    common.update(steps=pick(args.steps, defaults.steps), use_tags=args.tag_list is not None,
                  vae_encode_tile_px=vae_tile, vae_decode_tile_px=vae_tile, rounding=pick(args.rounding, "float"))
    if method == "addsr":
        return make(psr_weight=pick(args.psr_weight, defaults.psr_weight), **common)
    return make(start_point=args.start_point, **common)


def upscale_file(models, src: Path, dst: Path, options, device, tqdm) -> None:
    from .imaging.prepare import load_image, save_image

    loaded = load_image(src)
    lr = loaded.rgb.to(device)
    options = resolve_options(options, models, lr.shape[-2:])
    total = upscale_calls(options, lr.shape[-2:])
    with tqdm(total=total, desc=src.name, unit="call") as bar:
        image = upscale(models, lr, options, on_tile=lambda: bar.update(1))
    alpha = loaded.upscaled_alpha(image.shape[-2:]) if loaded.alpha is not None else None
    write_atomically(dst, lambda tmp: save_image(image, tmp, alpha=alpha))
