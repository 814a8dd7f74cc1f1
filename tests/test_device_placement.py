"""Every pipeline's tensors stay on the compute device: the tiny AddSR, SeeSR and StableSR upscales run
end to end on the ``meta`` device (tools/gpu_dryrun.py --tiny --device meta, any torch build), where a
tensor created on the CPU and meeting the pipeline's raises, and no value can be read back.

The same harness runs the full-size networks on fake CUDA with a CUDA build (docs/gpu.md); these
tests keep the placement true in CI with the CPU wheel, and prove each check can fail."""
from __future__ import annotations

import sys

import pytest
import torch

from conftest import REPO

if str(REPO / "tools") not in sys.path:
    sys.path.insert(0, str(REPO / "tools"))

import fake_cuda  # noqa: E402
import gpu_dryrun  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

TILED = ["--latent-tile", "320", "--vae-tile", "256"]  # several diffusion and VAE tiles at 512²


def dryrun(capsys, *args) -> tuple[int, str]:
    rc = gpu_dryrun.main(["--tiny", "--device", "meta", "--size", "512", *args])
    return rc, capsys.readouterr().out


@pytest.mark.parametrize("family, extra", [
    ("addsr", ["--steps", "2", "--dtype", "fp32", *TILED]),
    ("addsr", ["--steps", "1", "--dtype", "bf16"]),  # low precision: NHWC layouts, the bf16 promise checked
    ("seesr", ["--steps", "1", "--dtype", "fp32", *TILED]),  # CFG: batch 2 per call
    ("stablesr", ["--steps", "2", "--dtype", "fp32", "--latent-tile", "384"]),  # 48-latent tiles, overlap 32
])
def test_tiny_pipelines_stay_on_the_device(capsys, family, extra):
    rc, out = dryrun(capsys, "--family", family, *extra)
    assert rc == 0, out
    assert "output (1, 3, 512, 512)" in out
    lines = out.strip().splitlines()
    assert lines[-1].startswith("peak VRAM estimate: ") and "FAILED" not in out
    assert "sample" in out  # the sampling stage ran (and was checked sync-free)


def test_a_cpu_tensor_in_the_sampler_fails_naming_the_line(capsys, monkeypatch):
    import addsr_core.addsr.sampler as sampler

    real = sampler.predict_z0
    monkeypatch.setattr(sampler, "predict_z0", lambda z, eps, a: real(z, eps, a) + torch.zeros(z.shape))  # wrong device
    rc, out = dryrun(capsys, "--family", "addsr", "--steps", "1", "--dtype", "fp32")
    assert rc == 1
    assert "FAILED: RuntimeError at addsr_core/addsr/sampler.py:" in out and "sample_addsr" in out
    assert "not on the expected device meta" in out


def test_a_value_read_inside_sampling_fails_naming_the_line(capsys, monkeypatch):
    import addsr_core.seesr.sampler as sampler

    real = sampler.sample_ddpm

    def syncing(model, x, *args, **kwargs):
        return real(lambda x, t: model(x, t) * float(x.abs().max()), x, *args, **kwargs)  # a host sync per step

    monkeypatch.setattr(sampler, "sample_ddpm", syncing)
    rc, out = dryrun(capsys, "--family", "seesr", "--steps", "1", "--dtype", "fp32")
    assert rc == 1
    assert "FAILED: HostSyncError at addsr_core/sampling/ddpm.py:" in out  # the library line that called it
    assert "inside 'sample'" in out


def test_a_network_computing_in_another_dtype_fails(capsys, monkeypatch):
    import torch.nn.functional as F

    from addsr_core.models import layers

    def upcast(self, x):  # a layer that silently computes in float32 inside a bf16 network
        p = self.proj
        h, gate = F.linear(x.float(), p.weight.float(), p.bias.float()).chunk(2, dim=-1)
        return (h * F.gelu(gate)).to(x.dtype)

    monkeypatch.setattr(layers.GEGLU, "forward", upcast)
    rc, out = dryrun(capsys, "--family", "addsr", "--steps", "1", "--dtype", "bf16")
    assert rc == 1
    problem = next(line for line in out.splitlines() if line.strip().startswith("dtype: "))
    assert "addsr_core/models/layers.py:" in problem and "promised torch.bfloat16" in problem


def test_memory_accounting_counts_each_storage_once_while_it_lives():
    with fake_cuda.fake_device("meta") as run:
        memory = run.memory
        with memory.stage("a") as stats:
            x = torch.empty(1000, device="meta")  # 4000 B -> 4096 (512-byte blocks)
            view = x[10:]  # the same storage
            y = torch.empty(256, device="meta", dtype=torch.float16)  # 512 B
            assert memory.live_bytes == 4096 + 512
            del x, view
            assert memory.live_bytes == 512
        cpu = torch.empty(10**6)  # host memory is not the device's
        assert memory.live_bytes == 512 and stats.peak == 4096 + 512 and stats.working == 4096 + 512
        del y, cpu
        assert memory.live_bytes == 0 and memory.peak == 4096 + 512
