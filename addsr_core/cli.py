"""``python -m addsr_core`` / ``addsr``: upscale or tag files or folders, convert checkpoints, self-check."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .cli_jobs import DTYPES, CLIError
from .imaging.colorfix import COLOR_FIXES
from .stages import DEFAULT_LATENT_OVERLAP_PX, DEFAULT_LATENT_TILE_PX, DEFAULT_VAE_TILE_PX
from .text.prompt import DEFAULT_NEGATIVE_PROMPT

METHODS = ("addsr", "seesr", "stablesr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="addsr", description="AddSR diffusion super-resolution")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("upscale", help="upscale an image or a folder of images")
    up.add_argument("input", type=Path, help="an image file or a folder of images")
    up.add_argument("-o", "--output", type=Path, required=True, help="output file (for one image) or folder")
    up.add_argument("--method", default="addsr", choices=METHODS,
                    help="addsr: 1-4 refining steps (default); seesr: SeeSR's 50-step DDPM with CFG 5.5; "
                         "stablesr: StableSR (200 steps, or 4 with the Turbo model) with its CFW decoder")
    files = up.add_argument_group("files")
    files.add_argument("--sd2", type=Path, required=True,
                       help="SD2 base: diffusers folder (vae/, text_encoder/, tokenizer/) or single-file checkpoint "
                            "(StableSR: the text encoder of its base, SD 2.1 or SD-Turbo)")
    files.add_argument("--tokenizer", type=Path, help="CLIP tokenizer folder or bpe_simple_vocab_16e6.txt.gz (if not inside --sd2)")
    files.add_argument("--addsr", type=Path,
                       help="addsr/seesr: the AddSR (or SeeSR) release folder (unet/, controlnet/) or packed file")
    files.add_argument("--ram", type=Path, help="addsr/seesr: ram_swin_large_14m.pth")
    files.add_argument("--dape", type=Path, help="addsr/seesr: DAPE.pth (LoRA merged into RAM)")
    files.add_argument("--tag-list", type=Path, help="addsr/seesr: ram_tag_list.txt, to use RAM tags in the prompt")
    files.add_argument("--stablesr", type=Path, help="stablesr: stablesr_000117.ckpt, stablesr_768v_000139.ckpt, "
                       "stablesr_turbo.ckpt (or their .safetensors copies), or an SR module with --base")
    files.add_argument("--cfw", type=Path, help="stablesr: vqgan_cfw_00011.ckpt (or its .safetensors copy)")
    files.add_argument("--base", type=Path, help="stablesr: the SD 2.x / SD-Turbo checkpoint under an SR module "
                       "(with a full .ckpt it replaces the file's UNet)")
    up.add_argument("--scale", type=float, default=4, help="upscale factor (AddSR/SeeSR: a whole number)")
    up.add_argument("--steps", type=int, help="addsr: 1-4 (default 4); seesr: DDPM steps (default 50); stablesr: "
                                              "DDPM steps (default 200; 4 for a model file named *turbo*)")
    up.add_argument("--psr-weight", type=float, default=0.4, help="addsr only")
    up.add_argument("--cfg", type=float, help="guidance scale; > 1 enables CFG with --negative (AddSR 0, SeeSR 5.5, StableSR 1)")
    up.add_argument("--start-point", default="lr", choices=["lr", "noise"],
                    help="seesr, stablesr: start from the LR latent noised to t=999 (official) or from pure noise")
    up.add_argument("--prompt", default="", help="addsr/seesr: between the RAM tags and the quality words; "
                                                 "stablesr: the whole prompt (official: empty)")
    up.add_argument("--negative", default=DEFAULT_NEGATIVE_PROMPT)
    up.add_argument("--min-size", type=int, help="inputs whose upscaled short side is below this are enlarged to it "
                                                  "first and resized back (AddSR/SeeSR 512; StableSR the model's, 512 or 768)")
    up.add_argument("--color-fix", default="adain", choices=COLOR_FIXES)
    up.add_argument("--rounding", default="float", choices=["float", "official"],
                    help="addsr/seesr: float: colour fix in float, round once (default); official: round the decode to "
                         "8 bits, colour fix, truncate, as the official test_addsr.py (reproduces its PNG)")
    up.add_argument("--fidelity", type=float, default=0.5, help="stablesr: the CFW weight w (0: the plain decoder, most "
                                                                "generated detail; 1: closest to the input; official 0.5)")
    up.add_argument("--procedure", default="official", choices=["official", "whole_latent"],
                    help="stablesr: official: each pixel tile (--pixel-tile) upscaled on its own; whole_latent: one encode "
                         "and one canvas sampling of the whole image, decoded in the pixel tiles (faster on large images)")
    up.add_argument("--seed", type=int, default=0)
    tiles = up.add_argument_group("tiles (output pixels; 0 or unset: auto, the largest that fits a GPU's free memory, "
                                  "the measured default on a CPU)")
    tiles.add_argument("--tile", type=int, help=f"diffusion tile (CPU: AddSR {DEFAULT_LATENT_TILE_PX}, SeeSR 768, StableSR "
                                                "the model's 512 or 768; on a GPU at most those)")
    tiles.add_argument("--tile-overlap", type=int, help=f"diffusion tile overlap (AddSR {DEFAULT_LATENT_OVERLAP_PX}, "
                                                        "SeeSR 32, StableSR 256; at most half the tile)")
    tiles.add_argument("--vae-tile", type=int, help=f"addsr/seesr: VAE tile (CPU: {DEFAULT_VAE_TILE_PX})")
    tiles.add_argument("--pixel-tile", type=int, help="stablesr: the official pixel tile (1280; on a GPU at most that)")
    tiles.add_argument("--pixel-tile-overlap", type=int, help="stablesr: pixel tile overlap (official 280: stride 1000)")
    up.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    up.add_argument("--dtype", default="auto", choices=DTYPES)
    up.add_argument("--compile", nargs="?", const="inductor", default="off", choices=["off", "inductor", "freezing"],
                    help="torch.compile the UNet and ControlNet (off by default; the first call of each tile "
                         "size compiles for minutes, see docs/performance.md). --compile alone: inductor")
    up.add_argument("--overwrite", action="store_true", help="redo images whose output already exists")

    conv = sub.add_parser("convert", help="pack an AddSR release folder into one file or unpack it; "
                          "or copy a .pth/.ckpt to .safetensors")
    conv_sub = conv.add_subparsers(dest="action", required=True)
    pack = conv_sub.add_parser("pack")
    pack.add_argument("folder", type=Path)
    pack.add_argument("output", type=Path)
    pack.add_argument("--dtype", default="fp16", choices=["fp32", "fp16", "bf16"])
    pack.add_argument("--include-vae", action="store_true", help="also pack a vae/ subfolder")
    pack.add_argument("--family", default="auto", choices=["auto", "addsr", "seesr"],
                      help="record which sampler the weights are for (the releases look alike); auto: seesr when "
                           "the folder's name contains 'seesr', else nothing recorded (the loader goes by file name)")
    unpack = conv_sub.add_parser("unpack")
    unpack.add_argument("packed", type=Path)
    unpack.add_argument("output", type=Path)
    about = "a .safetensors copy of a .pth/.ckpt (RAM, DAPE, StableSR, CFW): tensors only, read without running the pickle"
    copy = conv_sub.add_parser("safetensors", help=about, description=about)
    copy.add_argument("input", type=Path, help="e.g. ram_swin_large_14m.pth, DAPE.pth, stablesr_turbo.ckpt, vqgan_cfw_00011.ckpt")
    copy.add_argument("output", type=Path, nargs="?", help="default: beside the input, same name, .safetensors")

    tag = sub.add_parser("tag", help="write RAM tags (<stem>.txt) for an image or a folder, e.g. for training prompts")
    tag.add_argument("input", type=Path, help="an image file or a folder of images")
    tag.add_argument("-o", "--output", type=Path, required=True, help="folder for the <stem>.txt tag files")
    tag.add_argument("--ram", type=Path, required=True, help="ram_swin_large_14m.pth")
    tag.add_argument("--dape", type=Path, help="DAPE.pth (LoRA merged into RAM, as AddSR uses it)")
    tag.add_argument("--tag-list", type=Path, required=True, help="ram_tag_list.txt (thresholds file beside it is used)")
    tag.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    tag.add_argument("--dtype", default="auto", choices=DTYPES)
    tag.add_argument("--overwrite", action="store_true", help="redo images whose tag file already exists")

    sub.add_parser("selfcheck", help="check the install by running the whole pipeline on a tiny random model")
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "upscale":
        from .cli_upscale import check_method_args

        problem = check_method_args(args)
        if problem:
            parser.error(problem)
    try:
        if args.command == "convert":
            return _convert(args)
        if args.command == "selfcheck":
            from .selfcheck import run_selfcheck

            return run_selfcheck()
        if args.command == "tag":
            from .cli_tag import run_tag

            return run_tag(args)
        from .cli_upscale import run_upscale

        return run_upscale(args)
    except CLIError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished images are kept; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as err:
        from .loading import CheckpointError

        if isinstance(err, (CheckpointError, FileNotFoundError, ValueError)):
            print(f"error: {err}", file=sys.stderr)
            return 2
        raise


def _convert(args) -> int:
    from .loading.pack import pack_release, unpack_release
    from .loading.to_safetensors import write_safetensors_copy

    if args.action == "pack":
        family = _pack_family(args.family, args.folder)
        out = pack_release(args.folder, args.output, dtype=args.dtype, include_vae=args.include_vae, family=family)
        print(f"family: {family} (recorded in the file)" if family else
              "family: not recorded (AddSR unless the file name contains 'seesr'; --family seesr records it)")
    elif args.action == "safetensors":
        out = write_safetensors_copy(args.input, args.output)
    else:
        out = unpack_release(args.packed, args.output)
    print(f"wrote {out}")
    return 0


def _pack_family(choice: str, folder: Path) -> str | None:
    """The family to record: the choice, or for auto the loader's name rule, but only when it is sure
    (recording "addsr" for an unrecognised folder would override a telling output name later)."""
    from .loading.family import resolve_family

    if choice != "auto":
        return choice
    family, why = resolve_family(folder.resolve())
    return family if why == "name" else None
