"""Which tile sizes keep the cost per output pixel flat: the table the default tiles are chosen from.

    python bench/bench_tiles.py                 # full-size UNet+ControlNet and VAE, random weights, fp32
    python bench/bench_tiles.py --dtype auto    # the device's precision policy (bf16 + channels_last with AMX/AVX512-BF16)
    python bench/bench_tiles.py --quick         # fewer sizes (a few minutes)
    python bench/bench_tiles.py --plans         # fixed-stride vs balanced tiles for 2048-4096 px outputs

For each diffusion tile (output pixels) it times one ControlNet+UNet call on that tile and divides by
the NEW pixels a tile adds in a large image (its stride squared, with the overlap the library's one
rule gives: ``addsr_core.stages.tile_overlap_px``), so the numbers are seconds per output megapixel
per step. For each VAE tile it times one decode and one encode of an interior tile and reports seconds per output
megapixel (interior tile with its halo, and the same size whole). Not a test: timings are only compared within one run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import build_models_in  # noqa: E402

from addsr_core.stages import DEFAULT_LATENT_OVERLAP_PX, tile_overlap_px  # noqa: E402
from addsr_core.sampling.denoisers import ControlNetDenoiser  # noqa: E402

DIFFUSION_TILES = (256, 384, 512, 768, 1024)  # output pixels (latent tile x 8)
VAE_TILES = (256, 512, 768, 1024)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def diffusion_table(models, tiles, dtype, repeats: int) -> list[dict]:
    denoise = ControlNetDenoiser(models.unet, models.controlnet)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randn(1, 77, 1024, generator=g).to(dtype)
    tokens = torch.randn(1, 145, 512, generator=g).to(dtype)
    rows = []
    for tile in tiles:
        n = tile // 8
        z = torch.randn(1, 4, n, n, generator=g).to(dtype)
        control = torch.rand(1, 3, tile, tile, generator=g).to(dtype)
        t = torch.tensor([999])
        with torch.no_grad():
            denoise(z, t, control, tokens, prompt)  # warm-up (oneDNN primitives for this shape)
            seconds = best_of(lambda: denoise(z, t, control, tokens, prompt), repeats)
        overlap = tile_overlap_px(tile, DEFAULT_LATENT_OVERLAP_PX)
        stride = tile - overlap
        rows.append({"tile_px": tile, "overlap_px": overlap, "call_s": round(seconds, 2),
                     "s_per_tile_mp": round(seconds / (tile * tile / 1e6), 2),
                     "s_per_output_mp": round(seconds / (stride * stride / 1e6), 2)})
        print(json.dumps({"diffusion": rows[-1]}), flush=True)
    return rows


PLAN_SIDES = (2048, 3072, 4096)  # output sides whose tile layouts --plans compares (1024 px tiles)


def plans_table(models, dtype, repeats: int, tile: int = 1024) -> list[dict]:
    """Fixed-stride vs balanced tiles (addsr_core.stages.LatentTiling, rules "stride" and "balanced")
    for square outputs: calls, tile sizes, and the seconds per step from one measured call per
    distinct tile size."""
    from addsr_core.stages import LatentTiling

    overlap = tile_overlap_px(tile, DEFAULT_LATENT_OVERLAP_PX)
    measured = {}

    def call_s(tile_latent: int) -> float:
        if tile_latent not in measured:
            measured[tile_latent] = diffusion_table(models, (tile_latent * 8,), dtype, repeats)[0]["call_s"]
        return measured[tile_latent]

    rows = []
    for side in PLAN_SIDES:
        hw = (side // 8, side // 8)
        row = {"output_px": side}
        for name, rule in (("fixed", "stride"), ("balanced", "balanced")):
            tiling = LatentTiling(tile, overlap, rule=rule)
            (th, tw), _ = tiling.plan(hw)
            calls = tiling.calls_per_step(hw)
            seconds = calls * call_s(th)  # square outputs: th == tw
            row[name] = {"tile_px": th * 8, "calls": calls, "step_s": round(seconds, 1),
                         "s_per_output_mp": round(seconds / (side * side / 1e6), 1)}
        row["balanced_vs_fixed"] = round(row["balanced"]["step_s"] / row["fixed"]["step_s"], 3)
        rows.append(row)
        print(json.dumps({"plan": row}), flush=True)
    return rows


def vae_table(models, tiles, dtype, repeats: int) -> list[dict]:
    """One interior VAE tile per size: its core (``tile_px``) with the halo the tiled decode and
    encode give it on every side (``tiled_vae.decoder_receptive_px`` / ``encoder_receptive_px``),
    the decoder's also trimmed as ``tiled_decode`` runs it, and the same size run whole (an image
    that fits, untiled). Seconds per megapixel are per CORE pixel for a tile (what a large image
    pays), per pixel for the whole run."""
    from addsr_core.imaging.tiled_vae import Span, decoder_receptive_px, decoder_trim_margins, encoder_receptive_px
    from addsr_core.imaging.tiled_vae.codec import _KeptWindow

    vae, g = models.vae, torch.Generator().manual_seed(1)
    margins = decoder_trim_margins(vae)
    rows = []
    for tile in tiles:
        row = {"tile_px": tile}
        for name, halo in (("decode", decoder_receptive_px(vae)), ("encode", encoder_receptive_px(vae))):
            halo_lat = -(-halo // 8)
            side_lat = tile // 8 + 2 * halo_lat
            span = Span(halo_lat, halo_lat + tile // 8, 0, side_lat, 1, 1)  # an interior tile's core and context
            kinds = [("whole", tile // 8, None), ("tile", side_lat, None)]
            if name == "decode":
                kinds.append(("tile_trimmed", side_lat, span))
            for kind, n, trimmed in kinds:
                if name == "decode":
                    x = torch.randn(1, 4, n, n, generator=g).to(dtype)
                    trim = None if trimmed is None else (lambda: _KeptWindow(trimmed, trimmed, margins, 8).trim)
                    fn = lambda: vae.decoder(vae.post_quant_conv(x), trim=trim and trim())  # noqa: E731
                else:
                    x = (torch.rand(1, 3, n * 8, n * 8, generator=g) * 2 - 1).to(dtype)
                    fn = lambda: vae.encode_moments(x)  # noqa: E731
                with torch.no_grad():
                    seconds = best_of(fn, repeats)
                row[f"{name}_{kind}_s"] = round(seconds, 2)
                row[f"{name}_{kind}_s_per_mp"] = round(seconds / (tile * tile / 1e6), 1)
            row[f"{name}_context_px"] = side_lat * 8
        rows.append(row)
        print(json.dumps({"vae": row}), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=("fp32", "auto", "bf16"), default="fp32",
                        help="addsr_core.precision (channels_last with low precision only, as the policy does)")
    parser.add_argument("--quick", action="store_true", help="256/512/1024 diffusion tiles, 512/1024 VAE tiles")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tiles", type=int, nargs="+", help="diffusion tile sizes (output px) instead of the table's")
    parser.add_argument("--vae-tiles", type=int, nargs="+", help="VAE tile cores (output px) instead of the table's")
    parser.add_argument("--skip-vae", action="store_true")
    parser.add_argument("--plans", action="store_true",
                        help="only the fixed vs balanced tile layouts for 2048-4096 px outputs (1024 px tiles)")
    args = parser.parse_args()
    models, precision, _ = build_models_in(args.dtype)
    dtype = precision.dtype
    if args.plans:
        print(json.dumps({"precision": precision.name, "plans": plans_table(models, dtype, args.repeats)}, indent=1))
        return
    tiles = args.tiles or ((256, 512, 1024) if args.quick else DIFFUSION_TILES)
    result = {"precision": precision.name, "threads": torch.get_num_threads()}
    if args.tiles or not args.vae_tiles:  # --vae-tiles alone: only the VAE table
        result["diffusion"] = diffusion_table(models, tiles, dtype, args.repeats)
        base = min(r["s_per_output_mp"] for r in result["diffusion"])
        for row in result["diffusion"]:
            row["vs_best"] = round(row["s_per_output_mp"] / base, 2)
    if not args.skip_vae and (args.vae_tiles or not args.tiles):
        result["vae"] = vae_table(models, args.vae_tiles or ((512, 1024) if args.quick else VAE_TILES), dtype, args.repeats)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
