"""Run a bench as if the CPU had fewer vector instructions: ``--isa avx2`` caps oneDNN (convs,
bf16 matmuls), MKL (fp32 matmuls) and ATen's own kernels (norms, elementwise) at AVX2.

A CPU whose fast path is fp32 is usually AVX2-only (e.g. AMD EPYC before Zen 4): with the caps,
a machine with AVX-512 runs the same kernels such a CPU would (the caches and memory stay this
machine's). Measured on the AMX Xeon: a 2048² fp32 matmul 32 GFLOP/s capped, 33 on an AVX2-only
EPYC. The caps are environment variables read when torch loads, so the process re-executes
itself with them; child processes inherit them.
"""
from __future__ import annotations

import os
import sys

ISA_ENV = {
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
}
ISAS = ("native",) + tuple(ISA_ENV)


def apply_isa(isa: str) -> None:
    """Re-execute this process under ``isa``'s caps unless they are already set (``native``: as is)."""
    if isa == "native":
        return
    env = ISA_ENV[isa]
    if all(os.environ.get(k) == v for k, v in env.items()):
        return
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **env})


def isa_in_effect() -> str:
    """What the kernels may use: ATen's capability and the oneDNN/MKL caps set in the environment."""
    import torch

    caps = {k: os.environ[k] for k in ISA_ENV["avx2"] if k in os.environ}
    return f"aten {torch.backends.cpu.get_cpu_capability()}" + (f", {caps}" if caps else "")
