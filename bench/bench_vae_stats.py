"""How large the tiled VAE's statistics pass must be: its error and its cost, per precision.

    python bench/bench_vae_stats.py                  # 1024 px photo, 512 px tiles (3 x 3, as 2048 px in 1024 px tiles)
    python bench/bench_vae_stats.py --side 768 --tile 384 --fractions 4 16 64

A tiled decode or encode estimates the whole image's GroupNorm statistics (and distant attention
keys) on a shrunk copy (``addsr_core.imaging.tiled_vae``); this measures that estimate. One photo
(skimage's astronaut at ``--side``) through the full-size VAE with random weights: the float32 whole
(untiled) encode and decode are the reference; then, in float32 and in the device's low precision,
the whole run (the rounding alone) and the tiled run with the statistics pass on 1/4, 1/16, ... of
the image's area (``stats_px``). Prints each run's error against the reference, relative to the
reference's spread (its standard deviation: the random decoder's image is nearly flat, so relative
to its norm would say little), its max |diff| and its time. Not a test.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def photo(side: int) -> torch.Tensor:
    from skimage import data

    hr = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255
    return torch.nn.functional.interpolate(hr, size=(side, side), mode="bicubic", antialias=True).clamp(0, 1) * 2 - 1


def error(x: torch.Tensor, ref: torch.Tensor) -> dict:
    diff = x.float() - ref
    return {"rel_to_spread_pct": round(100 * float(diff.norm() / (ref - ref.mean()).norm()), 4),
            "max_abs": round(float(diff.abs().max()), 5)}


def timed(fn):
    start = time.perf_counter()
    with torch.no_grad():
        out = fn()
    return out, round(time.perf_counter() - start, 1)


def main() -> None:
    from bench_pipeline import SD2_VAE, random_full_size

    from addsr_core.imaging.tiled_vae import tiled_decode, tiled_encode
    from addsr_core.models.vae import AutoencoderKL
    from addsr_core.precision import apply_precision, resolve_precision

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=1024, help="the photo's side (px)")
    parser.add_argument("--tile", type=int, default=512, help="the VAE tile (px), overlap 64 as the pipeline")
    parser.add_argument("--fractions", type=int, nargs="+", default=[4, 16], help="statistics pass: 1/N of the area")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "auto"])
    args = parser.parse_args()

    vae = random_full_size(AutoencoderKL, SD2_VAE, torch.Generator().manual_seed(0)).eval()
    image = photo(args.side)
    ref_moments, enc_s = timed(lambda: vae.encode_moments(image))
    latent = ref_moments[:, :4].clone()
    ref_image, dec_s = timed(lambda: vae.decode(latent))
    ref_moments, ref_image = ref_moments.float(), ref_image.float()
    print(json.dumps({"reference": "fp32 whole", "side": args.side, "encode_s": enc_s, "decode_s": dec_s}), flush=True)

    for choice in dict.fromkeys(args.dtypes):
        precision = resolve_precision(choice, torch.device("cpu"))
        net = vae if precision.dtype == torch.float32 and not precision.nhwc(vae) else \
            apply_precision(random_full_size(AutoencoderKL, SD2_VAE, torch.Generator().manual_seed(0)).eval(), precision)
        x, z = image.to(precision.dtype), latent.to(precision.dtype)
        runs = [("whole", None)] + [(f"1/{n}", int(args.side / math.sqrt(n))) for n in args.fractions]
        for label, stats_px in runs:
            tile = args.side if stats_px is None else args.tile
            moments, e_s = timed(lambda: tiled_encode(net, x, tile, 64, stats_px=stats_px))
            decoded, d_s = timed(lambda: tiled_decode(net, z, tile, 64, stats_px=stats_px, out_dtype=torch.float32))
            print(json.dumps({"precision": precision.name, "run": label, "stats_px": stats_px,
                              "encode": {**error(moments[:, :4], ref_moments[:, :4]), "s": e_s},
                              "decode": {**error(decoded, ref_image), "s": d_s}}), flush=True)


if __name__ == "__main__":
    main()
