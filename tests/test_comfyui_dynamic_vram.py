"""DynamicVRAM (ComfyUI 0.16+, on by default on NVIDIA GPUs), simulated with the real ``comfy`` on the CPU host.

With ``comfy.memory_management.aimdo_enabled`` set before our networks are built, as main.py sets
it, ``comfy.ops`` builds every Linear without weights until ``load_state_dict``. Every loader of the
pack must still load strictly, register with the host's CoreModelPatcher, and give the same outputs
bit for bit as with the flag off. Runs in a fresh interpreter (tests/comfy_host/dynamic_vram.py).
The shipped workflows under the same switch, through a real server: tests/test_workflows.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from comfy_host.fixtures import COMFYUI_PATH, requires_comfyui
from comfy_host.server import stub_paths

pytestmark = [pytest.mark.comfyui, pytest.mark.dynamic_vram, requires_comfyui]
SCRIPT = Path(__file__).parent / "comfy_host" / "dynamic_vram.py"
LOADERS = ("addsr_model", "ram", "vae", "stablesr_model", "cfw_vae")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*stub_paths(sys.executable), *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run([sys.executable, str(SCRIPT), COMFYUI_PATH, str(tmp_path_factory.mktemp("dynamic_vram"))],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_loader_builds_its_linear_layers_without_weights_under_dynamic_vram(report):
    assert report["lazy_linears"]["off"] == dict.fromkeys(LOADERS, 0)
    assert set(report["lazy_linears"]["on"]) == set(LOADERS)
    assert all(count > 0 for count in report["lazy_linears"]["on"].values()), report["lazy_linears"]


def test_every_network_is_registered_with_the_hosts_core_model_patcher(report):
    assert report["core_requests"]["on"] == ["ModelPatcherDynamic"] * 6, report["core_requests"]
    assert report["core_requests"]["off"] == ["ModelPatcher"] * 6
    # UNet and ControlNet, RAM, VAE, StableSR, CFW. ComfyUI's own rule: a CPU load device gets the plain ModelPatcher even under DynamicVRAM.
    assert set(report["patchers"]["on"].values()) == {"ModelPatcher"}


def test_outputs_under_dynamic_vram_are_bit_identical(report):
    assert report["identical"] == {"moments": True, "tokens": True, "z0": True, "stablesr_z0": True,
                                   "stablesr_image": True}
