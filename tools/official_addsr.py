"""Drive the official AddSR code (NJU-PCALab/AddSR) at run time, for benchmarks only.

Nothing of the official tree is copied here: ``ADDSR_OFFICIAL_SRC`` names an extracted
checkout, and its modules are imported from there (the pipeline after the run-time patches listed
in :func:`import_pipeline`). It needs the environment the official code pins, e.g.::

    python3 -m venv /work/venvs/official
    /work/venvs/official/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/venvs/official/bin/pip install diffusers==0.25.0 transformers==4.37.2 "accelerate<0.27" \\
        "huggingface_hub<0.26" safetensors einops numpy pillow tqdm
    export ADDSR_OFFICIAL_SRC=/work/venvs/AddSR-src   # git archive of github:NJU-PCALab/AddSR

Our library runs in that interpreter too (it needs only torch, safetensors, einops, numpy and
pillow), so a per-call comparison uses one torch for both.
"""
from __future__ import annotations

import os
import tempfile
import sys
import types
from pathlib import Path

import torch

# The SD2-base UNet config the AddSR release ships (unet/config.json and controlnet/config.json,
# less the fields the official classes take as defaults).
SD2_UNET_DIFFUSERS = {
    "act_fn": "silu", "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "use_linear_projection": True,
    "use_image_cross_attention": True,
}
UNET_ONLY = {
    "center_input_sample": False, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
CONTROLNET_ONLY = {"conditioning_embedding_out_channels": [16, 32, 96, 256], "controlnet_conditioning_channel_order": "rgb"}


class OfficialSourceMissing(RuntimeError):
    pass


def official_src() -> Path:
    src = os.environ.get("ADDSR_OFFICIAL_SRC")
    if not src or not (Path(src) / "pipelines" / "pipeline_addsr.py").is_file():
        raise OfficialSourceMissing(
            "set ADDSR_OFFICIAL_SRC to an extracted NJU-PCALab/AddSR checkout (with pipelines/pipeline_addsr.py)"
        )
    return Path(src)


def _on_path() -> Path:
    src = official_src()
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    return src


def import_networks():
    """(official UNet2DConditionModel, official ControlNetModel) classes."""
    _on_path()
    from models.controlnet import ControlNetModel
    from models.unet_2d_condition import UNet2DConditionModel

    return UNet2DConditionModel, ControlNetModel


def official_twin(ours: torch.nn.Module, kind: str) -> torch.nn.Module:
    """The official network of ``kind`` ('unet' / 'controlnet') sharing ``ours``' parameter tensors
    (built on meta, then assigned: no second copy of the weights, the same values and layout)."""
    unet_cls, controlnet_cls = import_networks()
    cls, extra = (unet_cls, UNET_ONLY) if kind == "unet" else (controlnet_cls, CONTROLNET_ONLY)
    with torch.device("meta"):
        twin = cls(**SD2_UNET_DIFFUSERS, **extra)
    twin.load_state_dict(ours.state_dict(), strict=True, assign=True)
    return twin.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# The whole upscale through the official pipeline (test_addsr.py's steps, fp32 on the CPU).

SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 clip_sample=False, prediction_type="epsilon", steps_offset=1)  # SD2-base's scheduler config
PIPELINE_PATCHES = (
    # The module-level RAM is built from placeholder paths with .cuda(): a stub replaces the class
    # (see import_pipeline) and the module's RAM is set to ours after import.
    ("ram_image = ram_values.cuda().to(torch.float16)", "ram_image = ram_values"),  # RAM stays fp32 on the CPU
    ("device='cuda'", "device='cpu'"),  # the hard-coded timestep tensors
)
ONE_STEP_PATCH = ("if t == 249:", "if t == 999:")  # the maintainers' recipe for 1 step


class _Unbuilt:
    """Stands in for the module-level RAM the official pipeline builds at import."""

    def eval(self):
        return self

    def requires_grad_(self, *args):
        return self

    def to(self, *args, **kwargs):
        return self

    def cuda(self):
        return self


def import_pipeline(one_step: bool = False):
    """The official pipeline module, its source patched at run time as PIPELINE_PATCHES says.

    The official scheduler (utils/scheduling_ddpm.py, diffusers' file plus ``get_z0``) is loaded
    as a diffusers submodule, as the maintainers tell users to install it."""
    src = _on_path()
    import importlib.util as iu

    name = "diffusers.schedulers.scheduling_ddpm_addsr"
    if name not in sys.modules:
        spec = iu.spec_from_file_location(name, src / "utils" / "scheduling_ddpm.py")
        module = iu.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    ram_pkg, ram_models, ram_lora = (types.ModuleType(n) for n in ("ram", "ram.models", "ram.models.ram_lora"))
    ram_pkg.__path__, ram_models.__path__ = [], []
    ram_pkg.get_transform = lambda *a, **k: None
    ram_lora.ram = lambda *a, **k: _Unbuilt()
    sys.modules.update({"ram": ram_pkg, "ram.models": ram_models, "ram.models.ram_lora": ram_lora})
    path = src / "pipelines" / "pipeline_addsr.py"
    text = path.read_text()
    for old, new in PIPELINE_PATCHES + ((ONE_STEP_PATCH,) if one_step else ()):
        if old not in text:
            raise RuntimeError(f"{path}: expected {old!r} (another official version?)")
        text = text.replace(old, new)
    # The patched source goes to a file of its own and is imported from there (no exec of a string).
    patched = Path(tempfile.mkdtemp(prefix="addsr-official-")) / "pipeline_addsr.py"
    patched.write_text(text)
    spec = iu.spec_from_file_location("pipelines.pipeline_addsr", patched)
    pipeline = iu.module_from_spec(spec)
    spec.loader.exec_module(pipeline)
    return pipeline, sys.modules[name]


class _NoTextEncoder(torch.nn.Module):
    """The pipeline reads only the text encoder's dtype (and, as any module of the pipeline, its device)
    when it is given ``prompt_embeds``."""

    def __init__(self):
        super().__init__()
        self.register_buffer("anchor", torch.zeros(1))

    @property
    def dtype(self):
        return torch.float32

    @property
    def device(self):
        # diffusers' pipeline.device asks the first of its modules (a set: the order follows the
        # string hash seed); a module without .device there raised AttributeError inside the
        # _execution_device property, reported as "no attribute '_execution_device'" in some runs
        return self.anchor.device


class _RAMAdapter:
    """The official ``RAM.generate_image_embeds`` (normalised 384² image -> tokens) on our RAM."""

    def __init__(self, ram):
        self.ram = ram

    def generate_image_embeds(self, normalised):
        return self.ram(normalised)


def official_upscale(kit: Path, lr_png: Path, out_png: Path, steps: int, draws: dict, prompt_embeds, ram,
                     decoded_latents: list | None = None) -> dict:
    """test_addsr.py on one LR file, timed: load (files to networks), compute (LR file to PNG) and stages.

    ``draws``: initial_latents (passed as ``latents``) and ``global_seed`` (torch's global RNG, which
    the official code draws the posterior sample and the re-noising from). ``ram``: our RAM network,
    which stands in for the official one (whose constructor downloads bert-base-uncased).
    ``decoded_latents``: a list that receives each VAE decode's input (the PSR steps' unscaled
    pred_z0, then the final latent), to compare a run against ours step by step."""
    import time

    from PIL import Image
    from torchvision import transforms

    if steps not in (1, 4):
        raise ValueError("the official pipeline runs 4 steps, or 1 with the maintainers' patch")
    t0 = time.perf_counter()
    pipeline_mod, scheduler_mod = import_pipeline(one_step=steps == 1)
    from diffusers import AutoencoderKL

    unet_cls, controlnet_cls = import_networks()
    unet = unet_cls.from_pretrained(str(kit / "addsr"), subfolder="unet")
    controlnet = controlnet_cls.from_pretrained(str(kit / "addsr"), subfolder="controlnet", low_cpu_mem_usage=False)
    vae = AutoencoderKL.from_pretrained(str(kit / "sd2"), subfolder="vae")
    for m in (unet, controlnet, vae):
        m.requires_grad_(False).eval()
    pipe = pipeline_mod.StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=_NoTextEncoder(), tokenizer=None, feature_extractor=None, unet=unet, controlnet=controlnet,
        scheduler=scheduler_mod.DDPMScheduler(**SCHEDULER), safety_checker=None, requires_safety_checker=False,
    )
    pipe._init_tiled_vae(decoder_tile_size=224)  # test_addsr.py's default --vae_tiled_size
    pipe.set_progress_bar_config(disable=True)
    pipeline_mod.RAM = _RAMAdapter(ram)
    load_s = time.perf_counter() - t0

    stages: dict = {}

    def clock(obj, attr, stage):
        fn = getattr(obj, attr)

        def timed(*args, **kwargs):
            if stage == "vae_decode" and decoded_latents is not None:
                decoded_latents.append(args[0].detach().clone())
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            stages[stage] = stages.get(stage, 0.0) + time.perf_counter() - start
            return out

        setattr(obj, attr, timed)

    clock(unet, "forward", "unet")
    clock(controlnet, "forward", "controlnet")
    clock(vae, "encode", "vae_encode")
    clock(vae, "decode", "vae_decode")
    clock(pipeline_mod.RAM, "generate_image_embeds", "ram")

    # test_addsr.py from here on: tokens of the LR, the official resize, the pipeline, adain, save.
    t1 = time.perf_counter()
    image = Image.open(lr_png).convert("RGB")
    ram_in = transforms.Compose([transforms.Resize((384, 384)),
                                 transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    with torch.no_grad():
        tokens = pipeline_mod.RAM.generate_image_embeds(ram_in(transforms.ToTensor()(image).unsqueeze(0)))
    ori_w, ori_h = image.size
    rscale, process_size = 4, 512
    if ori_w < process_size // rscale or ori_h < process_size // rscale:
        scale = (process_size // rscale) / min(ori_w, ori_h)
        image = image.resize((int(scale * ori_w), int(scale * ori_h)))
    image = image.resize((image.size[0] * rscale, image.size[1] * rscale))
    image = image.resize((image.size[0] // 8 * 8, image.size[1] // 8 * 8))
    width, height = image.size
    torch.manual_seed(draws["global_seed"])
    with torch.no_grad():
        out = pipe(None, image, num_inference_steps=steps, generator=None, height=height, width=width,
                   guidance_scale=0.0, conditioning_scale=1.0, start_point="lr", ram_encoder_hidden_states=tokens,
                   prompt_embeds=prompt_embeds, latents=draws["initial_latents"], args=None).images[0]
    from utils.wavelet_color_fix import adain_color_fix

    out = adain_color_fix(out, image).resize((ori_w * rscale, ori_h * rscale))
    out.save(out_png)
    compute_s = time.perf_counter() - t1
    return {"load_s": round(load_s, 2), "compute_s": round(compute_s, 2), "stages_s": {k: round(v, 2) for k, v in stages.items()}}
