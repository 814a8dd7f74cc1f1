"""Record what the official StableSR code does, on tiny seeded weights, as test fixtures.

    python tools/record_stablesr_parity.py --stablesr /path/to/StableSR [--out tests/fixtures]

``--stablesr`` (or ``STABLESR_PATH``) is an extracted checkout of github:IceClear/StableSR; its
``ldm/``, ``basicsr/`` and ``scripts/`` are imported from there at run time and nothing of it is
copied here. The official code needs only ``omegaconf`` and ``opencv`` beyond what the project
already installs, so a throwaway environment is::

    python3 -m venv --system-site-packages /work/venvs/stablesr
    /work/venvs/stablesr/bin/pip install omegaconf opencv-python-headless
    git --git-dir=<StableSR mirror> archive HEAD | tar -x -C /tmp/StableSR
    /work/venvs/stablesr/bin/python tools/record_stablesr_parity.py --stablesr /tmp/StableSR \
        --commit "$(git --git-dir=<StableSR mirror> rev-parse HEAD)"

Two fixture folders are written (``case.json`` + ``cases.safetensors`` each):

- ``stablesr_modules``: the networks, called directly. The time-aware encoder
  (``EncoderUNetModelWT``) features and the SFT UNet's eps (``LatentDiffusionSRTextWT.apply_model``
  -> ``UNetModelDualcondV2``) of :data:`addsr_core.stablesr.tiny.TINY_STABLESR`; the CFW VAE
  (``AutoencoderKLResi``) encode and decode at ``fusion_w`` 0, 0.5 and 1 of ``TINY_CFW``; the
  colour fixes (``scripts/wavelet_color_fix.py``: ``adaptive_instance_normalization`` and
  ``wavelet_reconstruction``, the tensor functions the sampling scripts call).
- ``stablesr_loops``: the official ``scripts/sr_val_ddpm_text_T_vqganfin_oldcanvas_tile.py`` run
  end to end (its ``main()`` with a command line, as the README runs it) on a 2-level seeded UNet
  (:data:`LOOP_STABLESR`, small enough that the real 200-step loop takes seconds) and ``TINY_CFW``:
  DDPM-200 (adain), Turbo-4 over a latent of 2x3 canvas tiles (wavelet; every tile's output kept),
  Turbo-4 in two official pixel tiles (``ImageSpliterTh``), a v-prediction run (no colour fix,
  w = 0), and an LR smaller than ``input_size / upscale`` (the script's resize of the padded
  result). Every random draw is recorded, with the per-step latent, blended model output and x0
  (every step of the 4-step loops; every 20th step and the last of DDPM-200), every canvas tile's
  model output, the LR latent, x_T, the final latent, the colour-fixed CFW decode, the script's
  final image and the PNG it writes. The recording is deterministic (a rerun writes the same bytes).

The weights are :mod:`addsr_core.stablesr.tiny`'s seeded builders (``seeded_weights``) written in
the release layout (``model.diffusion_model.*``, ``structcond_stage_model.*``,
``first_stage_model.*``; the CFW file as ``vqgan_cfw_00011.ckpt``) and loaded by the official
classes, built from the official YAML configs with only the widths made tiny. The recorder checks
that every official parameter was loaded (the script loads with ``strict=False``) and writes a
fingerprint that the tests compare with the weights they rebuild from the same seeds.

Run-time patches (behaviour unchanged):

- stub ``pytorch_lightning``: ``LightningModule`` is ``torch.nn.Module`` (only the networks and the
  sampling methods are used; nothing of Lightning runs), ``seed_everything`` seeds ``random``,
  ``numpy`` and ``torch`` as Lightning's does, ``rank_zero_only`` is the identity;
- stub modules for ``torchvision``, ``taming``, ``matplotlib``, ``sklearn`` and ``lpips``: imported by
  the training code and the PIL helpers, never called on the recorded paths (a call raises);
- ``Tensor.cuda`` / ``Module.cuda`` return their object (the script moves to CUDA unconditionally;
  this machine has none), ``--precision full``;
- the text encoder (``FrozenOpenCLIPEmbedder``, weights from the internet) is replaced in the config
  by :class:`FixedPromptEmbedding`, a seeded stand-in for the embedding of the empty prompt;
- the script reads ``configs/autoencoder/autoencoder_kl_64x64x4_resi.yaml`` from its working
  directory, so it runs in a temporary directory holding the tiny version of that file;
- ``torch.randn``/``torch.randn_like``, ``encode_first_stage``, ``get_first_stage_encoding``,
  ``apply_model``, ``predict_start_from_noise``/``_z_and_v``, ``p_sample_canvas``, the CFW
  ``decode``, the colour fixes, ``ImageSpliterTh.gather`` and ``Tensor.cpu`` (the final image) are
  wrapped to record their inputs and outputs.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import json
import os
import random
import runpy
import sys
import tempfile
import types
from dataclasses import asdict, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from addsr_core.models.config import UNetConfig, VAEConfig  # noqa: E402
from addsr_core.stablesr.encoder import TimeAwareEncoderConfig  # noqa: E402
from addsr_core.stablesr.model import StableSRConfig, sd2_unet_config  # noqa: E402

MODULE_SEEDS = {"stablesr": 20250, "cfw": 20251}
LOOP_SEEDS = {"epsilon": 20252, "v_prediction": 20253, "cfw": 20254}
INPUT_SEED = 4242
CONTEXT_SEED = 99
CONTEXT_TOKENS = 77
# A 2-level StableSR (one resnet per level, attention at full resolution) with 32 channels: the same
# code paths as the full model, cheap enough for 200 network calls per test.
LOOP_STABLESR = StableSRConfig(
    unet=sd2_unet_config(block_out_channels=(32, 32), attention_heads=(4, 4), cross_attention_dim=16, layers_per_block=1,
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
    encoder=TimeAwareEncoderConfig(model_channels=32, out_channels=32, num_res_blocks=1, channel_mult=(1, 1),
                                   attention_resolutions=(1,)),
)
STEP_STRIDE = 20  # per-step tensors kept every 20th step and at the last (all steps of a short loop)
SCRIPT = "scripts/sr_val_ddpm_text_T_vqganfin_oldcanvas_tile.py"
# name -> the script's command line (beyond --config/--ckpt/--vqgan_ckpt/--init-img/--outdir), the LR size
# and the diffusion weights. input_size 64 makes the canvas tile 8 latent pixels (the official input_size / 8).
LOOP_CASES = {
    "ddpm200": dict(lr_hw=(16, 16), prediction="epsilon", args=dict(
        ddpm_steps=200, dec_w=0.5, colorfix_type="adain", seed=42, input_size=64, tile_overlap=4, upscale=4.0)),
    "turbo4_canvas": dict(lr_hw=(20, 28), prediction="epsilon", args=dict(
        ddpm_steps=4, dec_w=0.5, colorfix_type="wavelet", seed=7, input_size=64, tile_overlap=4, upscale=4.0)),
    "turbo4_pixel_tiles": dict(lr_hw=(16, 24), prediction="epsilon", args=dict(
        ddpm_steps=4, dec_w=1.0, colorfix_type="adain", seed=3, input_size=64, tile_overlap=4, upscale=4.0,
        vqgantile_size=64, vqgantile_stride=48)),
    "v4": dict(lr_hw=(16, 16), prediction="v_prediction", args=dict(
        ddpm_steps=4, dec_w=0.0, colorfix_type="nofix", seed=11, input_size=64, tile_overlap=4, upscale=4.0)),
    # 12 px < input_size / upscale: the factor is raised to 64 / 12 and the script resizes the padded result;
    # 64 x 69 is padded to 96 x 96 (the side that is a multiple of 32 gets 32 more)
    "turbo4_small_lr": dict(lr_hw=(12, 13), prediction="epsilon", keep_image=True, args=dict(
        ddpm_steps=4, dec_w=0.5, colorfix_type="wavelet", seed=5, input_size=64, tile_overlap=4, upscale=4.0)),
}
SOURCES = (SCRIPT, "scripts/util_image.py", "scripts/wavelet_color_fix.py", "ldm/models/diffusion/ddpm.py",
           "ldm/models/autoencoder.py", "ldm/modules/diffusionmodules/openaimodel.py", "ldm/modules/diffusionmodules/model.py",
           "ldm/modules/diffusionmodules/util.py", "ldm/modules/attention.py", "ldm/modules/spade.py",
           "ldm/modules/distributions/distributions.py", "basicsr/archs/rrdbnet_arch.py",
           "configs/stableSRNew/v2-finetune_text_T_512.yaml", "configs/stableSRNew/v2-finetune_text_T_768v.yaml",
           "configs/autoencoder/autoencoder_kl_64x64x4_resi.yaml")


# --- environment --------------------------------------------------------------------------------------


class _Unavailable:
    """An attribute of a stub module: importable, raises if anything calls it."""

    def __init__(self, name):
        self._name = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self._name} is a stub in record_stablesr_parity.py and must not be called")

    def __getattr__(self, attr):
        return _Unavailable(f"{self._name}.{attr}")

    def __mro_entries__(self, bases):
        return (object,)


class _StubModule(types.ModuleType):
    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Unavailable(f"{self.__name__}.{attr}")


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    roots = ("torchvision", "taming", "matplotlib", "sklearn", "lpips")

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        module.__path__ = []


class FixedPromptEmbedding(torch.nn.Module):
    """Stands in for ``FrozenOpenCLIPEmbedder``: the embedding of every prompt is one seeded tensor."""

    def __init__(self, width: int, seed: int = CONTEXT_SEED, tokens: int = CONTEXT_TOKENS):
        super().__init__()
        self.context = context_embedding(width, seed, tokens)  # a plain attribute: not in the state dict

    def forward(self, texts):
        return self.context.expand(len(texts), -1, -1).clone()

    def encode(self, texts):
        return self(texts)


def context_embedding(width: int, seed: int = CONTEXT_SEED, tokens: int = CONTEXT_TOKENS) -> torch.Tensor:
    return torch.randn(1, tokens, width, generator=torch.Generator().manual_seed(seed))


def install_stubs() -> list[str]:
    class LightningModule(torch.nn.Module):
        pass

    def seed_everything(seed=None, workers=False):  # pytorch_lightning 1.4's seeding
        seed = int(seed)
        os.environ["PL_GLOBAL_SEED"] = str(seed)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        return seed

    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
        return m

    module("pytorch_lightning", LightningModule=LightningModule, seed_everything=seed_everything)
    module("pytorch_lightning.utilities")
    module("pytorch_lightning.utilities.distributed", rank_zero_only=lambda fn: fn)
    module("stablesr_parity_stubs", FixedPromptEmbedding=FixedPromptEmbedding)
    sys.meta_path.insert(0, _StubFinder())
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    return [
        "stub pytorch_lightning (LightningModule = torch.nn.Module; seed_everything seeds random, numpy, torch; "
        "rank_zero_only = identity)",
        f"stub modules {list(_StubFinder.roots)} (imported, never called)",
        "Tensor.cuda / Module.cuda return self (CPU run)",
        "cond_stage_config -> FixedPromptEmbedding (seeded empty-prompt embedding)",
        "the script runs in a temporary working directory holding the tiny configs/autoencoder/autoencoder_kl_64x64x4_resi.yaml",
        "recording wrappers (inputs and outputs cloned, values unchanged), see the tool's docstring",
    ]


def import_official(root: Path, commit: str | None = None):
    sys.path[:0] = [str(root), str(root / "scripts")]
    patches = install_stubs()
    import omegaconf
    from ldm.models import autoencoder
    from ldm.models.diffusion import ddpm
    from ldm.util import instantiate_from_config
    import scripts.wavelet_color_fix as colorfix
    import util_image

    env = {"torch": torch.__version__, "numpy": np.__version__, "omegaconf": omegaconf.__version__}
    sources = {"commit": commit, "sha256": {path: hashlib.sha256((root / path).read_bytes()).hexdigest() for path in SOURCES}}
    return types.SimpleNamespace(root=root, ddpm=ddpm, autoencoder=autoencoder, instantiate=instantiate_from_config,
                                 colorfix=colorfix, util_image=util_image, env=env, patches=patches, sources=sources)


# --- weights and configs ------------------------------------------------------------------------------


def official_unet_params(unet: UNetConfig, semb_channels: int) -> dict:
    """``unet_config.params`` of the official YAML for our UNet config."""
    base = unet.block_out_channels[0]
    head_dims = {c // h for c, h in zip(unet.block_out_channels, unet.attention_heads)}
    if len(head_dims) != 1:
        raise ValueError("the official config has one num_head_channels for every level")
    return dict(model_channels=base, channel_mult=[c // base for c in unet.block_out_channels],
                num_res_blocks=unet.layers_per_block, num_head_channels=head_dims.pop(),
                attention_resolutions=[2**i for i, kind in enumerate(unet.down_block_types) if kind.startswith("CrossAttn")],
                context_dim=unet.cross_attention_dim, semb_channels=semb_channels)


def official_encoder_params(encoder: TimeAwareEncoderConfig) -> dict:
    return dict(model_channels=encoder.model_channels, out_channels=encoder.out_channels,
                num_res_blocks=encoder.num_res_blocks, attention_resolutions=list(encoder.attention_resolutions),
                channel_mult=list(encoder.channel_mult), num_heads=encoder.num_heads)


def official_ddconfig(vae: VAEConfig) -> dict:
    base = vae.block_out_channels[0]
    return dict(ch=base, ch_mult=[c // base for c in vae.block_out_channels], num_res_blocks=vae.layers_per_block,
                attn_resolutions=[], z_channels=vae.latent_channels)


def official_model_config(official, config: StableSRConfig, vae: VAEConfig):
    """The official v2-finetune_text_T_512 config (v: the 768v one) with our tiny widths."""
    from omegaconf import OmegaConf

    name = "v2-finetune_text_T_768v.yaml" if config.prediction_type == "v_prediction" else "v2-finetune_text_T_512.yaml"
    cfg = OmegaConf.load(official.root / "configs" / "stableSRNew" / name)
    params = cfg.model.params
    params.unet_config.params.update(official_unet_params(config.unet, config.encoder.out_channels))
    params.structcond_stage_config.params.update(official_encoder_params(config.encoder))
    params.first_stage_config.params.ddconfig.update(official_ddconfig(vae))
    params.cond_stage_config = OmegaConf.create({
        "target": "stablesr_parity_stubs.FixedPromptEmbedding", "params": {"width": config.unet.cross_attention_dim}})
    assert params.get("parameterization", "eps") == ("v" if config.prediction_type == "v_prediction" else "eps")
    return cfg


def official_vq_config(official, vae: VAEConfig):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(official.root / "configs" / "autoencoder" / "autoencoder_kl_64x64x4_resi.yaml")
    cfg.model.params.ddconfig.update(official_ddconfig(vae))
    cfg.model.params.lossconfig = OmegaConf.create({"target": "torch.nn.Identity"})  # training loss, needs LPIPS weights
    return cfg


def write_release_files(folder: Path, model, cfw, name: str) -> tuple[Path, Path]:
    """``{name}.ckpt`` like stablesr_000117.ckpt (UNet + SFT + encoder + first stage) and
    ``{name}_cfw.ckpt`` like vqgan_cfw_00011.ckpt."""
    from addsr_core.stablesr.tiny import ldm_cfw_state, ldm_stablesr_state

    plain, fusion = ldm_cfw_state(cfw)
    state = {**ldm_stablesr_state(model), **{"first_stage_model." + k: v for k, v in plain.items()}}
    paths = folder / f"{name}.ckpt", folder / f"{name}_cfw.ckpt"
    torch.save({"global_step": 0, "state_dict": state}, paths[0])
    torch.save({"global_step": 0, "state_dict": {**plain, **fusion}}, paths[1])
    return paths


def load_all(module: torch.nn.Module, path: Path) -> torch.nn.Module:
    """What the script's ``load_model_from_config`` does (``strict=False``), checked: every parameter
    is in the file and nothing in the file is left over (the schedule buffers are recomputed)."""
    sd = torch.load(path, map_location="cpu")["state_dict"]
    missing, unexpected = module.load_state_dict(sd, strict=False)
    buffers = {name for name, _ in module.named_buffers()}
    if unexpected or set(missing) - buffers:
        raise RuntimeError(f"{path.name}: unexpected {unexpected[:5]}, missing {sorted(set(missing) - buffers)[:5]}")
    return module.eval()


def fingerprint(*modules: torch.nn.Module) -> dict:
    """Enough of the parameters to tell whether the test rebuilt the same weights."""
    params = [p for m in modules for p in m.parameters()]
    flat = torch.cat([p.detach().double().flatten() for p in params])
    return {"tensors": len(params), "numel": int(flat.numel()), "sum": float(flat.sum()), "abs_sum": float(flat.abs().sum())}


def config_json(config: StableSRConfig) -> dict:
    return {"unet": config.unet.to_dict(), "encoder": asdict(config.encoder), "prediction_type": config.prediction_type}


# --- the modules ------------------------------------------------------------------------------------


def record_modules(official, tmp: Path) -> tuple[dict, dict]:
    from addsr_core.stablesr.tiny import TINY_CFW, TINY_STABLESR, tiny_cfw, tiny_stablesr

    ckpt, vq_ckpt = write_release_files(tmp, tiny_stablesr(MODULE_SEEDS["stablesr"]), tiny_cfw(MODULE_SEEDS["cfw"]), "modules")
    model = load_all(official.instantiate(official_model_config(official, TINY_STABLESR, TINY_CFW).model), ckpt)
    vq = load_all(official.instantiate(official_vq_config(official, TINY_CFW).model), vq_ckpt)

    g = torch.Generator().manual_seed(INPUT_SEED)
    inputs = {
        "lr_latent": torch.randn(2, 4, 16, 24, generator=g),
        "z_t": torch.randn(2, 4, 16, 24, generator=g),
        "context": torch.randn(2, CONTEXT_TOKENS, TINY_STABLESR.unet.cross_attention_dim, generator=g),
        "timesteps": torch.tensor([999, 333]),
        "image": torch.rand(1, 3, 64, 96, generator=g) * 2 - 1,
        "latent": torch.randn(1, 4, 8, 12, generator=g),
    }
    expected = {}
    with torch.no_grad():
        features = model.structcond_stage_model(inputs["lr_latent"], inputs["timesteps"])
        expected.update({f"encoder.{k}": v for k, v in features.items()})
        expected["eps"] = model.apply_model(inputs["z_t"], inputs["timesteps"], inputs["context"], features)
        posterior, enc_fea = vq.encode(inputs["image"])
        expected["cfw.moments"] = posterior.parameters
        for w in (0.0, 0.5, 1.0):
            vq.decoder.fusion_w = w
            expected[f"cfw.decode_w{w}"] = vq.decode(inputs["latent"], enc_fea)
        target = expected["cfw.decode_w0.5"]
        expected["colorfix.adain"] = official.colorfix.adaptive_instance_normalization(target, inputs["image"])
        expected["colorfix.wavelet"] = official.colorfix.wavelet_reconstruction(target, inputs["image"])
    report = {
        "source": "github:IceClear/StableSR ldm/modules/diffusionmodules/openaimodel.py (EncoderUNetModelWT, "
                  "UNetModelDualcondV2), ldm/models/diffusion/ddpm.py (LatentDiffusionSRTextWT.apply_model), "
                  "ldm/models/autoencoder.py (AutoencoderKLResi.encode/decode), ldm/modules/diffusionmodules/model.py "
                  "(Decoder_Mix), scripts/wavelet_color_fix.py",
        "weights": {"builder": "addsr_core.stablesr.tiny: tiny_stablesr(seeds['stablesr']), tiny_cfw(seeds['cfw'])",
                    "seeds": MODULE_SEEDS,
                    "fingerprint": {"stablesr": fingerprint(model.model, model.structcond_stage_model), "cfw": fingerprint(vq)}},
        "inputs_note": f"torch.Generator().manual_seed({INPUT_SEED}): lr_latent, z_t, context ~ randn, image = rand * 2 - 1, "
                       "latent ~ randn, in this order",
        "calls": {
            "encoder.*": "model.structcond_stage_model(lr_latent, timesteps): {str(width): feature}",
            "eps": "model.apply_model(z_t, timesteps, context, encoder features)",
            "cfw.moments": "vq.encode(image)[0].parameters",
            "cfw.decode_w*": "vq.decoder.fusion_w = w; vq.decode(latent, vq.encode(image)[1]) (latent unscaled)",
            "colorfix.*": "adaptive_instance_normalization / wavelet_reconstruction(cfw.decode_w0.5, image)",
        },
        "tolerance": "max|ours - expected| <= 1e-4 * max(1, max|expected|), fp32 CPU",
    }
    tensors = {f"inputs.{k}": v for k, v in inputs.items()}
    tensors.update({f"expected.{k}": v for k, v in expected.items()})
    report["shapes"] = {k: list(v.shape) for k, v in tensors.items()}
    return tensors, report


# --- the sampling script ------------------------------------------------------------------------------


class ScriptRecorder:
    """Wraps the official functions the script calls; records, never changes, values."""

    def __init__(self, official):
        self.active = False
        self.tiles: list[dict] = []
        self.gathered = None
        self.t = None
        ddpm, ae = official.ddpm, official.autoencoder
        model_cls = ddpm.LatentDiffusionSRTextWT
        self._wrap(torch, "randn", self._draw)
        self._wrap(torch, "randn_like", self._draw)
        self._wrap(model_cls, "encode_first_stage", self._encode_first_stage)
        self._wrap(model_cls, "get_first_stage_encoding", self._get_first_stage_encoding)
        self._wrap(model_cls, "apply_model", self._apply_model)
        self._wrap(model_cls, "p_sample_canvas", self._p_sample_canvas)
        self._wrap(ddpm.DDPM, "predict_start_from_noise", self._predict_from_eps)
        self._wrap(ddpm.DDPM, "predict_start_from_z_and_v", self._predict_from_v)
        self._wrap(ae.AutoencoderKLResi, "decode", self._decode)
        self._wrap(official.colorfix, "adaptive_instance_normalization", self._color_fix)
        self._wrap(official.colorfix, "wavelet_reconstruction", self._color_fix)
        self._wrap(official.util_image.ImageSpliterTh, "gather", self._gather)
        self._wrap(torch.Tensor, "cpu", self._cpu)

    def _wrap(self, owner, name, hook):
        original = getattr(owner, name)

        def wrapped(*args, **kwargs):
            if not self.active:
                return original(*args, **kwargs)
            return hook(original, *args, **kwargs)

        wrapped.__name__ = name
        setattr(owner, name, wrapped)

    @contextlib.contextmanager
    def recording(self):
        self.tiles, self.gathered, self.final, self.t, self.active = [], None, None, None, True
        try:
            yield self
        finally:
            self.active = False

    @property
    def tile(self) -> dict:
        return self.tiles[-1]

    def _draw(self, original, *args, **kwargs):
        out = original(*args, **kwargs)
        if kwargs.get("generator") is not None:  # its own generator (FixedPromptEmbedding): not the script's RNG
            return out
        caller = sys._getframe(2).f_code.co_name  # [0] this hook, [1] the wrapper
        if not self.tiles:  # before the first encode (model construction): not a sampling draw
            raise RuntimeError(f"unexpected random draw from {caller} before sampling")
        if caller == "sample":  # DiagonalGaussianDistribution.sample
            name = "posterior_eps"
        elif caller == "main":  # the script: noise = torch.randn_like(init_latent)
            name = "initial_noise"
        elif caller == "<lambda>" and self.t is not None:  # noise_like, in p_sample_canvas after the model
            name = f"step_noise_t{self.t}"
        else:
            raise RuntimeError(f"unexpected random draw from {caller}")
        self.tile["draws"].append((name, out.clone()))
        return out

    def _encode_first_stage(self, original, model, x):
        self.tiles.append({"image": x.clone(), "draws": [], "steps": [], "tile_outputs": {}})
        return original(model, x)

    def _get_first_stage_encoding(self, original, model, posterior):
        out = original(model, posterior)
        self.tile["lr_latent"] = out.clone()
        return out

    def _p_sample_canvas(self, original, model, x, c, struct_cond, t, *args, **kwargs):
        t_replace = kwargs.get("t_replace")
        self.t = int((t if t_replace is None else t_replace)[0])
        self.tile["steps"].append({"t": self.t, "z_in": x.clone()})
        out = original(model, x, c, struct_cond, t, *args, **kwargs)
        self.tile["steps"][-1]["z"] = out.clone()
        self.t = None
        return out

    def _predict_from_eps(self, original, model, x_t, t, noise):  # called with the blended model output
        out = original(model, x_t, t, noise)
        self.tile["steps"][-1].update(model_out=noise.clone(), x0=out.clone())
        return out

    def _predict_from_v(self, original, model, x, v, t):
        out = original(model, x, v, t)
        self.tile["steps"][-1].update(model_out=v.clone(), x0=out.clone())
        return out

    def _apply_model(self, original, model, x_noisy, t, cond, struct_cond, *args, **kwargs):
        out = original(model, x_noisy, t, cond, struct_cond, *args, **kwargs)
        self.tile["tile_outputs"].setdefault(self.t, []).append(out.clone())
        return out

    def _decode(self, original, vq, z, enc_fea):
        out = original(vq, z, enc_fea)
        self.tile["decoded"] = out.clone()
        return out

    def _color_fix(self, original, content, style):
        out = original(content, style)
        self.tile["color_fixed"] = out.clone()
        return out

    def _cpu(self, original, tensor, *args, **kwargs):
        if tensor.ndim == 4:  # the script's last: im_sr.cpu().numpy().transpose(0, 2, 3, 1) * 255, before the crop
            self.final = tensor.clone()
        return original(tensor, *args, **kwargs)

    def _gather(self, original, spliter):
        out = original(spliter)
        self.gathered = out.clone()
        return out


def run_script(official, recorder, workdir: Path, files: dict, lr_uint8: torch.Tensor, args: dict):
    """The official script's main() on one LR image; returns the PNG it writes (HWC uint8)."""
    from PIL import Image

    inputs, outdir = workdir / "inputs", workdir / "outputs"
    inputs.mkdir(exist_ok=True)
    for stale in inputs.iterdir():
        stale.unlink()
    Image.fromarray(lr_uint8.numpy()).save(inputs / "lr.png")
    argv = [SCRIPT, "--config", str(files["config"]), "--ckpt", str(files["ckpt"]), "--vqgan_ckpt", str(files["vq_ckpt"]),
            "--init-img", str(inputs), "--outdir", str(outdir), "--n_samples", "1", "--precision", "full"]
    for key, value in args.items():
        argv += [f"--{key}", str(value)]
    if (outdir / "lr.png").exists():
        (outdir / "lr.png").unlink()
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    sys.argv = argv
    os.chdir(workdir)  # the script reads configs/autoencoder/autoencoder_kl_64x64x4_resi.yaml from here
    try:
        with recorder.recording(), torch.no_grad():
            runpy.run_path(str(official.root / SCRIPT), run_name="__main__")
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
    return torch.from_numpy(np.array(Image.open(outdir / "lr.png").convert("RGB")))


def collect_tile(tile: dict, keep_image: bool) -> tuple[dict, dict, list]:
    """(draws, expected, draw order) of one pixel tile (the whole image when it is not split)."""
    draws = {name: t for name, t in tile["draws"]}
    expected = {"lr_latent": tile["lr_latent"], "x_T": tile["steps"][0]["z_in"], "z0": tile["steps"][-1]["z"]}
    if keep_image:
        expected["image"] = tile["image"]
    # the tile's result: colour-fixed where the case fixes colours, else the CFW decode itself
    expected.update({"color_fixed": tile["color_fixed"]} if "color_fixed" in tile else {"decoded": tile["decoded"]})
    last = len(tile["steps"]) - 1
    for i, step in enumerate(tile["steps"]):
        t = step["t"]
        if i % STEP_STRIDE == 0 or i == last:
            expected.update({f"t{t}.model_out": step["model_out"], f"t{t}.x0": step["x0"]})
        if i % STEP_STRIDE == 0 or i == last or last < STEP_STRIDE:
            expected[f"t{t}.z"] = step["z"]
    for t, outputs in tile["tile_outputs"].items():
        if len(outputs) > 1:  # with one canvas tile it is the blended output itself
            expected.update({f"t{t}.tile{k}.model_out": out for k, out in enumerate(outputs)})
    return draws, expected, [name for name, _ in tile["draws"]]


def record_loops(official, recorder: ScriptRecorder, tmp: Path) -> tuple[dict, dict]:
    from omegaconf import OmegaConf

    from addsr_core.stablesr.model import StableSRModel
    from addsr_core.stablesr.tiny import TINY_CFW, seeded_weights, tiny_cfw

    workdir = tmp / "work"
    (workdir / "configs" / "autoencoder").mkdir(parents=True)
    OmegaConf.save(official_vq_config(official, TINY_CFW), workdir / "configs" / "autoencoder" / "autoencoder_kl_64x64x4_resi.yaml")
    cfw = tiny_cfw(LOOP_SEEDS["cfw"])
    files, fingerprints, configs = {}, {}, {}
    for prediction in ("epsilon", "v_prediction"):
        config = replace(LOOP_STABLESR, prediction_type=prediction)
        model = seeded_weights(StableSRModel(config), LOOP_SEEDS[prediction]).eval()
        ckpt, vq_ckpt = write_release_files(tmp, model, cfw, f"loop_{prediction}")
        cfg = official_model_config(official, config, TINY_CFW)
        OmegaConf.save(cfg, tmp / f"loop_{prediction}.yaml")
        files[prediction] = {"config": tmp / f"loop_{prediction}.yaml", "ckpt": ckpt, "vq_ckpt": vq_ckpt}
        official_model = load_all(official.instantiate(cfg.model), ckpt)
        fingerprints[prediction] = fingerprint(official_model.model, official_model.structcond_stage_model)
        configs[prediction] = config_json(config)
    vq = load_all(official.instantiate(official_vq_config(official, TINY_CFW).model), files["epsilon"]["vq_ckpt"])
    fingerprints["cfw"] = fingerprint(vq)

    g = torch.Generator().manual_seed(INPUT_SEED + 1)
    tensors = {"inputs.context": context_embedding(LOOP_STABLESR.unet.cross_attention_dim)}
    report = {
        "source": f"github:IceClear/StableSR {SCRIPT} main(), ldm/models/diffusion/ddpm.py (LatentDiffusionSRTextWT."
                  "sample_canvas / p_sample_canvas / p_mean_variance_canvas), ldm/models/autoencoder.py (AutoencoderKLResi), "
                  "scripts/util_image.py (ImageSpliterTh), scripts/wavelet_color_fix.py",
        "environment": official.env, "run_time_patches": official.patches, "official_sources": official.sources,
        "weights": {"builder": "seeded_weights(StableSRModel(replace(configs[prediction]...)), seeds[prediction]); "
                               "addsr_core.stablesr.tiny.tiny_cfw(seeds['cfw'])",
                    "seeds": LOOP_SEEDS, "configs": configs, "fingerprint": fingerprints},
        "inputs_note": f"LR images: (torch.rand(h, w, 3, generator) * 255).round() uint8, one per case in case order from "
                       f"torch.Generator().manual_seed({INPUT_SEED + 1}); context: the FixedPromptEmbedding "
                       f"(torch.randn(1, {CONTEXT_TOKENS}, 16, generator=torch.Generator().manual_seed({CONTEXT_SEED})))",
        "rng_note": "every draw is from torch's global RNG (seed_everything(seed) at the start of main() and again before "
                    "each pixel tile); posterior_eps: DiagonalGaussianDistribution.sample, initial_noise: the script's "
                    "torch.randn_like(init_latent), step_noise_t{t}: noise_like in p_sample_canvas after the model call "
                    "(also at t=0, where it is multiplied by 0). Without pixel tiles the stream continues after model "
                    "construction; init_latent is channels_last (read_image's numpy transpose), so randn_like takes torch's "
                    "element-wise CPU normal: the official draws are not a seeded stream, they are replayed",
        "expected_note": "per pixel tile: lr_latent (get_first_stage_encoding), x_T, t{t}.z / .model_out (blended) / .x0, "
                         "t{t}.tile{k}.model_out (canvas tile k in the official visit order), z0, color_fixed (or decoded "
                         "without a colour fix), image (the padded upscaled LR, where kept); per case: gathered "
                         "(ImageSpliterTh.gather), final (the script's im_sr in [0,1] before its crop to the unpadded size; "
                         "only where the script resized it, else it is clamp((blend + 1) / 2)), png (the file it writes, HWC uint8)",
        "tolerance": "max|ours - expected| <= 1e-4 * max(1, max|expected|), fp32 CPU",
        "cases": {},
    }
    for name, case in LOOP_CASES.items():
        h, w = case["lr_hw"]
        lr = (torch.rand(h, w, 3, generator=g) * 255).round().to(torch.uint8)
        tensors[f"{name}.inputs.lr_uint8"] = lr
        png = run_script(official, recorder, workdir, files[case["prediction"]], lr, case["args"])
        steps = len(recorder.tiles[0]["steps"])
        tiles_report = []
        for j, tile in enumerate(recorder.tiles):
            draws, expected, order = collect_tile(tile, keep_image=case.get("keep_image", False) and j == 0)
            tensors.update({f"{name}.tile{j}.rng.{k}": v for k, v in draws.items()})
            tensors.update({f"{name}.tile{j}.expected.{k}": v for k, v in expected.items()})
            tiles_report.append({"draw_order": order, "timesteps_run": [s["t"] for s in tile["steps"]],
                                 "canvas_tiles_per_step": len(next(iter(tile["tile_outputs"].values()))),
                                 "shapes": {k: list(v.shape) for k, v in {**draws, **expected}.items()}})
        if recorder.gathered is not None:
            tensors[f"{name}.expected.gathered"] = recorder.gathered
        blend = recorder.gathered if recorder.gathered is not None else recorder.tiles[0].get("color_fixed", recorder.tiles[0]["decoded"])
        if recorder.final.shape != blend.shape:  # resized; else it is clamp((blend + 1) / 2), kept out of the fixture
            tensors[f"{name}.expected.final"] = recorder.final
        tensors[f"{name}.expected.png"] = png
        report["cases"][name] = {
            "prediction_type": case["prediction"], "lr_hw": list(case["lr_hw"]), "args": case["args"],
            "command": " ".join([f"python {SCRIPT}", "--config <tiny yaml> --ckpt <tiny ckpt> --vqgan_ckpt <tiny cfw ckpt>",
                                 "--init-img <dir with the LR png> --outdir <dir> --n_samples 1 --precision full",
                                 *(f"--{k} {v}" for k, v in case["args"].items())]),
            "pixel_tiles": tiles_report,
            "observed_max_abs": {"z0": max(float(t["steps"][-1]["z"].abs().max()) for t in recorder.tiles),
                                 "model_out": max(float(s["model_out"].abs().max()) for t in recorder.tiles for s in t["steps"])},
        }
        print(f"{name}: {len(recorder.tiles)} pixel tile(s), {steps} steps, png {tuple(png.shape)}")
    return tensors, report


def save(folder: Path, tensors: dict, report: dict) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, str(folder / "cases.safetensors"))
    (folder / "case.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {folder} ({sum(p.stat().st_size for p in folder.iterdir()) / 1e6:.2f} MB)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stablesr", type=Path, default=os.environ.get("STABLESR_PATH"), help="extracted StableSR checkout")
    parser.add_argument("--commit", default=os.environ.get("STABLESR_COMMIT"),
                        help="the checkout's commit, for case.json (e.g. git --git-dir=<mirror> rev-parse HEAD)")
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures", help="folder for stablesr_modules/ and stablesr_loops/")
    args = parser.parse_args(argv)
    if args.stablesr is None or not (args.stablesr / SCRIPT).is_file():
        parser.error(f"--stablesr (or STABLESR_PATH) must point at a StableSR checkout with {SCRIPT}")
    torch.set_num_threads(1)  # one thread: the recording does not depend on the machine's core count
    official = import_official(args.stablesr.resolve(), args.commit)
    recorder = ScriptRecorder(official)
    with tempfile.TemporaryDirectory() as tmp:
        tensors, report = record_modules(official, Path(tmp))
        report.update(environment=official.env, run_time_patches=official.patches, official_sources=official.sources)
        save(args.out / "stablesr_modules", tensors, report)
        tensors, report = record_loops(official, recorder, Path(tmp))
        save(args.out / "stablesr_loops", tensors, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
