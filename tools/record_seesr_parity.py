"""Record what the official SeeSR sampling loop does, on tiny seeded weights, as test fixtures.

    python tools/record_seesr_parity.py --seesr /path/to/SeeSR [--out tests/fixtures/seesr_small]

``--seesr`` (or ``SEESR_PATH``) is an extracted checkout of github:cswry/SeeSR; its
``pipelines/pipeline_seesr.py``, ``models/`` and ``utils/`` are imported from there at run time
and nothing of it is copied here. Run it with the versions SeeSR pins (diffusers 0.21.0,
transformers 4.25.0) in a throwaway environment, e.g.::

    python -m venv --system-site-packages /tmp/seesr_venv
    /tmp/seesr_venv/bin/pip install diffusers==0.21.0 transformers==4.25.0 huggingface_hub==0.17.3 einops tqdm
    /tmp/seesr_venv/bin/python tools/record_seesr_parity.py --seesr /tmp/SeeSR

The weights are :mod:`addsr_core.addsr.tiny`'s seeded tiny UNet/ControlNet/VAE written in the release
layout, loaded by the official classes; the test rebuilds them from the same seeds and checks a
fingerprint. Each case calls the official pipeline as ``test_seesr.py`` does (PIL image,
``args`` given so the latent tiles engage) with ``prompt_embeds``/``negative_prompt_embeds`` and
``ram_encoder_hidden_states`` given as tensors, records every random draw, the guided noise
prediction and latent at each step, and the decoded output.

Run-time patches (behaviour unchanged): a stub ``torchvision`` module when none is installed
(the pipeline imports ``save_image`` and never calls it); ``randn_tensor`` in the pipeline, VAE
and scheduler modules and ``scheduler.step`` / ``vae.encode`` are wrapped to record their inputs
and outputs.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import types
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

WEIGHT_SEED = 20240
INPUT_SEED = 777
IMAGE_HW = (128, 160)  # latent 16x20
TOKENS = 145
SD2_SCHEDULER = {  # stabilityai/stable-diffusion-2-base/scheduler/scheduler_config.json
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "epsilon",
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
}
SD_TURBO_SCHEDULER = {  # stabilityai/sd-turbo/scheduler/scheduler_config.json (what SeeSR-Turbo reads)
    "_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "clip_sample": False, "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
    "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "timestep_spacing": "trailing", "trained_betas": None, "use_karras_sigmas": False,
}
IMAGE_CASES = ("default",)  # the decode is the same code in every case; one image keeps the fixture small
NOISE_PRED_STRIDE = 5  # guided noise predictions kept every 5th step (and the last); latents at every step
# name -> pipeline call (test_seesr.py's defaults, then variations). "scheduler" picks the config.
CASES = {
    "default": dict(seed=1234, num_inference_steps=50, guidance_scale=5.5, conditioning_scale=1.0, start_point="lr",
                    latent_tiled_size=96, latent_tiled_overlap=4, scheduler="sd2"),
    "tiled": dict(seed=99, num_inference_steps=4, guidance_scale=5.5, conditioning_scale=1.0, start_point="lr",
                  latent_tiled_size=12, latent_tiled_overlap=4, scheduler="sd2"),
    "no_cfg_start600": dict(seed=7, num_inference_steps=10, guidance_scale=1.0, conditioning_scale=0.7, start_point="lr",
                            start_steps=600, latent_tiled_size=96, latent_tiled_overlap=4, scheduler="sd2"),
    "noise_start": dict(seed=5, num_inference_steps=5, guidance_scale=5.5, conditioning_scale=1.0, start_point="noise",
                        latent_tiled_size=96, latent_tiled_overlap=4, scheduler="sd2"),
    "turbo": dict(seed=3, num_inference_steps=2, guidance_scale=1.0, conditioning_scale=1.0, start_point="lr",
                  latent_tiled_size=96, latent_tiled_overlap=32, scheduler="sd_turbo"),
}


def import_official(seesr: Path):
    sys.path.insert(0, str(seesr))
    try:
        import torchvision  # noqa: F401
        patched = []
    except ImportError:  # the pipeline imports torchvision.utils.save_image and never calls it
        tv, tvu = types.ModuleType("torchvision"), types.ModuleType("torchvision.utils")
        tvu.save_image = None
        tv.utils = tvu
        sys.modules.update({"torchvision": tv, "torchvision.utils": tvu})
        patched = ["stub torchvision module (save_image is imported, never called)"]
    import diffusers
    import transformers
    from pipelines import pipeline_seesr
    from models.controlnet import ControlNetModel
    from models.unet_2d_condition import UNet2DConditionModel

    env = {"diffusers": diffusers.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
           "numpy": np.__version__}
    return pipeline_seesr, UNet2DConditionModel, ControlNetModel, env, patched


def write_weights(root: Path) -> dict:
    from addsr_core.addsr.tiny import write_tiny_addsr, write_tiny_sd2

    write_tiny_addsr(root / "seesr", WEIGHT_SEED)
    write_tiny_sd2(root / "sd2", WEIGHT_SEED + 1)
    # Our config leaves the block types implicit; diffusers' defaults would build a 1-level VAE.
    vae_config = json.loads((root / "sd2" / "vae" / "config.json").read_text())
    levels = len(vae_config["block_out_channels"])
    vae_config.update(down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels)
    (root / "sd2" / "vae" / "config.json").write_text(json.dumps(vae_config))
    for name, config in (("sd2", SD2_SCHEDULER), ("sd_turbo", SD_TURBO_SCHEDULER)):
        (root / name / "scheduler").mkdir(parents=True, exist_ok=True)
        (root / name / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    return {"seesr": root / "seesr", "sd2": root / "sd2", "sd_turbo": root / "sd_turbo"}


def fingerprint(module: torch.nn.Module) -> dict:
    """Enough of a state dict to tell whether the test rebuilt the same weights."""
    sd = module.state_dict()
    flat = torch.cat([v.detach().double().flatten() for _, v in sorted(sd.items())])
    return {"tensors": len(sd), "numel": int(flat.numel()), "sum": float(flat.sum()), "abs_sum": float(flat.abs().sum())}


def make_inputs() -> dict:
    g = torch.Generator().manual_seed(INPUT_SEED)
    h, w = IMAGE_HW
    return {
        "cond_image_uint8": (torch.rand(h, w, 3, generator=g) * 255).round().to(torch.uint8),
        "ram_encoder_hidden_states": torch.randn(1, TOKENS, 512, generator=g),
        "prompt_embeds": torch.randn(1, 77, 32, generator=g),
        "negative_prompt_embeds": torch.randn(1, 77, 32, generator=g),
    }


class Recorder:
    """Wraps the official random draws and the scheduler step; records, never changes, values."""

    def __init__(self, pipeline_module, pipe):
        import diffusers.models.vae as vae_module
        import diffusers.schedulers.scheduling_ddpm as ddpm_module

        self.draws, self.steps, self.moments = [], [], []
        for site, module in (("pipeline", pipeline_module), ("vae", vae_module), ("scheduler", ddpm_module)):
            original = module.randn_tensor
            module.randn_tensor = self._recording(site, original)
        step = pipe.scheduler.step

        @functools.wraps(step)  # the pipeline inspects step's signature for ``generator``
        def recorded_step(model_output, timestep, sample, *args, **kwargs):
            out = step(model_output, timestep, sample, *args, **kwargs)
            self.steps.append({"t": int(timestep), "noise_pred": model_output.clone(), "latent_in": sample.clone(),
                               "latent": out[0].clone()})
            return out

        pipe.scheduler.step = recorded_step
        encode = pipe.vae.encode

        def recorded_encode(x, *args, **kwargs):
            out = encode(x, *args, **kwargs)
            self.moments.append(out.latent_dist.parameters.clone())
            return out

        pipe.vae.encode = recorded_encode

    def _recording(self, site, original):
        def randn_tensor(*args, **kwargs):
            out = original(*args, **kwargs)
            self.draws.append((site, out.clone()))
            return out

        return randn_tensor

    def reset(self):
        self.draws.clear(), self.steps.clear(), self.moments.clear()


def build_pipeline(official, paths: dict, scheduler: str):
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    pipeline_module, UNet, ControlNet, _, _ = official
    unet = UNet.from_pretrained(str(paths["seesr"]), subfolder="unet")
    controlnet = ControlNet.from_pretrained(str(paths["seesr"]), subfolder="controlnet")
    vae = AutoencoderKL.from_pretrained(str(paths["sd2"]), subfolder="vae")
    sched = DDPMScheduler.from_pretrained(str(paths[scheduler]), subfolder="scheduler")
    # Only its dtype is read: the prompts come in as embeddings.
    text = CLIPTextModel(CLIPTextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, projection_dim=32))
    for m in (unet, controlnet, vae, text):
        m.requires_grad_(False).eval()
    pipe = pipeline_module.StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=text, tokenizer=None, feature_extractor=None, unet=unet, controlnet=controlnet,
        scheduler=sched, safety_checker=None, requires_safety_checker=False,
    )
    pipe._init_tiled_vae(encoder_tile_size=1024, decoder_tile_size=224)  # test_seesr.py's defaults
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_case(pipe, recorder, inputs, call: dict):
    from PIL import Image

    call = dict(call)
    seed = call.pop("seed")
    call.pop("scheduler")
    recorder.reset()
    image = Image.fromarray(inputs["cond_image_uint8"].numpy())
    h, w = IMAGE_HW
    generator = torch.Generator("cpu").manual_seed(seed)
    torch.manual_seed(seed)  # test_seesr.py: set_seed(args.seed) seeds the global RNG with the same seed
    args = SimpleNamespace(**{k: call[k] for k in ("latent_tiled_size", "latent_tiled_overlap")})
    with torch.no_grad():
        out = pipe(
            None, image, height=h, width=w, generator=generator, negative_prompt=None,
            prompt_embeds=inputs["prompt_embeds"], negative_prompt_embeds=inputs["negative_prompt_embeds"],
            ram_encoder_hidden_states=inputs["ram_encoder_hidden_states"], output_type="pt", args=args, **call,
        )
    return out.images


def collect(recorder, image, keep_image: bool) -> tuple[dict, dict, list]:
    """(draws, expected, draw names in order) with our sampler's draw names."""
    draws, names, step_ts = {}, [], [s["t"] for s in recorder.steps]
    scheduler_draws = iter(step_ts)
    for site, tensor in recorder.draws:
        if site == "pipeline":
            name = "initial_latents"
        elif site == "vae":
            name = "posterior_eps"
        else:
            name = f"step_noise_t{next(scheduler_draws)}"
        draws[name] = tensor
        names.append(name)
    expected = {"z0": recorder.steps[-1]["latent"], "start_latent": recorder.steps[0]["latent_in"]}
    if keep_image:
        expected["image"] = image
    if recorder.moments:
        expected["moments"] = recorder.moments[0]
    for i, s in enumerate(recorder.steps):
        if i % NOISE_PRED_STRIDE == 0 or i == len(recorder.steps) - 1:
            expected[f"t{s['t']}.noise_pred"] = s["noise_pred"]
        expected[f"t{s['t']}.latent"] = s["latent"]
    return draws, expected, names


def main(argv=None) -> int:
    from safetensors.torch import save_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seesr", type=Path, default=os.environ.get("SEESR_PATH"), help="extracted SeeSR checkout")
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "seesr_small")
    args = parser.parse_args(argv)
    if args.seesr is None or not (args.seesr / "pipelines" / "pipeline_seesr.py").is_file():
        parser.error("--seesr (or SEESR_PATH) must point at a SeeSR checkout with pipelines/pipeline_seesr.py")
    official = import_official(args.seesr.resolve())
    inputs = make_inputs()
    tensors = {f"inputs.{k}": v for k, v in inputs.items()}
    report = {
        "source": "github:cswry/SeeSR pipelines/pipeline_seesr.py (StableDiffusionControlNetPipeline.__call__), "
                  "models/unet_2d_condition.py, models/controlnet.py, utils/vaehook.py",
        "environment": official[3], "run_time_patches": official[4],
        "weights": {"builder": "addsr_core.addsr.tiny.write_tiny_addsr(root, seed) -> unet/, controlnet/; "
                               "write_tiny_sd2(root, seed + 1) -> vae/", "seed": WEIGHT_SEED},
        "inputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in inputs.items()},
        "inputs_note": f"random, torch.Generator().manual_seed({INPUT_SEED}) in this order; the image is the "
                       "prepared (already 4x-upscaled) PIL input, HWC uint8",
        "schedulers": {"sd2": SD2_SCHEDULER, "sd_turbo": SD_TURBO_SCHEDULER},
        "tolerance": "max|ours - expected| <= 1e-4 * max(1, max|expected|), fp32 CPU",
        "cases": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_weights(Path(tmp))
        pipes = {name: build_pipeline(official, paths, name) for name in ("sd2", "sd_turbo")}
        report["weights"]["fingerprint"] = {"unet": fingerprint(pipes["sd2"].unet),
                                            "controlnet": fingerprint(pipes["sd2"].controlnet),
                                            "vae": fingerprint(pipes["sd2"].vae)}
        recorders = {name: Recorder(official[0], pipe) for name, pipe in pipes.items()}
        for name, call in CASES.items():
            pipe, recorder = pipes[call["scheduler"]], recorders[call["scheduler"]]
            image = run_case(pipe, recorder, inputs, call)
            draws, expected, order = collect(recorder, image, name in IMAGE_CASES)
            rerun = run_case(pipe, recorder, inputs, call)
            z0_rerun = recorder.steps[-1]["latent"]
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            single = run_case(pipe, recorder, inputs, call)
            z0_single = recorder.steps[-1]["latent"]
            torch.set_num_threads(threads)
            tensors.update({f"{name}.rng.{k}": v for k, v in draws.items()})
            tensors.update({f"{name}.expected.{k}": v for k, v in expected.items()})
            report["cases"][name] = {
                "call": {k: v for k, v in call.items()},
                "call_note": "pipeline(None, image, height, width, generator=torch.Generator('cpu').manual_seed(seed), "
                             "prompt_embeds, negative_prompt_embeds, ram_encoder_hidden_states, output_type='pt', "
                             "args=Namespace(latent_tiled_size, latent_tiled_overlap), **call); torch.manual_seed(seed) "
                             "just before",
                "timesteps_run": [s["t"] for s in recorder.steps],
                "draw_order": order,
                "draw_sources": {k: ("global RNG" if k == "posterior_eps" else "generator") for k in order},
                "shapes": {k: list(v.shape) for k, v in {**draws, **expected}.items()},
                "observed": {"rerun_max_abs_diff": {"image": float((rerun - image).abs().max()),
                                                     "z0": float((z0_rerun - expected["z0"]).abs().max())},
                             "threads1_vs_default": {"image": float((single - image).abs().max()),
                                                     "z0": float((z0_single - expected["z0"]).abs().max())},
                             "max_abs": {"z0": float(expected["z0"].abs().max()),
                                         "noise_pred": max(float(v.abs().max()) for k, v in expected.items()
                                                           if k.endswith("noise_pred"))}},
            }
            print(f"{name}: {len(recorder.steps)} steps, z0 max {report['cases'][name]['observed']['max_abs']['z0']:.3g}")
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, str(args.out / "cases.safetensors"))
    (args.out / "case.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out} ({sum(p.stat().st_size for p in args.out.iterdir()) / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
