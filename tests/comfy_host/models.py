"""Tiny seeded model files for running a workflow: whatever its loader nodes ask for, under the
names they ask for, in the right ``models/`` subfolder.

    paths = install_tiny_models(models_dir, workflow, target=INPROCESS)   # or COMFYUI

Each loader node type has a writer in :data:`LOADERS` (a registry: another model family adds its
own with :func:`register_loader`). A node that looks like it needs model files (a ``*Loader*`` type,
or a widget value naming a weight or tag file) but has no writer raises
:class:`UnsupportedLoaderError`: a new workflow must never be silently skipped.

Two targets, because the text width must match the CLIP the host provides:

* ``INPROCESS``: nodes run by ``execute_api_prompt`` with the stand-ins of standins.py. The SD2
  "checkpoint" is a tiny diffusers folder (tiny VAE, 32-wide text encoder) under the checkpoint's
  name, read by the CheckpointLoaderSimple stand-in.
* ``COMFYUI``: a real server. ComfyUI must recognise the checkpoint as SD 2 (see
  :func:`write_comfy_sd2_checkpoint`), so its text encoder is the real 1024-wide OpenCLIP ViT-H and
  the tiny AddSR UNet/ControlNet take 1024-wide text context.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from addsr_core.addsr.tiny import TEXT_WIDTH, randomize, write_tiny_addsr

WEIGHT_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".pkl", ".gguf")
TEXT_SUFFIXES = (".txt",)


class UnsupportedLoaderError(RuntimeError):
    """A workflow node needs model files this module cannot write (register a writer)."""


@dataclass(frozen=True)
class TinyTarget:
    name: str
    text_width: int  # width of the text conditioning the host's CLIP produces

    def __str__(self) -> str:
        return self.name


INPROCESS = TinyTarget("inprocess", TEXT_WIDTH)
COMFYUI = TinyTarget("comfyui", 1024)  # SD 2's OpenCLIP ViT-H/14 text width

# (models_dir, the node's widget values by name, target) -> {label: written path}
LoaderWriter = Callable[[Path, Mapping[str, Any], TinyTarget], dict]
LOADERS: dict[str, LoaderWriter] = {}


def register_loader(node_type: str, writer: LoaderWriter | None = None):
    """Register ``writer`` for ``node_type`` (usable as a decorator)."""
    def add(fn: LoaderWriter) -> LoaderWriter:
        LOADERS[node_type] = fn
        return fn

    return add(writer) if writer is not None else add


def looks_like_model_file(value) -> bool:
    return isinstance(value, str) and value.lower().endswith(WEIGHT_SUFFIXES + TEXT_SUFFIXES)


def needs_model_files(node_type: str, values: Mapping[str, Any]) -> bool:
    return "Loader" in node_type or any(looks_like_model_file(v) for v in values.values())


def install_tiny_models(models_dir, workflow: Mapping, definitions: Mapping | None = None, *,
                        target: TinyTarget = INPROCESS) -> dict[str, dict]:
    """Write tiny files for every loader node of a UI workflow; returns {node id: {label: path}}.

    ``definitions``: node definitions (classes or /object_info) used to read widget values by
    name; defaults to the core snapshot plus the pack. Raises UnsupportedLoaderError for a node
    that needs files no writer knows.
    """
    from comfy_host.workflow_graph import FRONTEND_ONLY_TYPES, MODE_ALWAYS, as_node_specs, widget_values_by_name

    models_dir = Path(models_dir)
    specs = as_node_specs(definitions if definitions is not None else default_definitions())
    written, unsupported = {}, []
    for node in workflow.get("nodes") or []:
        node_type = node.get("type")
        if node_type in FRONTEND_ONLY_TYPES or node.get("mode", MODE_ALWAYS) != MODE_ALWAYS:
            continue
        spec = specs.get(node_type)
        if spec is None:
            unsupported.append(f"node {node.get('id')} ({node_type}): unknown node type")
            continue
        values = widget_values_by_name(node, spec)
        writer = LOADERS.get(node_type)
        if writer is not None:
            written[str(node["id"])] = writer(models_dir, values, target)
        elif node_type != "LoadImage" and needs_model_files(node_type, values):
            files = sorted(v for v in values.values() if looks_like_model_file(v))
            unsupported.append(f"node {node.get('id')} ({node_type}) needs model files {files or '?'}")
    if unsupported:
        raise UnsupportedLoaderError(
            "no tiny-model writer for:\n  " + "\n  ".join(unsupported)
            + f"\nregister one in tests/comfy_host/models.py (register_loader); known: {sorted(LOADERS)}")
    return written


def default_definitions() -> dict:
    from tools.workflows.definitions import definitions

    return definitions()


# ---------------------------------------------------------------------------------------------
# AddSR loaders


TINY_SEEDS = {"addsr": 0, "seesr": 1}  # SeeSR's tiny weights differ from AddSR's, as the releases do


@register_loader("AddSRModelLoader")
def _addsr_model(models_dir: Path, values: Mapping, target: TinyTarget) -> dict:
    """Tiny weights of the family the node loads them as (its ``family`` widget, else the name rule);
    each loader node gets its own files, so AddSR and SeeSR loaders side by side both work."""
    from addsr_core.loading.family import resolve_family

    name = values["model"]
    dest = models_dir / "addsr" / name
    family, _ = resolve_family(dest, values.get("family", "auto"))
    seed = TINY_SEEDS[family]
    if name.endswith(".safetensors"):  # our packed single file, with the family recorded
        from addsr_core.loading.pack import pack_release

        with tempfile.TemporaryDirectory(prefix="addsr-tiny-release-") as tmp:
            write_tiny_addsr(Path(tmp), seed, cross_attention_dim=target.text_width)
            pack_release(tmp, dest, dtype="fp32", family=family)
    else:  # the official release folder
        write_tiny_addsr(dest, seed, cross_attention_dim=target.text_width)
    return {"model": dest}


@register_loader("AddSRRAMLoader")
def _addsr_ram(models_dir: Path, values: Mapping, target: TinyTarget) -> dict:
    from addsr_core.ram.tiny import write_tiny_ram

    ram_dir = models_dir / "ram"
    ram_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="addsr-tiny-ram-") as tmp:
        files = write_tiny_ram(tmp)
        out = {}
        for key in ("ram", "dape", "tag_list"):
            name = values.get(key)
            if not name or name == "none":
                continue
            shutil.copyfile(files[key], ram_dir / name)
            out[key] = ram_dir / name
            if key == "tag_list":  # the thresholds file lives beside the tag list
                sidecar = (ram_dir / name).with_name(Path(name).stem + "_threshold.txt")
                shutil.copyfile(files["thresholds"], sidecar)
                out["thresholds"] = sidecar
    return out


# ---------------------------------------------------------------------------------------------
# SD 2 base (VAE + CLIP) through CheckpointLoaderSimple


@register_loader("CheckpointLoaderSimple")
def _sd2_checkpoint(models_dir: Path, values: Mapping, target: TinyTarget) -> dict:
    dest = models_dir / "checkpoints" / values["ckpt_name"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    if target is INPROCESS or target.name == INPROCESS.name:
        from addsr_core.addsr.tiny import write_tiny_sd2

        write_tiny_sd2(dest)  # a folder under the file's name; the stand-in loader reads it
    else:
        cached = comfy_sd2_checkpoint()
        if dest.exists() or dest.is_symlink():
            dest.unlink()
        dest.symlink_to(cached)
    return {"checkpoint": dest}


SD2_CHECKPOINT_VERSION = "sd2-v2"  # bump when write_comfy_sd2_checkpoint changes


def comfy_sd2_checkpoint(cache_root: Path | None = None) -> Path:
    """The tiny-as-possible SD 2 checkpoint, written once and cached (keyed by version)."""
    cache_root = Path(cache_root or os.environ.get("ADDSR_TEST_CACHE") or Path(tempfile.gettempdir()) / "addsr-test-cache")
    path = cache_root / SD2_CHECKPOINT_VERSION / "tiny_sd2_base.safetensors"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
        write_comfy_sd2_checkpoint(tmp)
        os.replace(tmp, path)
    return path


def write_comfy_sd2_checkpoint(path: Path, seed: int = 0, dtype=torch.float16) -> Path:
    """A single-file LDM checkpoint that ComfyUI's CheckpointLoaderSimple loads as SD 2 (SD20).

    What ComfyUI reads (comfy/model_detection.py, comfy/sd.py, ComfyUI 0.3.64):

    * UNet: detected from shapes only. SD20 matches on model_channels 320, context_dim 1024, linear
      proj_in, no label embedding; depth and width are free. So the UNet here is small: one
      level (one ResBlock + one 1-block transformer down, two up) and SD2's middle block (ResBlock,
      transformer, ResBlock), about 26 M parameters. The AddSR workflows never run it; the
      StableSR ones run it under the SFT layers of a tiny SR module made for it
      (:func:`addsr_core.stablesr.tiny.write_tiny_stablesr_files` with ``base_unet``), which needs
      the middle block (our UNet always has one).
    * VAE: built from a fixed config (ch 128, mult 1,2,4,4) and loaded with shape checks: full size.
    * CLIP: built from comfy/text_encoders/sd2_clip_config.json (ViT-H text, 24 layers, 1024 wide):
      full size; missing tensors would stay uninitialised, so every one is written.

    All weights are seeded random, fp16: about 0.9 GB on disk, written once per cache.
    """
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def put(key: str, *shape: int, kind: str = "weight"):
        if kind == "norm":
            value = 1 + 0.05 * torch.randn(shape, generator=g)
        elif kind == "zero":
            value = torch.zeros(shape)
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod().item())) if len(shape) > 1 else shape[0]
            value = torch.randn(shape, generator=g) * min(0.05, fan_in ** -0.5)
        sd[key] = value.to(dtype)

    _sd20_unet(put, "model.diffusion_model.")
    _sd_vae(sd, g, dtype)
    _openclip_h_text(put, "cond_stage_model.model.")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata={"format": "pt", "note": "tiny random SD2 test checkpoint (addsr tests)"})
    return path


def _sd20_unet(put, p: str, ch: int = 320, context: int = 1024, temb: int = 1280) -> None:
    put(f"{p}time_embed.0.weight", temb, ch)
    put(f"{p}time_embed.0.bias", temb, kind="zero")
    put(f"{p}time_embed.2.weight", temb, temb)
    put(f"{p}time_embed.2.bias", temb, kind="zero")
    put(f"{p}input_blocks.0.0.weight", ch, 4, 3, 3)
    put(f"{p}input_blocks.0.0.bias", ch, kind="zero")
    _resblock(put, f"{p}input_blocks.1.0.", ch, ch, temb)
    _transformer(put, f"{p}input_blocks.1.1.", ch, context)
    _resblock(put, f"{p}middle_block.0.", ch, ch, temb)  # SD2's middle block: resnet, transformer, resnet
    _transformer(put, f"{p}middle_block.1.", ch, context)
    _resblock(put, f"{p}middle_block.2.", ch, ch, temb)
    for i in (0, 1):  # the decoder half: each takes the skip from input_blocks.{1 - i}
        _resblock(put, f"{p}output_blocks.{i}.0.", 2 * ch, ch, temb)
        _transformer(put, f"{p}output_blocks.{i}.1.", ch, context)
    put(f"{p}out.0.weight", ch, kind="norm")
    put(f"{p}out.0.bias", ch, kind="zero")
    put(f"{p}out.2.weight", 4, ch, 3, 3)
    put(f"{p}out.2.bias", 4, kind="zero")


def _resblock(put, p: str, cin: int, cout: int, temb: int) -> None:
    put(f"{p}in_layers.0.weight", cin, kind="norm")
    put(f"{p}in_layers.0.bias", cin, kind="zero")
    put(f"{p}in_layers.2.weight", cout, cin, 3, 3)
    put(f"{p}in_layers.2.bias", cout, kind="zero")
    put(f"{p}emb_layers.1.weight", cout, temb)
    put(f"{p}emb_layers.1.bias", cout, kind="zero")
    put(f"{p}out_layers.0.weight", cout, kind="norm")
    put(f"{p}out_layers.0.bias", cout, kind="zero")
    put(f"{p}out_layers.3.weight", cout, cout, 3, 3)
    put(f"{p}out_layers.3.bias", cout, kind="zero")
    if cin != cout:
        put(f"{p}skip_connection.weight", cout, cin, 1, 1)
        put(f"{p}skip_connection.bias", cout, kind="zero")


def _transformer(put, p: str, ch: int, context: int) -> None:
    put(f"{p}norm.weight", ch, kind="norm")
    put(f"{p}norm.bias", ch, kind="zero")
    put(f"{p}proj_in.weight", ch, ch)  # 2-D: use_linear_in_transformer
    put(f"{p}proj_in.bias", ch, kind="zero")
    b = f"{p}transformer_blocks.0."
    for attn, kv_dim in (("attn1", ch), ("attn2", context)):
        put(f"{b}{attn}.to_q.weight", ch, ch)
        put(f"{b}{attn}.to_k.weight", ch, kv_dim)
        put(f"{b}{attn}.to_v.weight", ch, kv_dim)
        put(f"{b}{attn}.to_out.0.weight", ch, ch)
        put(f"{b}{attn}.to_out.0.bias", ch, kind="zero")
    put(f"{b}ff.net.0.proj.weight", ch * 8, ch)  # GEGLU: 2 x 4 x ch
    put(f"{b}ff.net.0.proj.bias", ch * 8, kind="zero")
    put(f"{b}ff.net.2.weight", ch, ch * 4)
    put(f"{b}ff.net.2.bias", ch, kind="zero")
    for n in (1, 2, 3):
        put(f"{b}norm{n}.weight", ch, kind="norm")
        put(f"{b}norm{n}.bias", ch, kind="zero")
    put(f"{p}proj_out.weight", ch, ch)
    put(f"{p}proj_out.bias", ch, kind="zero")


def _sd_vae(sd: dict, g: torch.Generator, dtype) -> None:
    """The SD 1/2 VAE at full size, LDM names under first_stage_model."""
    from addsr_core.loading.keymaps import diffusers_vae_to_ldm
    from addsr_core.models import AutoencoderKL
    from addsr_core.models.config import SD2_VAE

    vae = randomize(AutoencoderKL(SD2_VAE), g)
    ldm = diffusers_vae_to_ldm(vae.state_dict())
    sd.update({k: v.to(dtype).contiguous() for k, v in ldm.items()})


def _openclip_h_text(put, p: str, width: int = 1024, layers: int = 24, vocab: int = 49408, ctx: int = 77) -> None:
    """OpenCLIP ViT-H/14 text tower as SD 2 checkpoints store it (cond_stage_model.model.*)."""
    put(f"{p}token_embedding.weight", vocab, width)
    put(f"{p}positional_embedding", ctx, width)
    for i in range(layers):
        r = f"{p}transformer.resblocks.{i}."
        put(f"{r}ln_1.weight", width, kind="norm")
        put(f"{r}ln_1.bias", width, kind="zero")
        put(f"{r}attn.in_proj_weight", 3 * width, width)
        put(f"{r}attn.in_proj_bias", 3 * width, kind="zero")
        put(f"{r}attn.out_proj.weight", width, width)
        put(f"{r}attn.out_proj.bias", width, kind="zero")
        put(f"{r}ln_2.weight", width, kind="norm")
        put(f"{r}ln_2.bias", width, kind="zero")
        put(f"{r}mlp.c_fc.weight", 4 * width, width)
        put(f"{r}mlp.c_fc.bias", 4 * width, kind="zero")
        put(f"{r}mlp.c_proj.weight", width, 4 * width)
        put(f"{r}mlp.c_proj.bias", width, kind="zero")
    put(f"{p}ln_final.weight", width, kind="norm")
    put(f"{p}ln_final.bias", width, kind="zero")
    put(f"{p}text_projection", width, width)
    put(f"{p}logit_scale", kind="zero")


# ---------------------------------------------------------------------------------------------
# Other model families register here: one writer per loader node type (see register_loader).
# A family whose loaders are not registered makes install_tiny_models fail loudly.


_STABLESR_FILES: dict[str, dict] = {}  # target name -> tiny files written this session


def comfy_sd2_unet() -> dict:
    """The UNet tensors (``model.diffusion_model.*``) of :func:`comfy_sd2_checkpoint`: what a real
    host's CheckpointLoaderSimple gives as the MODEL."""
    from safetensors import safe_open

    with safe_open(str(comfy_sd2_checkpoint()), framework="pt", device="cpu") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith("model.diffusion_model.")}


def tiny_stablesr_files(target: TinyTarget) -> dict:
    """The tiny StableSR files for ``target`` (written once per session; both loaders share them).

    INPROCESS: the fixed tiny architecture at the stand-in CLIP's width (the stand-in
    CheckpointLoaderSimple gives no MODEL a StableSR module could sit on). COMFYUI: built for the
    UNet of the SD 2 checkpoint the server loads (:func:`comfy_sd2_unet`), so a workflow that
    connects Load Checkpoint's MODEL as ``base_model`` (StableSR-Turbo) runs the real path: its
    SFT layers and encoder fit that UNet, and the full files' UNet is that UNet, as in the releases."""
    from addsr_core.stablesr.tiny import write_tiny_stablesr_files

    if target.name not in _STABLESR_FILES:
        tmp = tempfile.mkdtemp(prefix="addsr-tiny-stablesr-")
        if target.name == INPROCESS.name:
            written = write_tiny_stablesr_files(tmp, context_dim=target.text_width)
        else:
            written = write_tiny_stablesr_files(tmp, base_unet=comfy_sd2_unet())
            assert written["context_dim"] == target.text_width, (written["context_dim"], target)
        _STABLESR_FILES[target.name] = written["files"]
    return _STABLESR_FILES[target.name]


def _stablesr_writer(widget_kinds: Mapping[str, str]) -> LoaderWriter:
    """A writer for a StableSR loader: tiny files from addsr_core.stablesr.tiny, placed under the
    names the node's widgets ask for (``widget_kinds``: widget -> key of TINY_FILES)."""
    def write(models_dir: Path, values: Mapping, target: TinyTarget) -> dict:
        from addsr_core.stablesr.tiny import TINY_FILES

        out = {}
        written = tiny_stablesr_files(target)
        for widget, kind in widget_kinds.items():
            name = values.get(widget)
            if not name or name == "none":
                continue
            if name in TINY_FILES.values():  # asked for a tiny file by its own name
                kind = next(k for k, v in TINY_FILES.items() if v == name)
            elif "768" in name and kind == "full":
                kind = "full_768v"  # v-prediction is told by the file name
            source = written[kind]
            dest = models_dir / source.parent.name / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
            out[widget] = dest
        return out

    return write


def _register_stablesr() -> None:
    try:
        from addsr_core.stablesr.tiny import write_tiny_stablesr_files  # noqa: F401
    except ImportError:
        return
    register_loader("StableSRModelLoader", _stablesr_writer({"model": "full"}))
    register_loader("StableSRCFWLoader", _stablesr_writer({"cfw_file": "cfw"}))


_register_stablesr()
