"""``python -m addsr_core`` / ``addsr``: upscale or tag files or folders, convert checkpoints, self-check."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import AddSRError
from .imaging.colorfix import COLOR_FIXES
from .pipeline import DEFAULT_LATENT_OVERLAP_PX, DEFAULT_LATENT_TILE_PX, DEFAULT_VAE_TILE_PX
from .text.prompt import DEFAULT_NEGATIVE_PROMPT

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
DTYPES = ("auto", "fp32", "fp16", "bf16")


class CLIError(AddSRError):
    """A user-facing problem: printed without a traceback, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="addsr", description="AddSR diffusion super-resolution")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("upscale", help="upscale an image or a folder of images")
    up.add_argument("input", type=Path, help="an image file or a folder of images")
    up.add_argument("-o", "--output", type=Path, required=True, help="output file (for one image) or folder")
    up.add_argument("--addsr", type=Path, required=True,
                    help="AddSR (or, with --method seesr, SeeSR) release folder (unet/, controlnet/) or packed file")
    up.add_argument("--sd2", type=Path, required=True, help="SD2 base: diffusers folder (vae/, text_encoder/, tokenizer/) or single-file checkpoint")
    up.add_argument("--ram", type=Path, required=True, help="ram_swin_large_14m.pth")
    up.add_argument("--dape", type=Path, help="DAPE.pth (LoRA merged into RAM)")
    up.add_argument("--tag-list", type=Path, help="ram_tag_list.txt, to use RAM tags in the prompt")
    up.add_argument("--tokenizer", type=Path, help="CLIP tokenizer folder or bpe_simple_vocab_16e6.txt.gz (if not inside --sd2)")
    up.add_argument("--scale", type=int, default=4)
    up.add_argument("--method", default="addsr", choices=["addsr", "seesr"],
                    help="addsr: 1-4 refining steps (default); seesr: SeeSR's 50-step DDPM with CFG 5.5")
    up.add_argument("--steps", type=int, help="AddSR: 1-4 (default 4); SeeSR: DDPM steps (default 50)")
    up.add_argument("--psr-weight", type=float, default=0.4, help="AddSR only")
    up.add_argument("--cfg", type=float, help="guidance scale; > 1 enables CFG with --negative (AddSR 0, SeeSR 5.5)")
    up.add_argument("--start-point", default="lr", choices=["lr", "noise"],
                    help="SeeSR only: start from the LR latent noised to t=999 (official) or from pure noise")
    up.add_argument("--prompt", default="")
    up.add_argument("--negative", default=DEFAULT_NEGATIVE_PROMPT)
    up.add_argument("--color-fix", default="adain", choices=COLOR_FIXES)
    up.add_argument("--rounding", default="float", choices=["float", "official"],
                    help="float: colour fix in float, round once (default); official: round the decode to 8 bits, "
                         "colour fix, truncate, as the official test_addsr.py (reproduces its PNG)")
    up.add_argument("--seed", type=int, default=0)
    up.add_argument("--tile", type=int,
                    help=f"diffusion tile size in output pixels (CPU: AddSR {DEFAULT_LATENT_TILE_PX}, SeeSR 768; GPU: "
                         "the largest that fits its free memory, at most those)")
    up.add_argument("--tile-overlap", type=int, help="diffusion tile overlap in output pixels "
                    f"(AddSR {DEFAULT_LATENT_OVERLAP_PX}, SeeSR 32; at most a third of the tile)")
    up.add_argument("--vae-tile", type=int, help=f"VAE tile size in pixels (CPU: {DEFAULT_VAE_TILE_PX}; GPU: the largest "
                                                  "that fits its free memory)")
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
    if args.command == "upscale" and args.method == "addsr" and args.steps not in (None, 1, 2, 3, 4):
        parser.error(f"AddSR samples with 1 to 4 steps, got --steps {args.steps} (--method seesr takes more)")
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
