"""The GPU path of every pipeline, run with no GPU: full-size networks on fake CUDA (tools/fake_cuda.py).

Run it with a CUDA build of torch (it needs no GPU: ``pip install torch==2.14.1`` in its own venv):

    python tools/gpu_dryrun.py --family addsr --steps 4 --size 4096 --dtype bf16
    python tools/gpu_dryrun.py --family addsr --steps 1 --size 512 --gpu turing      # the policy's fp16
    python tools/gpu_dryrun.py --family seesr --steps 2 --size 2048 --dtype fp16      # same code every step
    python tools/gpu_dryrun.py --family stablesr --size 2048 --dtype bf16             # Turbo, 4 steps
    python tools/gpu_dryrun.py --family addsr --size 4096 --latent-tile 768 --vae-tile 512   # other tiles
    python tools/gpu_dryrun.py --family addsr --size 4096 --tiles auto --vram-gib 8  # the GPU-aware tiles of an 8 GiB card

The networks are built by their own constructors in the dtype and layout the precision policy
picks for the simulated GPU (``--gpu ampere``: bf16, ``turing``: fp16; ``--dtype`` overrides), the
device comes from the CLI's own ``resolve_device("auto")``, and the library's entry point runs end
to end with default options (``pipeline.upscale`` with ``AddSROptions``, ``SeeSROptions`` or
``StableSROptions``) on a random LR of a quarter of ``--size``. Only the PIL preparation of the
condition image runs on real data, on the host, as it does on a GPU.

It fails (exit 1), naming the line, on a device mismatch, a host sync inside sampling, a network
computing in another dtype than promised or on the host, or anything fake mode cannot run. It
prints a per-stage table (peak live CUDA bytes, what each stage's calls add on top, CPU seconds of
the dry run) and, as its last line, ``peak VRAM estimate: X.XX GiB``: tensors only, as
``torch.cuda.max_memory_allocated`` counts them (see docs/gpu.md for what that leaves out).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import fake_cuda as fc  # noqa: E402

FAMILIES = ("addsr", "seesr", "stablesr")


class _StubTokenizer:
    """Token ids of the right shape (the real tokenizer needs SD2's vocabulary file; it runs on the host)."""

    context_length = 77

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __call__(self, prompts):
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        with fc.on_host():  # real ids, on the host, as the real tokenizer makes them
            return torch.zeros(len(prompts), self.context_length, dtype=torch.long)


def build_network(factory, precision, device, layout: bool = True):
    """Built on meta by its constructor, given the policy's dtype and layout, materialised on fake ``device``."""
    from addsr_core.precision import apply_precision

    module = fc.build_on_meta(factory)
    with fc.on_host():
        if layout:
            apply_precision(module, precision)
        else:
            module.to(dtype=precision.dtype)
    return fc.materialize(module, device).eval().requires_grad_(False)


def addsr_configs(tiny: bool) -> dict:
    """The networks' configs: full size (SD2, RAM Swin-L, OpenCLIP-H text) or the tests' tiny ones."""
    from addsr_core.models import SD2_UNET, SD2_VAE, UNetConfig, VAEConfig
    from addsr_core.ram import RAMConfig
    from addsr_core.text.config import TextEncoderConfig

    if not tiny:
        return {"unet": SD2_UNET, "controlnet": SD2_UNET, "vae": SD2_VAE, "ram": RAMConfig(), "text": TextEncoderConfig()}
    from addsr_core.addsr.tiny import TINY_CONTROLNET, TINY_TEXT, TINY_UNET, TINY_VAE
    from addsr_core.ram.tiny import TINY_RAM_CONFIG

    return {"unet": UNetConfig.from_diffusers(TINY_UNET), "controlnet": UNetConfig.from_diffusers(TINY_CONTROLNET),
            "vae": VAEConfig.from_diffusers(TINY_VAE), "ram": TINY_RAM_CONFIG,
            "text": TextEncoderConfig.from_transformers(TINY_TEXT)}


def addsr_models(precision, device, tiny: bool = False):
    from addsr_core.models import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from addsr_core.pipeline import AddSRModels
    from addsr_core.ram import RAM
    from addsr_core.text import TextConditioner
    from addsr_core.text.encoder import CLIPTextEncoder

    cfg = addsr_configs(tiny)
    unet = build_network(lambda: UNet2DConditionModel(cfg["unet"]), precision, device)
    controlnet = build_network(lambda: ControlNetModel(cfg["controlnet"]), precision, device)
    vae = build_network(lambda: AutoencoderKL(cfg["vae"]), precision, device)
    ram = build_network(lambda: RAM(cfg["ram"]), precision, device)
    ram.rebuild_buffers(device)  # as load_ram: the Swin geometry buffers on the device
    encoder = build_network(lambda: CLIPTextEncoder(cfg["text"]), precision, device, layout=False)
    text = TextConditioner(_StubTokenizer(cfg["text"].vocab_size), encoder)
    return AddSRModels(unet, controlnet, vae, ram, None, text)


def stablesr_models(precision, device, tiny: bool = False):
    from addsr_core.models import SD2_VAE
    from addsr_core.stablesr import CFWAutoencoder
    from addsr_core.stablesr.model import StableSRConfig, StableSRModel
    from addsr_core.stablesr.pipeline import StableSRModels
    from addsr_core.stablesr.tiny import TINY_CFW, TINY_STABLESR

    config, vae_config = (TINY_STABLESR, TINY_CFW) if tiny else (StableSRConfig(), SD2_VAE)
    model = build_network(lambda: StableSRModel(config), precision, device)
    vae = build_network(lambda: CFWAutoencoder(vae_config), precision, device)
    return StableSRModels(model, vae)


def _real_lr(fake_lr: torch.Tensor) -> torch.Tensor:
    return torch.rand(tuple(fake_lr.shape), generator=torch.Generator().manual_seed(1))


def run_addsr_family(args, run: "fc.FakeRun", precision, device, stack: ExitStack):
    import addsr_core.imaging.prepare as prepare
    import addsr_core.imaging.tiled_vae.codec as tiled_vae_codec
    import addsr_core.stages as stages
    from addsr_core.addsr import pipeline as addsr_family
    from addsr_core.pipeline import family_of

    dtype, memory = precision.dtype, run.memory
    with memory.stage("weights"):
        models = addsr_models(precision, device, args.tiny)
    options = make_options(args)
    family = family_of(options)

    def patch(obj, name, stage, **kw):
        stack.enter_context(mock.patch.object(obj, name, memory.wrap(stage, getattr(obj, name), **kw)))

    stack.enter_context(mock.patch.object(prepare, "official_condition_uint8", memory.wrap(
        "prepare (host, PIL)", run.host_function(prepare.official_condition_uint8, _real_lr))))
    patch(family, "condition", "condition")
    patch(stages, "vae_encode", "vae_encode", dtype=dtype)
    patch(models.ram, "represent", "ram", dtype=dtype)
    patch(models, "text", "text", dtype=dtype)
    patch(family, "sample", "sample", sync_free=True)
    patch(models.unet, "forward", "unet", dtype=dtype)
    patch(models.controlnet, "forward", "controlnet", dtype=dtype)
    if family is addsr_family:
        patch(addsr_family, "vae_decode", "psr_decode", dtype=dtype)
    patch(stages, "decode", "final_decode", dtype=dtype)
    patch(family, "finish", "finish")
    patch(tiled_vae_codec, "decoder_context", "  vae decode: statistics pass")
    patch(tiled_vae_codec, "encoder_context", "  vae encode: statistics pass")
    patch(tiled_vae_codec, "_run_tiles", "  vae: tiles + blend")

    lr = torch.rand(1, 3, args.size // 4, args.size // 4, device=device)  # the CLI's loaded.rgb.to(device)
    with memory.stage("upscale"):
        image, options = upscale(models, lr, options, stack)
    if run.device_type == "cuda":  # meta has no data to copy out
        with memory.stage("to_uint8 (host copy)"):
            prepare.to_uint8_round(image[0])
    return tuple(image.shape), options


def upscale(models, lr, options, stack: ExitStack) -> tuple:
    """``pipeline.upscale`` (the family from the options' type), and the options it settled on: the
    AUTO tiles chosen for the simulated card."""
    import addsr_core.pipeline as pipeline

    resolved, resolve = [], pipeline.resolve_tiles

    def resolving(*a, **k):
        resolved.append(resolve(*a, **k))
        return resolved[-1]

    stack.enter_context(mock.patch.object(pipeline, "resolve_tiles", resolving))
    image = pipeline.upscale(models, lr, options)
    return image, resolved[-1]


def make_options(args):
    """The family's default options, with the tiles asked for (a diffusion tile keeps the family's
    overlap, under the one overlap rule, as the CLI's ``--tile``)."""
    from addsr_core.pipeline import AddSROptions, SeeSROptions, StableSROptions
    from addsr_core.seesr.pipeline import DEFAULT_STEPS as SEESR_STEPS
    from addsr_core.stablesr.sampling import TURBO_STEPS

    tiles = {}
    if args.latent_tile is not None:
        tiles.update(latent_tile_px=args.latent_tile)
    if args.family == "stablesr":
        if args.vae_tile is not None:  # its CFW encode and decode run on its pixel tiles
            tiles.update(pixel_tile_px=args.vae_tile)
        return StableSROptions(steps=args.steps or TURBO_STEPS, **tiles)  # StableSR-Turbo
    if args.vae_tile is not None:
        tiles.update(vae_encode_tile_px=args.vae_tile, vae_decode_tile_px=args.vae_tile)
    if args.family == "addsr":
        return AddSROptions(steps=args.steps or 4, **tiles)
    return SeeSROptions(steps=args.steps or SEESR_STEPS, **tiles)


def run_stablesr(args, run: "fc.FakeRun", precision, device, stack: ExitStack):
    from addsr_core.stablesr import pipeline as sr

    dtype, memory = precision.dtype, run.memory
    with memory.stage("weights"):
        models = stablesr_models(precision, device, args.tiny)

    def patch(obj, name, stage, **kw):
        stack.enter_context(mock.patch.object(obj, name, memory.wrap(stage, getattr(obj, name), **kw)))

    patch(sr, "prepare_lr", "prepare")
    patch(sr, "encode_moments", "vae_encode", dtype=dtype)
    patch(sr, "sample_latent", "sample", sync_free=True)
    patch(models.model, "forward", "unet + encoder", dtype=dtype)
    patch(sr, "decode_cfw", "cfw_decode", dtype=dtype)
    patch(sr, "finish", "finish")
    options = make_options(args)
    lr = torch.rand(1, 3, args.size // 4, args.size // 4, device=device)
    width = models.model.config.unet.cross_attention_dim
    context = torch.zeros(1, 77, width, device=device, dtype=dtype)  # ComfyUI's CLIP output (its own memory)
    models.text = lambda prompts: context  # the official empty prompt's embedding, whatever the prompt
    with memory.stage("upscale"):
        image, options = upscale(models, lr, options, stack)
    return tuple(image.shape), options


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=FAMILIES, default="addsr")
    parser.add_argument("--steps", type=int, help="AddSR 1-4 (default 4); SeeSR default 50; StableSR default 4 (Turbo)")
    parser.add_argument("--size", type=int, default=512, help="output side in pixels (the LR is a quarter of it)")
    parser.add_argument("--gpu", choices=sorted(fc.GPUS), default="ampere", help="the simulated GPU")
    parser.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                        help="auto: what the precision policy picks for --gpu")
    parser.add_argument("--latent-tile", type=_tile, help="diffusion tile in output px, or auto (default: the library's)")
    parser.add_argument("--vae-tile", type=_tile,
                        help="VAE encode/decode tile in px (StableSR: the pixel tile), or auto (default: the library's)")
    parser.add_argument("--tiles", choices=("default", "auto"), default="default",
                        help="auto: every tile left to the device (what the CLI does on a GPU): the largest that "
                             "fit the simulated card's free memory")
    parser.add_argument("--vram-gib", type=float, help="the simulated card's memory (default: the --gpu's)")
    parser.add_argument("--device", choices=("cuda", "meta"), default="cuda",
                        help="cuda: fake CUDA (a CUDA build of torch); meta: the meta device (any build; no memory "
                             "estimate worth the name: no fused attention)")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny networks (a smoke run: CI, the CPU wheel)")
    parser.add_argument("--json", action="store_true", help="also print the stage table as one JSON line")
    parser.add_argument("--traceback", action="store_true", help="print the whole traceback of a failure")
    args = parser.parse_args(argv)
    if args.size < 64 or args.size % 32:
        parser.error("--size must be a multiple of 32, at least 64")

    from addsr_core.cli_upscale import resolve_device
    from addsr_core.precision import resolve_precision

    gpu = fc.GPUS[args.gpu]
    if args.vram_gib:
        gpu = dataclasses.replace(gpu, name=f"{gpu.name} with {args.vram_gib:g} GiB", total_gib=args.vram_gib)
    if args.tiles == "auto":
        from addsr_core.memory import AUTO

        args.latent_tile = AUTO if args.latent_tile is None else args.latent_tile
        args.vae_tile = AUTO if args.vae_tile is None else args.vae_tile
    start = time.perf_counter()
    family = run_stablesr if args.family == "stablesr" else run_addsr_family
    with ExitStack() as stack:
        run = stack.enter_context(fc.fake_device(args.device, gpu))
        memory = run.memory
        try:
            if args.device == "cuda":
                with fc.cuda_reported_available():
                    device = resolve_device("auto")
            else:
                device = torch.device(args.device)
            precision = resolve_precision(args.dtype, device)
            where = gpu.name if args.device == "cuda" else "meta"
            print(f"{args.family} {args.size}² on {where} ({device}), {precision.name}, torch {torch.__version__}",
                  flush=True)
            shape, options = family(args, run, precision, device, stack)
        except Exception as err:  # noqa: BLE001 - every failure is reported with its line
            if args.traceback:
                import traceback

                traceback.print_exc()
            print(f"FAILED: {type(err).__name__} at {fc.exception_line(err)}\n  {str(err).splitlines()[0] if str(err) else ''}",
                  flush=True)
            print(fc.format_table(memory))
            print(f"peak VRAM estimate: {fc.gib(memory.peak):.2f} GiB (incomplete run)")
            return 1
    print(f"output {shape}; options {_options_summary(options)}; dry run {time.perf_counter() - start:.1f} s CPU")
    print(f"convolutions: {memory.convs['nhwc']} NHWC, {memory.convs['nchw']} NCHW")
    uploads = ", ".join(f"{n} at {line}" for line, n in sorted(memory.uploads.items(), key=lambda kv: -kv[1]))
    print(f"host-to-device copies inside sampling (each waits for the stream): {uploads or 'none'}")
    print(fc.format_table(memory))
    if args.json:
        print(json.dumps({"family": args.family, "size": args.size, "steps": args.steps, "precision": precision.name,
                          "gpu": args.gpu, "peak_gib": round(fc.gib(memory.peak), 3),
                          "stages": {k: {"peak_gib": round(fc.gib(s.peak), 3), "working_gib": round(fc.gib(s.working), 3),
                                         "calls": s.calls} for k, s in memory.stats.items()}}))
    if memory.violations:
        print(f"FAILED: {len(memory.violations)} problem(s):")
        for v in memory.violations:
            print(f"  {v}")
        print(f"peak VRAM estimate: {fc.gib(memory.peak):.2f} GiB")
        return 1
    print(f"peak VRAM estimate: {fc.gib(memory.peak):.2f} GiB")
    return 0


def _tile(value: str) -> int:
    from addsr_core.memory import AUTO

    return AUTO if value == "auto" else int(value)


def _options_summary(options) -> str:
    keys = ("steps", "min_size", "latent_tile_px", "latent_overlap_px", "vae_encode_tile_px", "vae_decode_tile_px",
            "pixel_tile_px", "pixel_overlap_px")
    from addsr_core.stages import tile_overlap_px

    values = {k: getattr(options, k) for k in keys if hasattr(options, k)}
    values["latent_overlap_px"] = options.tiling.overlap_px  # the overlaps as used (the one overlap rule)
    if "pixel_overlap_px" in values:
        values["pixel_overlap_px"] = tile_overlap_px(options.pixel_tile_px, options.pixel_overlap_px)
    return ", ".join(f"{k}={v}" for k, v in values.items())


if __name__ == "__main__":
    sys.exit(main())
