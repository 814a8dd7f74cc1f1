"""How far a low precision lands from fp32, stage by stage, on the FULL-SIZE networks (not a test).

    python bench/bench_precision_accuracy.py                  # auto (the device policy) vs fp32
    python bench/bench_precision_accuracy.py --dtype bf16     # an explicit precision vs fp32
    python bench/bench_precision_accuracy.py --tiny           # smoke run: every network tiny

One LR photo (skimage's astronaut, 512 -> 128 px, 4x back to 512). The fp32 pipeline runs first and
its stage inputs are kept; each low-precision network then gets exactly those inputs, so every row is
that network's own error, not the drift of the stages before it:

- VAE encode: the posterior of the condition image; RAM: the LR tokens;
- ControlNet: its residuals; UNet: its eps, fed the fp32 ControlNet's residuals; both together: the
  denoiser's eps; all at the first step's inputs (t=999) and at the last one's;
- VAE decode: the decoder's raw output and the [0,1] image, of the fp32 final latent;
- the whole upscale at 4 and 1 steps, every stage in the low precision: the [0,1] output.

Each row prints the relative error ``||low - fp32|| / ||fp32||`` and, for images, max |diff| and PSNR.
Random weights (N(0, 0.02)): the arithmetic is the real one, the image is not.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_pipeline import build_models  # noqa: E402

from addsr_core.pipeline import AddSROptions, run_sampling  # noqa: E402
from addsr_core.precision import apply_precision, resolve_precision  # noqa: E402
from addsr_core.sampling.denoisers import ControlNetDenoiser  # noqa: E402
from addsr_core.stages import DEFAULT_VAE_TILE_PX, condition_from_lr, decode, finish, unscaled, vae_decode  # noqa: E402

LR_SIDE = 128


def relative_error(low: torch.Tensor, ref: torch.Tensor) -> float:
    low, ref = low.float(), ref.float()
    return float((low - ref).norm() / ref.norm().clamp_min(1e-12))


def image_error(low: torch.Tensor, ref: torch.Tensor) -> dict:
    """Images in [0, 1]: relative error, max |diff| and PSNR."""
    diff = low.float() - ref.float()
    mse = float((diff**2).mean())
    return {"rel": round(relative_error(low, ref), 5), "max_abs": round(float(diff.abs().max()), 4),
            "psnr_db": round(10 * torch.log10(torch.tensor(1 / max(mse, 1e-20))).item(), 2)}


def astronaut_lr(side: int = LR_SIDE) -> torch.Tensor:
    from skimage import data

    hr = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255
    return torch.nn.functional.interpolate(hr, size=(side, side), mode="bicubic", antialias=True).clamp(0, 1)


def recorded_denoiser_calls(models, cond, embeds, options) -> tuple:
    """The fp32 sampling, keeping each ControlNet+UNet call's inputs: (z0, [(z, t, control, tokens, embeds)])."""
    calls = []
    original = ControlNetDenoiser.__call__

    def record(self, *args):
        calls.append(tuple(a.clone() if torch.is_tensor(a) else a for a in args))
        return original(self, *args)

    with mock.patch.object(ControlNetDenoiser, "__call__", record):
        z0 = run_sampling(models, cond, embeds, None, options)
    return z0, calls


def network_errors(ref_models, low_models, call) -> dict:
    """The ControlNet, the UNet (given the fp32 residuals) and both together, at one call's inputs.

    The fp32 ``eps`` below is what the fp32 denoiser returns (its casts are no-ops in fp32), so only
    the low precision runs through :class:`ControlNetDenoiser` again."""
    z, t, control, tokens, embeds = call
    low = ControlNetDenoiser(low_models.unet, low_models.controlnet)
    dtype = low_models.unet.dtype
    cast = [x.to(dtype) for x in (z, control, tokens, embeds)]
    down, mid, _, _ = ref_models.controlnet(z, t, embeds, control, 1.0, image_encoder_hidden_states=tokens)
    low_down, low_mid, _, _ = low_models.controlnet(cast[0], t, cast[3], cast[1], 1.0, image_encoder_hidden_states=cast[2])
    residuals = torch.cat([r.flatten() for r in (*down, mid)])
    low_residuals = torch.cat([r.float().flatten() for r in (*low_down, low_mid)])
    eps = ref_models.unet(z, t, embeds, tokens, down, mid)
    low_eps = low_models.unet(cast[0], t, cast[3], cast[2], [d.to(dtype) for d in down], mid.to(dtype))
    return {"controlnet_rel": round(relative_error(low_residuals, residuals), 5),
            "unet_rel": round(relative_error(low_eps, eps), 5),
            "denoiser_rel": round(relative_error(low(*call), eps), 5)}


def measure(dtype: str, tiny: bool = False) -> dict:
    torch.manual_seed(0)
    ref_models = build_models(tiny=tiny)
    precision = resolve_precision(dtype, torch.device("cpu"))
    low_models = copy.deepcopy(ref_models)
    for network in (low_models.unet, low_models.controlnet, low_models.vae, low_models.ram):
        apply_precision(network, precision)
    lr = astronaut_lr()
    embeds = torch.randn(1, 77, 1024, generator=torch.Generator().manual_seed(2))
    options = AddSROptions(steps=4, use_tags=False)
    out = {"precision": precision.name, "lr": LR_SIDE, "output": LR_SIDE * 4}
    with torch.no_grad():
        cond = condition_from_lr(ref_models.vae, ref_models.ram, lr, options.condition)
        low_cond = condition_from_lr(low_models.vae, low_models.ram, lr, options.condition)
        out["vae_encode_rel"] = round(relative_error(low_cond.moments[:, :4], cond.moments[:, :4]), 5)
        out["ram_tokens_rel"] = round(relative_error(low_cond.lr_tokens, cond.lr_tokens), 5)
        z0, calls = recorded_denoiser_calls(ref_models, cond, embeds, options)
        out["first_step"] = network_errors(ref_models, low_models, calls[0])
        out["last_step"] = network_errors(ref_models, low_models, calls[-1])
        latent = unscaled(ref_models.vae, z0)
        raw = [vae_decode(m.vae, latent.to(m.unet.dtype), DEFAULT_VAE_TILE_PX, 0) for m in (ref_models, low_models)]
        out["vae_decode_rel"] = round(relative_error(raw[1], raw[0]), 5)  # the decoder's own [-1, 1] output
        out["vae_decode"] = image_error(decode(low_models.vae, latent), decode(ref_models.vae, latent))
        for steps in (4, 1):
            options = AddSROptions(steps=steps, use_tags=False)
            images = []
            for models, c in ((ref_models, cond), (low_models, low_cond)):
                z = run_sampling(models, c, embeds, None, options)
                images.append(finish(decode(models.vae, unscaled(models.vae, z)), c, options.finishing))
            out[f"upscale_{steps}step"] = image_error(images[1], images[0])
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", choices=("auto", "bf16", "fp16"), default="auto")
    parser.add_argument("--tiny", action="store_true", help="every network tiny (a smoke run: the numbers mean nothing)")
    args = parser.parse_args()
    print(json.dumps(measure(args.dtype, args.tiny)))


if __name__ == "__main__":
    main()
