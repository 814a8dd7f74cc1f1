"""What one tile costs in GPU memory, per network and tile size, on fake CUDA (tools/fake_cuda.py).

    python tools/gpu_tile_costs.py                         # bf16, fp16 and fp32; tiles 512-2048 px
    python tools/gpu_tile_costs.py --dtypes bf16 --tiles 512 1024

For each tile of ``t`` output pixels, the bytes one call adds above what was live before it (its
activations and output, the full-size networks' weights already resident):

- ``denoise``: one ControlNet + UNet call (AddSR's denoiser) on a t x t tile, batch 1 (SeeSR's CFG
  runs batch 2: twice this);
- ``vae_decode``: the VAE decoder on a t x t tile (a tile of the tiled decode runs its core at full
  resolution; the statistics pass is at most one tile);
- ``vae_encode``: the VAE encoder on a t x t input (a tile of the tiled encode runs its core plus
  the encoder's halo on each side).

The per-pixel figures (bytes / t²) are what ``addsr_core/memory.py`` uses to pick GPU tiles. One JSON
line per (dtype, network, tile), then a summary line per dtype.
"""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import fake_cuda as fc  # noqa: E402
from gpu_dryrun import addsr_models  # noqa: E402



def run(dtype_name: str, tiles, gpu) -> dict:
    from addsr_core.precision import resolve_precision
    from addsr_core.sampling.denoisers import ControlNetDenoiser

    results = {}
    with ExitStack() as stack:
        memory = stack.enter_context(fc.fake_device("cuda", gpu)).memory
        device = torch.device("cuda")
        precision = resolve_precision(dtype_name, device)
        models = addsr_models(precision, device)
        dtype = precision.dtype
        denoise = ControlNetDenoiser(models.unet, models.controlnet)
        embeds = torch.zeros(1, 77, 1024, device=device)
        tokens = torch.zeros(1, 145, 512, device=device)
        t = torch.full((1,), 999, device=device, dtype=torch.long)
        for tile in tiles:
            def denoise_call(tile=tile):
                z = torch.zeros(1, 4, tile // 8, tile // 8, device=device)
                control = torch.zeros(1, 3, tile, tile, device=device, dtype=torch.uint8)
                with torch.no_grad():
                    return denoise(z, t, control, tokens, embeds)

            def decode_call(tile=tile):
                latent = torch.zeros(1, 4, tile // 8, tile // 8, device=device, dtype=dtype)
                with torch.no_grad():
                    return models.vae.decode(latent)

            def encode_call(tile=tile):
                image = torch.zeros(1, 3, tile, tile, device=device, dtype=dtype)
                with torch.no_grad():
                    return models.vae.encode_moments(image)

            for name, fn in (("denoise", denoise_call), ("vae_decode", decode_call), ("vae_encode", encode_call)):
                stage = f"{name}@{tile}"
                with memory.stage(stage, dtype=dtype) as stats:
                    out = fn()
                    del out
                working = stats.working
                results[(name, tile)] = working
                print(json.dumps({"dtype": dtype_name, "network": name, "tile_px": tile, "working_gib": round(fc.gib(working), 3),
                                  "bytes_per_px": round(working / tile**2, 1)}), flush=True)
        if memory.violations:
            raise SystemExit("\n".join(map(str, memory.violations)))
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp16", "fp32"])
    parser.add_argument("--tiles", nargs="+", type=int, default=[512, 768, 1024, 1536, 2048])
    parser.add_argument("--gpu", choices=sorted(fc.GPUS), default="ampere")
    args = parser.parse_args(argv)
    for dtype_name in args.dtypes:
        results = run(dtype_name, args.tiles, fc.GPUS[args.gpu])
        summary = {name: max(v / tile**2 for (n, tile), v in results.items() if n == name)
                   for name in ("denoise", "vae_decode", "vae_encode")}
        print(json.dumps({"dtype": dtype_name, "max_bytes_per_px": {k: round(v, 1) for k, v in summary.items()}}), flush=True)


if __name__ == "__main__":
    main()
