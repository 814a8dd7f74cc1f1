"""The ``upscale`` command: files or folders, resumable, with a progress bar over tiles x steps.

``--method addsr`` (default) or ``seesr``: the same files, models and batch handling; only the
sampler and its defaults differ (:mod:`.pipeline` / :mod:`.seesr`)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .addsr import pipeline as addsr
from .seesr import pipeline as seesr
from .cli import IMAGE_SUFFIXES, CLIError
from .compiling import compile_models
from .precision import apply_precision, resolve_precision
from .pipeline import (DEFAULT_VAE_TILE_PX, AUTO, AddSRModels, UpscaleOptions, resolve_tiles, tile_overlap_px, upscale,
                       upscale_calls)
from .seesr.pipeline import SeeSROptions

METHODS = {"addsr": addsr, "seesr": seesr}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise CLIError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda asked for, but this torch has no CUDA (or no GPU is visible)")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """--dtype: auto is the device policy of :mod:`.precision` (fp32 where low precision is not fast)."""
    return resolve_precision(name, device).dtype


def rank_shard() -> tuple[int, int]:
    """(rank, world size) when started by torchrun (it sets RANK and WORLD_SIZE), else (0, 1)."""
    try:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise CLIError("RANK and WORLD_SIZE must be integers (they are set by torchrun)") from None
    if world < 1 or not 0 <= rank < world:
        raise CLIError(f"RANK {rank} is not within WORLD_SIZE {world}")
    return rank, world


def plan_jobs(source: Path, output: Path, overwrite: bool, suffix: str = ".png",
              shard: tuple[int, int] = (0, 1)) -> list[tuple[Path, Path]]:
    """(input, output) pairs; existing outputs are skipped so a killed batch resumes.

    ``shard`` (rank, world): every world-th file of the sorted list, taken BEFORE the resume filter, so
    which rank owns a file never depends on what the other ranks have already written."""
    if not source.exists():
        raise CLIError(f"input {str(source)!r} does not exist")
    if source.is_file():
        if source.suffix.lower() not in IMAGE_SUFFIXES:
            raise CLIError(f"{source.name} is not a supported image ({', '.join(sorted(IMAGE_SUFFIXES))})")
        target = output / (source.stem + suffix) if output.is_dir() else output
        jobs = [(source, target)]
    else:
        if output.exists() and not output.is_dir():
            raise CLIError(f"input is a folder, so --output must be a folder, not the file {str(output)!r}")
        files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise CLIError(f"no images in {str(source)!r}")
        jobs = [(p, output / (p.stem + suffix)) for p in files]
    rank, world = shard
    return [(src, dst) for src, dst in jobs[rank::world] if overwrite or not dst.exists()]


def load_models(args, device, dtype) -> AddSRModels:
    from .loading.models import load_vae
    from .loading.pack import load_addsr
    from .ram import load_ram
    from .text import TextConditioner

    precision = resolve_precision(args.dtype, device)
    dtype = precision.dtype
    unet, controlnet = load_addsr(args.addsr, dtype=dtype, device=device)
    vae = load_vae(args.sd2, dtype=dtype, device=device)
    ram, tagger = load_ram(args.ram, args.dape, tag_list=args.tag_list, dtype=dtype, device=device)
    text = TextConditioner.from_pretrained(args.sd2, args.tokenizer, dtype=dtype, device=device)
    for network in (unet, controlnet, vae, ram):  # NHWC convs with low precision (the text encoder has none)
        apply_precision(network, precision)
    models = AddSRModels(unet, controlnet, vae, ram, tagger, text)
    return compile_models(models, getattr(args, "compile", "off"))


def run_upscale(args) -> int:
    from tqdm import tqdm

    rank, world = rank_shard()
    device = resolve_device(args.device)
    if world > 1 and device.type == "cuda" and device.index is None:  # torchrun: one GPU per rank
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    dtype = resolve_dtype(args.dtype, device)
    method = METHODS[args.method]
    who = f"rank {rank}/{world}: " if world > 1 else ""
    options = build_options(args, device)
    try:
        options.validate()
        options.sampling().validate()
    except ValueError as err:
        raise CLIError(str(err)) from None
    jobs = plan_jobs(args.input, args.output, args.overwrite, shard=(rank, world))
    if not jobs:
        print(f"{who}nothing to do: every output exists (use --overwrite to redo them)")
        return 0
    models = load_models(args, device, dtype)
    failures = 0
    for src, dst in jobs:
        try:
            upscale_file(models, src, dst, options, device, tqdm, method)
        except (ValueError, OSError) as err:
            failures += 1
            print(f"{who}skipped {src.name}: {err}")
    print(f"{who}done: {len(jobs) - failures} written, {failures} failed")
    return 1 if failures else 0


def build_options(args, device: torch.device = torch.device("cpu")) -> UpscaleOptions:
    """The method's options; flags left unset (None) keep the method's official default. Unset tiles
    are the measured defaults on a CPU and :data:`AUTO` on a GPU (chosen per image from its free
    memory, :func:`~addsr_core.pipeline.resolve_tiles`)."""
    make = UpscaleOptions if args.method == "addsr" else SeeSROptions
    defaults = make()
    gpu = torch.device(device).type == "cuda"

    def pick(value, default):
        return default if value is None else value

    tile = pick(args.tile, AUTO if gpu else defaults.latent_tile_px)
    vae_tile = pick(args.vae_tile, AUTO if gpu else DEFAULT_VAE_TILE_PX)
    overlap = pick(args.tile_overlap, defaults.latent_overlap_px)
    common = dict(
        scale=args.scale, steps=pick(args.steps, defaults.steps), seed=args.seed,
        guidance_scale=pick(args.cfg, defaults.guidance_scale), prompt=args.prompt, negative_prompt=args.negative,
        color_fix=args.color_fix, latent_tile_px=tile,
        latent_overlap_px=overlap if tile == AUTO else tile_overlap_px(tile, overlap), vae_encode_tile_px=vae_tile,
        vae_decode_tile_px=vae_tile, use_tags=args.tag_list is not None, rounding=args.rounding,
    )
    if args.method == "addsr":
        return make(psr_weight=args.psr_weight, **common)
    return make(start_point=args.start_point, **common)


def upscale_file(models, src: Path, dst: Path, options: UpscaleOptions, device, tqdm, method=addsr) -> None:
    from .imaging.prepare import load_image, save_image

    loaded = load_image(src)
    lr = loaded.rgb.to(device)
    options = resolve_tiles(options, device, next(models.unet.parameters()).dtype, lr.shape[-2:])
    total = upscale_calls(options, lr.shape[-2:], method=method)
    with tqdm(total=total, desc=src.name, unit="call") as bar:
        image = upscale(models, lr, options, method=method, on_tile=lambda: bar.update(1))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial.png")
    save_image(image, tmp, alpha=loaded.upscaled_alpha(image.shape[-2:]) if loaded.alpha is not None else None)
    os.replace(tmp, dst)  # a killed run never leaves a half-written output that resume would skip
