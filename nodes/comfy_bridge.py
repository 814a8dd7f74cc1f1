"""The ComfyUI bridge: everything that touches ComfyUI lives here, each import inside a function.

Model folders, devices and dtypes, memory management, progress and Cancel, and the one place where
the library's errors become the errors ComfyUI shows (:func:`node_errors`). Without ComfyUI (tests,
the CLI) every function falls back to plain behaviour: CPU devices, a no-op progress bar, no
interruption.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
from pathlib import Path

import torch

from addsr_core.errors import AddSRError

log = logging.getLogger("addsr")

MODEL_FOLDERS = ("addsr", "ram", "stablesr")
WEIGHT_EXTENSIONS = {".safetensors", ".sft", ".pth", ".pt", ".bin", ".ckpt"}


# ---------------------------------------------------------------------------------------------
# Errors the user can fix


class AddSRInputError(AddSRError):
    """A problem with what the user wired, typed or picked; ComfyUI shows the message in the UI."""


class ModelFileNotFoundError(AddSRInputError, FileNotFoundError):
    """A picked model file that is not (or no longer) in its model folders."""


class ComfyUIImportError(AddSRError):
    """ComfyUI is installed, but one of its modules failed to import."""


def comfy_module(name: str):
    """ComfyUI's module ``name`` (``"comfy.model_management"``, ``"folder_paths"``...), or None
    where ComfyUI is not installed at all (the CLI, the library's tests): every caller then falls
    back to plain torch. ComfyUI present but failing to import raises ComfyUIImportError: running
    on without ComfyUI's memory management would hide the failure until memory runs out."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name == name.split(".")[0]:
            return None
        raise ComfyUIImportError(_import_failure(name, err)) from err
    except Exception as err:
        raise ComfyUIImportError(_import_failure(name, err)) from err


def _import_failure(name: str, err: Exception) -> str:
    return (f"ComfyUI's module {name} failed to import ({type(err).__name__}: {err}), so AddSR cannot hand its "
            "models to ComfyUI's memory management. Check that ComfyUI itself starts cleanly and that its "
            "requirements are installed (pip install -r ComfyUI/requirements.txt), then restart ComfyUI.")


def node_errors(fn):
    """``fn`` (a node's FUNCTION) with every :class:`~addsr_core.errors.AddSRError` it raises
    turned into the error ComfyUI shows for the node: an :class:`AddSRInputError` with the same
    message, raised ``from None`` so no library traceback hangs under it. An AddSRInputError is
    re-raised as it is. Everything else (ComfyUI's InterruptProcessingException, out of memory,
    bugs) passes through untouched."""
    if getattr(fn, "_addsr_node_errors", False):
        return fn

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AddSRInputError:
            raise
        except AddSRError as err:
            raise AddSRInputError(str(err)) from None

    run._addsr_node_errors = True
    return run


def with_node_errors(node_class: type) -> type:
    """Wraps ``node_class``'s FUNCTION in :func:`node_errors` (in place, once); returns the class."""
    name = node_class.FUNCTION
    setattr(node_class, name, node_errors(getattr(node_class, name)))
    return node_class


# ---------------------------------------------------------------------------------------------
# Model folders


def register_model_folders() -> None:
    """models/addsr, models/ram and models/stablesr, plus whatever extra_model_paths.yaml adds under those names."""
    folder_paths = comfy_module("folder_paths")
    if folder_paths is None:
        return
    for name in MODEL_FOLDERS:
        default = os.path.join(folder_paths.models_dir, name)
        if name in folder_paths.folder_names_and_paths:
            paths, exts = folder_paths.folder_names_and_paths[name]
            if default not in paths:
                paths.append(default)
            folder_paths.folder_names_and_paths[name] = (paths, set(exts) | WEIGHT_EXTENSIONS)
        else:
            folder_paths.folder_names_and_paths[name] = ([default], set(WEIGHT_EXTENSIONS))


def model_dirs(kind: str) -> list[Path]:
    """The existing folders of ``kind``: ``ADDSR_<KIND>_DIR`` (os.pathsep-separated), then ComfyUI's
    (models/<kind> and extra_model_paths.yaml). Listing and resolving files: nodes/model_files.py."""
    env = os.environ.get(f"ADDSR_{kind.upper()}_DIR")
    dirs = [Path(p) for p in env.split(os.pathsep)] if env else []
    folder_paths = comfy_module("folder_paths")
    if folder_paths is not None:
        with contextlib.suppress(KeyError):  # a kind ComfyUI has no folder for
            dirs += [Path(p) for p in folder_paths.get_folder_paths(kind)]
    return [d for d in dirs if d.is_dir()]


# ---------------------------------------------------------------------------------------------
# Devices, dtypes and memory


def _model_management():
    return comfy_module("comfy.model_management")


def torch_device() -> torch.device:
    mm = _model_management()
    if mm is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return mm.get_torch_device()


def offload_device() -> torch.device:
    mm = _model_management()
    return torch.device("cpu") if mm is None else mm.unet_offload_device()


_default_offload_device = offload_device  # ManagedModule's ``offload_device`` argument shadows the name


def pick_dtype(choice: str, device: torch.device | None = None) -> torch.dtype:
    """auto: what ComfyUI would pick for a UNet of this size, else fp16 on CUDA and fp32 on CPU."""
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if choice in table:
        return table[choice]
    device = device or torch_device()
    mm = _model_management()
    if mm is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    return mm.unet_dtype(device=device, supported_dtypes=[torch.float16, torch.bfloat16, torch.float32])


def pick_vae_dtype(choice: str, device: torch.device | None = None) -> torch.dtype:
    """Like :func:`pick_dtype`, but auto follows ComfyUI's VAE precision (--fp32-vae, --bf16-vae...)."""
    if choice != "auto":
        return pick_dtype(choice, device)
    device = device or torch_device()
    mm = _model_management()
    return torch.float32 if mm is None else mm.vae_dtype(device=device)


def operations(dtype: torch.dtype | None = None):
    """The layer classes to build a network of weight ``dtype`` from, so ComfyUI can manage it.

    With ComfyUI: what it picks for its own models (``comfy.ops.pick_operations``; our networks
    compute in their weight dtype, so normally ``disable_weight_init``). Their layers carry
    ``comfy_cast_weights``: ComfyUI's ModelPatcher can then load a network partially (--lowvram,
    --novram, little free VRAM), leaving the rest on the offload device and casting those weights
    per forward. Without ComfyUI: None, i.e. the library's torch.nn.
    """
    ops = comfy_module("comfy.ops")
    if ops is None:
        return None
    return ops.pick_operations(dtype, dtype, load_device=torch_device())


class ManagedModule:
    """An nn.Module that ComfyUI loads onto its device and offloads like its own models.

    With ComfyUI it gets the patcher ComfyUI's own loaders use (``CoreModelPatcher``: the
    DynamicVRAM ``ModelPatcherDynamic`` where main.py turned DynamicVRAM on, else ModelPatcher;
    hosts before 0.16 have only ModelPatcher), and only ComfyUI moves its weights (fully,
    partially, or streamed per layer, for modules built from :func:`operations`). Without ComfyUI
    it is simply moved to the torch device when used. ``load_device``/``offload_device`` default
    to the UNet's (a VAE passes the VAE's, which --cpu-vae etc. may change).
    """

    def __init__(self, module: torch.nn.Module, *, load_device: torch.device | None = None,
                 offload_device: torch.device | None = None):
        from addsr_core.precision import apply_layout, host_layout

        self.module = module
        self.patcher = None
        # ComfyUI picks the dtype; the layout follows our policy for it (bf16 NHWC convs: 0.72x the
        # time of contiguous ones for a UNet + ControlNet call on an AMX CPU, measured).
        params = next(module.parameters(), None)
        if params is not None:
            apply_layout(module, host_layout(params.dtype, load_device or torch_device()))
        patching = comfy_module("comfy.model_patcher")
        if patching is not None:
            patcher = getattr(patching, "CoreModelPatcher", patching.ModelPatcher)
            self.patcher = patcher(module, load_device=load_device or torch_device(),
                                   offload_device=offload_device or _default_offload_device())

    @property
    def device(self) -> torch.device:
        """Where the module runs: the device ComfyUI loaded it for (even when part of its weights
        stayed offloaded), else where its weights are."""
        from addsr_core.models.operations import compute_device

        return compute_device(self.module)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype


def load_to_device(managed: list[ManagedModule], memory_required: int = 0) -> torch.device:
    """Ask ComfyUI to make room and load these modules (respects --lowvram/--novram/--cpu); returns
    the device to run them on.

    ComfyUI decides how much of each module goes to the device: all of it, or (modules built from
    :func:`operations`) only part, the rest cast from the offload device per forward. Nothing here
    moves a managed module itself. Without ComfyUI the modules are moved with ``.to(device)``.
    """
    patchers = [m.patcher for m in managed if m.patcher is not None]
    if patchers:
        _model_management().load_models_gpu(patchers, memory_required=memory_required)
    devices = {p.load_device for p in patchers}
    device = devices.pop() if len(devices) == 1 else torch_device()
    for m in managed:
        if m.patcher is None:  # no ComfyUI (or its patcher failed): the plain fallback
            m.module.to(device)
    return device


def soft_empty_cache() -> None:
    mm = _model_management()
    if mm is not None:
        mm.soft_empty_cache()


def is_oom(err: BaseException) -> bool:
    mm = _model_management()
    if mm is not None and isinstance(err, mm.OOM_EXCEPTION):
        return True
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def free_memory(device: torch.device) -> int | None:
    """Bytes ComfyUI can still give on ``device`` (its ``get_free_memory``: free device memory plus
    what PyTorch's allocator holds unused), for the GPU-aware tiles; None off CUDA, where the tiles
    stay the measured CPU defaults."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    mm = _model_management()
    if mm is None:
        from addsr_core.memory import device_free_bytes

        return device_free_bytes(device)
    return int(mm.get_free_memory(device))


def halving(floor: int, step: int = 8):
    """``smaller`` for :func:`retry_smaller_on_oom` over a tile size: half of it, a multiple of
    ``step``, while that stays >= ``floor`` (else None: nothing smaller to try)."""
    def smaller(size: int):
        half = size // 2 // step * step
        return half if half >= floor else None

    return smaller


def retry_smaller_on_oom(run, value, *, smaller, what: str, describe=lambda size: f"{size}px tiles", exhausted=None):
    """``run(value)``; on out-of-memory, again with ``smaller(value)`` (a smaller tile, or options with
    smaller tiles: ``run`` and ``smaller`` are pure, nothing is mutated between tries) until it
    returns None. Past that the OOM is re-raised, or ``exhausted(value)`` (an exception naming what
    to do) is raised from it. ``what`` and ``describe(value)`` word the retry warning."""
    while True:
        try:
            return run(value)
        except Exception as err:
            if not is_oom(err):
                raise
            soft_empty_cache()
            next_value = smaller(value)
            if next_value is None:
                if exhausted is None:
                    raise
                raise exhausted(value) from err
            log.warning("%s out of memory, retrying with %s", what, describe(next_value))
            value = next_value


# ---------------------------------------------------------------------------------------------
# Progress, previews, cancellation


def check_interrupt() -> None:
    """Raises ComfyUI's InterruptProcessingException when the user pressed Cancel."""
    mm = _model_management()
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


class Progress:
    """Progress over ``total`` units; also checks for Cancel at every update."""

    def __init__(self, total: int):
        self.total, self.done, self.bar = max(1, total), 0, None
        utils = comfy_module("comfy.utils")
        if utils is not None:
            self.bar = utils.ProgressBar(self.total)

    def update(self, n: int = 1, preview=None) -> None:
        check_interrupt()
        self.done = min(self.total, self.done + n)
        if self.bar is not None:
            self.bar.update_absolute(self.done, self.total, preview)

    def sampler_hooks(self) -> dict:
        """``on_tile`` / ``on_step`` for the library's samplers: a tick per network call, a latent
        preview per step."""
        return {"on_tile": lambda: self.update(1),
                "on_step": lambda k, total, pred_z0: self.update(0, latent_preview(pred_z0))}


def latent_preview(latent: torch.Tensor, max_size: int = 512):
    """A cheap RGB preview of an (unscaled or scaled) SD latent, in ComfyUI's preview format."""
    formats = comfy_module("comfy.latent_formats")
    if formats is None:
        return None
    from PIL import Image

    factors = torch.tensor(formats.SD15().latent_rgb_factors, dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", latent[0].float().cpu(), factors)
    rgb = ((rgb + 1) / 2).clamp(0, 1).mul(255).byte().numpy()
    return ("JPEG", Image.fromarray(rgb), max_size)
