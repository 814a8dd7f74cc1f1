"""Fake CUDA: run the library's GPU path with no GPU (PyTorch fake tensors), checked and accounted.

Used by ``tools/gpu_dryrun.py`` (full-size networks, a CUDA build of torch) and by
``tests/test_fake_cuda.py`` (tiny networks, the CPU wheel). Fake tensors carry shape, dtype,
strides and device but no data: every operator runs its shape function, so a whole upscale costs
seconds of CPU at any size, and what would go wrong on a GPU before any number is computed shows:

- a tensor on the wrong device: fake tensors raise ``FakeTensorDeviceMismatchError`` when a CPU
  and a CUDA tensor meet (0-d CPU tensors excepted, as on a GPU);
- a host sync: reading a value (``.item()``, ``bool()``, ``.tolist()``, ``nonzero``, ...) raises
  inside fake mode; :class:`DeviceMemory` also refuses a device-to-host copy in a stage marked
  sync-free (the sampling loop);
- a network computing in another dtype than promised, or on the host: every convolution, matmul
  and attention is checked against the stage's expected dtype and device.

Memory: :class:`DeviceMemory` sees every operator's outputs and counts each CUDA storage once while
it lives (``weakref`` on the storage; rounded up to the caching allocator's 512-byte blocks), with
the peak per stage. That is what ``torch.cuda.max_memory_allocated`` counts: tensors, not the
allocator's reserved-but-free blocks, the cuDNN/cuBLAS workspaces or a kernel's own scratch.

Two choices a real GPU makes from its hardware are made here as a current NVIDIA GPU makes them
(fake mode has no GPU to ask): scaled-dot-product attention takes the fused kernel (flash for
bf16/fp16 without a mask on sm80+, else memory-efficient; fake mode alone would take the math
path and hold the whole attention matrix), and a convolution with a channels_last input or weight
returns channels_last as cuDNN does. The device queries the precision policy makes
(``torch.cuda.is_bf16_supported``, ``get_device_capability``, ``mem_get_info``, ...) answer as the
simulated GPU (:data:`GPUS`).

Networks are built on the ``meta`` device by their own constructors, given the dtype and layout
by the library's own :func:`~addsr_core.precision.apply_precision`, then materialised as fake
CUDA storage of the same shapes, dtypes and strides (:func:`materialize`): ``Module.to`` cannot
swap fake parameters, and random initialisation has no fake CUDA kernel in the CPU wheel.
"""
from __future__ import annotations

import math
import traceback
import weakref
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

REPO = Path(__file__).resolve().parents[1]
GiB = 2**30
ALLOC_BLOCK = 512  # the CUDA caching allocator rounds every block up to this

aten = torch.ops.aten


@dataclass(frozen=True)
class SimulatedGPU:
    name: str
    capability: tuple
    total_gib: float
    bf16: bool

    @property
    def flash_attention(self) -> bool:
        return self.capability >= (8, 0)  # FlashAttention-2 kernels: sm80 and newer


# What a CUDA context, cuBLAS and cuDNN hold outside PyTorch's allocator (typically 0.3-0.6 GiB):
# the simulated card reports it used.
CUDA_CONTEXT_GIB = 0.5

GPUS = {
    "ampere": SimulatedGPU("NVIDIA A100-SXM4-80GB (simulated)", (8, 0), 79.3, True),
    "turing": SimulatedGPU("Tesla T4 (simulated)", (7, 5), 14.6, False),
}


# --- where an operator was called from -----------------------------------------------------------


def caller_line(frames: Optional[Iterable] = None) -> str:
    """The innermost frame in this repository's library code (not tools/ or tests/): 'file:line in fn'."""
    frames = list(frames if frames is not None else traceback.extract_stack())
    best = None
    for frame in frames:
        path = Path(frame.filename)
        try:
            rel = path.resolve().relative_to(REPO)
        except ValueError:
            continue
        if rel.parts and rel.parts[0] in ("addsr_core", "nodes"):
            best = f"{rel}:{frame.lineno} in {frame.name}"
    if best is None:  # nothing of ours: the innermost repo frame at all
        for frame in frames:
            try:
                rel = Path(frame.filename).resolve().relative_to(REPO)
            except ValueError:
                continue
            best = f"{rel}:{frame.lineno} in {frame.name}"
    return best or "<outside the repository>"


def exception_line(err: BaseException) -> str:
    return caller_line(traceback.extract_tb(err.__traceback__))


# --- the accounting and checking dispatch mode -----------------------------------------------------

COMPUTE_OPS = {
    getattr(aten, name).default for name in (
        "convolution", "mm", "addmm", "bmm", "baddbmm", "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
    ) if hasattr(aten, name)
}
CONV_OPS = {aten.convolution.default}
COPY_OPS = {aten._to_copy.default, aten.copy_.default}


class HostSyncError(RuntimeError):
    """A value read back to the host (or a device-to-host copy) where the GPU must not wait."""


@dataclass
class StageStats:
    calls: int = 0
    peak: int = 0  # the most live CUDA bytes while the stage ran
    live_at_start: int = 0  # at the first call
    working: int = 0  # the most bytes a call added above what was live when it began
    seconds: float = 0.0


@dataclass
class Violation:
    kind: str
    where: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.where}: {self.detail}"


@dataclass
class _Stage:
    name: str
    dtype: Optional[torch.dtype]  # the dtype its networks must compute in; None: not a network stage
    sync_free: bool
    start: int


class DeviceMemory(TorchDispatchMode):
    """Counts live CUDA storage bytes (per stage peaks) and checks each operator (see the module doc).

    Enter it inside a :class:`FakeTensorMode` on fake CUDA (it must see every tensor created);
    on ``meta`` on its own."""

    def __init__(self, gpu: SimulatedGPU = GPUS["ampere"], device_type: str = "cuda", channels_last_convs: bool = True,
                 placeholder_reads: bool = False):
        super().__init__()
        self.gpu, self.device_type = gpu, device_type
        # On fake CPU (the trainer's stand-in for the GPU) only fake tensors are the device's, and
        # only host scalars stay real (an optimiser's step count, the grad scaler's scale).
        self.fake_cpu = device_type == "cpu"
        # A value read from the device outside sync-free stages (the trainer's loss logs, the fp16
        # grad scaler's inf check) answers 0 / False and is counted, instead of failing: those
        # reads are real syncs on a GPU, once per step, and no value steers what is allocated.
        self.placeholder_reads, self.reads = placeholder_reads, 0
        self.uploads: dict[str, int] = {}  # host-to-device copies inside sync-free stages, per line
        self.channels_last_convs = channels_last_convs
        self.live: dict[int, int] = {}
        self._refs: dict[int, weakref.ref] = {}
        self.current = self.peak = 0
        self.stats: dict[str, StageStats] = {}
        self.order: list[str] = []
        self.stack: list[_Stage] = []
        self.violations: list[Violation] = []
        self._seen_violations: set = set()
        self.convs = {"nhwc": 0, "nchw": 0}

    # -- stages --
    @contextmanager
    def stage(self, name: str, dtype: Optional[torch.dtype] = None, sync_free: Optional[bool] = None):
        """Attribute what runs inside to ``name``; ``dtype``: its networks' promised dtype (checked);
        ``sync_free``: no value may come back to the host (default: inherited)."""
        import time

        parent = self.stack[-1] if self.stack else None
        if dtype is None and parent is not None:
            dtype = parent.dtype
        if sync_free is None:
            sync_free = parent.sync_free if parent is not None else False
        stats = self.stats.get(name)
        if stats is None:
            stats = self.stats[name] = StageStats(live_at_start=self.current)
            self.order.append(name)
        stats.calls += 1
        stats.peak = max(stats.peak, self.current)
        entry = _Stage(name, dtype, sync_free, self.current)
        self.stack.append(entry)
        start = time.perf_counter()
        try:
            yield stats
        finally:
            self.stack.pop()
            stats.seconds += time.perf_counter() - start

    def wrap(self, name: str, fn: Callable, **stage_kwargs) -> Callable:
        def staged(*args, **kwargs):
            with self.stage(name, **stage_kwargs):
                return fn(*args, **kwargs)

        return staged

    # -- accounting --
    def _track(self, t) -> None:
        if not isinstance(t, torch.Tensor) or t.device.type != self.device_type:
            return
        if self.fake_cpu and not isinstance(t, FakeTensor):
            return
        storage = t.untyped_storage()
        key = id(storage)
        size = -(-storage.nbytes() // ALLOC_BLOCK) * ALLOC_BLOCK
        if key in self.live:
            if self.live[key] == size:
                return
            self.current -= self.live[key]  # resized in place
        else:
            self._refs[key] = weakref.ref(storage, lambda _, key=key: self._free(key))
        self.live[key] = size
        self.current += size
        if self.current > self.peak:
            self.peak = self.current
        for entry in self.stack:
            stats = self.stats[entry.name]
            stats.peak = max(stats.peak, self.current)
            stats.working = max(stats.working, self.current - entry.start)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)
        self._refs.pop(key, None)

    def track_existing(self, tensors: Iterable[torch.Tensor]) -> None:
        for t in tensors:
            self._track(t)

    @property
    def live_bytes(self) -> int:
        return self.current

    # -- checks --
    def _violation(self, kind: str, detail: str) -> None:
        where = caller_line()
        if (kind, where) in self._seen_violations:
            return
        self._seen_violations.add((kind, where))
        self.violations.append(Violation(kind, where, detail))

    def _check(self, func, args, kwargs) -> None:
        stage = self.stack[-1] if self.stack else None
        if func is aten._local_scalar_dense.default or func is aten.nonzero.default:
            if stage is not None and stage.sync_free and args[0].device.type == self.device_type:
                raise HostSyncError(f"a value is read back to the host ({func}) inside {stage.name!r} at {caller_line()}")
            return
        if func in COPY_OPS and stage is not None and stage.sync_free:
            src = args[1] if func is aten.copy_.default else args[0]
            dst_cpu = (args[0].device.type == "cpu") if func is aten.copy_.default else \
                (kwargs.get("device") is not None and torch.device(kwargs["device"]).type == "cpu")
            if isinstance(src, torch.Tensor) and src.device.type == self.device_type and dst_cpu and src.numel() > 1:
                raise HostSyncError(f"a device-to-host copy of {tuple(src.shape)} inside {stage.name!r} at {caller_line()}")
            if isinstance(src, torch.Tensor) and src.device.type == "cpu" and not dst_cpu:
                # From pageable memory a blocking copy waits for the stream: counted, not refused
                # (no value steers anything; the cost is a bubble of a few kernel launches).
                self.uploads[caller_line()] = self.uploads.get(caller_line(), 0) + 1
        if func in COMPUTE_OPS and stage is not None and stage.dtype is not None:
            tensors = [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor) and a.is_floating_point()]
            devices = {t.device.type for t in tensors}
            if self.device_type not in devices:
                self._violation("host compute", f"{func} ran on {sorted(devices)} in stage {stage.name!r}")
            dtypes = {t.dtype for t in tensors if t.dim() > 0}
            if dtypes - {stage.dtype}:
                self._violation("dtype", f"{func} computes in {sorted(map(str, dtypes))}, stage {stage.name!r} "
                                         f"promised {stage.dtype}")

    # -- dispatch --
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        if func is aten._local_scalar_dense.default and self.placeholder_reads and isinstance(args[0], FakeTensor) \
                and not (self.stack and self.stack[-1].sync_free):
            self.reads += 1
            return False if args[0].dtype == torch.bool else 0 if not args[0].is_floating_point() else 0.0
        if self._on_host(func, args, tensors, kwargs):
            # Real host data stays real (the tokenizer's ids, a schedule, the CPU noise draws):
            # computed on the CPU as it would be, so host-side code reads real values.
            with unset_fake_temporarily():
                return func(*args, **kwargs)
        self._check(func, args, kwargs)
        out = func(*args, **kwargs)
        if func in CONV_OPS:
            out = self._conv_layout(args, out)
        for t in tree_leaves(out):
            self._track(t)
        return out

    def _on_host(self, func, args, tensors, kwargs) -> bool:
        """Host work stays real: a CPU factory (a noise draw from a CPU generator, a schedule, a
        blend weight), or an op on real CPU tensors only. On fake CPU, factories stay real only
        for scalars."""
        device = kwargs.get("device")
        if device is not None and torch.device(device).type != "cpu":
            return False
        if self.fake_cpu and not tensors:
            size = args[0] if args and isinstance(args[0], (list, tuple)) else None
            return size is not None and math.prod(int(v) for v in size) <= 1
        return not any(isinstance(t, FakeTensor) for t in tensors) and all(t.device.type == "cpu" for t in tensors)

    def _conv_layout(self, args, out):
        """cuDNN's choice: NHWC output when the input or the weight is NHWC (fake mode without a
        GPU falls back to the slow kernels' NCHW)."""
        x, w = args[0], args[1]
        if out.dim() != 4 or out.device.type != self.device_type:
            return out
        nhwc = _is_nhwc(x) or _is_nhwc(w)
        self.convs["nhwc" if nhwc else "nchw"] += 1
        if nhwc and self.channels_last_convs and not out.is_contiguous(memory_format=torch.channels_last):
            return torch.empty_like(out, memory_format=torch.channels_last)
        return out


def _is_nhwc(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.shape[1] > 1 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


# --- attention: the fused kernel a GPU takes ----------------------------------------------------------


def fused_sdpa(gpu: SimulatedGPU, device_type: str = "cuda"):
    """``F.scaled_dot_product_attention`` as a current NVIDIA GPU runs it: FlashAttention for
    bf16/fp16 without a mask on sm80+ (head size <= 256), else the memory-efficient kernel. Fake
    mode without a GPU would take the math path (the whole [queries x keys] matrix in memory)."""
    original = F.scaled_dot_product_attention

    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if q.device.type != device_type or enable_gqa or not (device_type == "meta" or isinstance(q, FakeTensor)):
            return original(q, k, v, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
        squeeze = q.dim() == 3
        if squeeze:
            q, k, v = q[:, None], k[:, None], v[:, None]
            attn_mask = None if attn_mask is None else attn_mask[:, None] if attn_mask.dim() == 3 else attn_mask
        d, dv = q.shape[-1], v.shape[-1]
        if (gpu.flash_attention and attn_mask is None and q.dtype in (torch.float16, torch.bfloat16)
                and d == dv and d <= 256 and d % 8 == 0):
            out = aten._scaled_dot_product_flash_attention(q, k, v, dropout_p, is_causal, False, scale=scale)[0]
        else:
            bias = None
            if attn_mask is not None:
                bias = attn_mask if attn_mask.dtype != torch.bool else \
                    torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(~attn_mask, float("-inf"))
                bias = bias.to(q.dtype).expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
            grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
            out = aten._scaled_dot_product_efficient_attention(q, k, v, bias, grad, dropout_p, is_causal, scale=scale)[0]
        return out[:, 0] if squeeze else out

    return sdpa


# --- the simulated device ------------------------------------------------------------------------------


@contextmanager
def simulated_gpu(gpu: SimulatedGPU, device_type: str = "cuda", used: Callable[[], int] = lambda: 0):
    """torch.cuda's device queries answer as ``gpu`` (what the precision policy and the tile
    defaults ask). ``mem_get_info`` reports the card's total, less :data:`CUDA_CONTEXT_GIB` and
    ``used()`` (the live tensor bytes); the caching allocator holds nothing unused.

    ``torch.cuda.is_available()`` stays False here: fake mode reads it to decide whether it may
    touch the real device (it then constant-folds small tensors on it). Wrap the one call that
    asks (the CLI's device choice) in :func:`cuda_reported_available`."""
    total = int(gpu.total_gib * GiB)
    props = mock.Mock(name=gpu.name, major=gpu.capability[0], minor=gpu.capability[1], total_memory=total)
    props.name = gpu.name

    def mem_get_info(*args, **kwargs):
        return max(0, total - int(CUDA_CONTEXT_GIB * GiB) - used()), total

    with ExitStack() as stack:
        for name, value in {
            "device_count": lambda: 1,
            "current_device": lambda: 0,
            "is_bf16_supported": lambda *a, **k: gpu.bf16,
            "get_device_capability": lambda *a, **k: gpu.capability,
            "get_device_name": lambda *a, **k: gpu.name,
            "get_device_properties": lambda *a, **k: props,
            "mem_get_info": mem_get_info,
            "memory_reserved": lambda *a, **k: used(),
            "memory_allocated": lambda *a, **k: used(),
            "synchronize": lambda *a, **k: None,
            "empty_cache": lambda: None,
        }.items():
            stack.enter_context(mock.patch.object(torch.cuda, name, value))
        stack.enter_context(mock.patch.object(F, "scaled_dot_product_attention", fused_sdpa(gpu, device_type)))
        yield gpu


@contextmanager
def cuda_reported_available():
    """``torch.cuda.is_available()`` True, for a caller that picks its device from it."""
    with mock.patch.object(torch.cuda, "is_available", lambda: True):
        yield


@dataclass
class FakeRun:
    """One run on a fake device: where, its fake mode (None on ``meta``) and its :class:`DeviceMemory`."""

    device_type: str
    fake: Optional[FakeTensorMode]
    memory: "DeviceMemory"

    def from_host(self, real: torch.Tensor, device) -> torch.Tensor:
        """A real host tensor as this run's tensor on ``device`` (a host-to-device copy)."""
        return (self.fake.from_tensor(real) if self.fake is not None else real).to(device)

    def host_function(self, fn: Callable, make_input: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
        """``fn`` run on real CPU data (its first argument replaced by ``make_input(arg)``, a real
        tensor of the same shape), its result returned on the first argument's device: a stage
        that runs on the host by design (PIL), whose values no fake tensor can give."""

        def run(first, *args, **kwargs):
            with on_host():
                result = fn(make_input(first), *args, **kwargs)
            return self.from_host(result, first.device)

        return run


@contextmanager
def fake_device(device_type: str = "cuda", gpu: SimulatedGPU = GPUS["ampere"]):
    """A run on fake ``cuda`` (fake tensors, the simulated ``gpu``; needs a CUDA build of torch for
    anything beyond plain tensor ops: the CPU wheel lacks CUDA's device guard, which indexing uses)
    or on ``meta`` (any build: no data either, a CPU tensor meeting it raises, no value can be
    read; no fused attention or cuDNN layouts). Yields a :class:`FakeRun`."""
    if device_type not in ("cuda", "meta", "cpu"):
        raise ValueError(f"fake devices are cuda, cpu and meta, not {device_type!r}")
    memory = DeviceMemory(gpu, device_type)
    with ExitStack() as stack:
        fake = None
        if device_type in ("cuda", "cpu"):
            stack.enter_context(simulated_gpu(gpu, device_type, lambda: memory.current))
            fake = stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
        else:  # meta: the fused attention kernels' shape functions, as on the GPU
            stack.enter_context(mock.patch.object(F, "scaled_dot_product_attention", fused_sdpa(gpu, device_type)))
        stack.enter_context(memory)
        yield FakeRun(device_type, fake, memory)


@contextmanager
def on_host():
    """Real tensors again (e.g. the PIL preparation, which reads pixel values by design)."""
    with unset_fake_temporarily():
        yield


# --- networks on fake CUDA ------------------------------------------------------------------------------


def build_on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    """``factory()`` with every parameter and buffer on ``meta`` (no memory, no initialisation)."""
    with unset_fake_temporarily(), torch.device("meta"):
        return factory()


def materialize(module: nn.Module, device="cuda") -> nn.Module:
    """Replace every meta parameter and buffer by a fake tensor on ``device`` with the same shape,
    dtype and strides (call inside fake mode, so the memory is counted)."""
    device = torch.device(device)
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None:
                sub._parameters[name] = nn.Parameter(_empty_like(p, device), requires_grad=p.requires_grad)
        for name, b in list(sub._buffers.items()):
            if b is not None:
                sub._buffers[name] = _empty_like(b, device)
    return module


def _empty_like(t: torch.Tensor, device) -> torch.Tensor:
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device)


def gib(n: int) -> float:
    return n / GiB


def format_table(memory: DeviceMemory) -> str:
    rows = [("stage", "calls", "peak GiB", "live at start GiB", "working GiB", "CPU s")]
    for name in memory.order:
        s = memory.stats[name]
        rows.append((name, str(s.calls), f"{gib(s.peak):.2f}", f"{gib(s.live_at_start):.2f}", f"{gib(s.working):.2f}",
                     f"{s.seconds:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


__all__ = [
    "GPUS", "SimulatedGPU", "DeviceMemory", "HostSyncError", "Violation", "StageStats", "FakeRun", "fake_device",
    "simulated_gpu", "cuda_reported_available", "on_host", "build_on_meta", "materialize", "fused_sdpa", "caller_line", "exception_line",
    "format_table", "gib", "GiB",
]
