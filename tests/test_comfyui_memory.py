"""ComfyUI's memory management really manages the pack's networks (issue 10 §5), with the real ``comfy``.

The loader nodes build the UNet, ControlNet, RAM/DAPE and (over a ComfyUI-style VAE) our VAE
from ``comfy.ops``; a ModelPatcher per network; ``comfy_bridge.load_to_device`` only asks
``load_models_gpu``. A run where ComfyUI loads everything partially (every layer flagged
``comfy_cast_weights``, weights left on the offload device and cast per forward) gives the same
encode and sampler outputs as a full load, bit for bit: on one device the casting is the identity
and the layers call the same torch functions. Runs in a fresh interpreter (tests/comfy_host/lowvram.py).
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

pytestmark = [pytest.mark.comfyui, requires_comfyui]
SCRIPT = Path(__file__).parent / "comfy_host" / "lowvram.py"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*stub_paths(sys.executable), *filter(None, [env.get("PYTHONPATH")])])
    work = tmp_path_factory.mktemp("lowvram")
    done = subprocess.run([sys.executable, str(SCRIPT), COMFYUI_PATH, str(work)], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_networks_are_built_from_comfy_ops_and_patched(report):
    assert all(report["patchers"].values()), report["patchers"]
    assert set(report["ops"].values()) == {"comfy.ops"}, report["ops"]


def test_full_load_leaves_the_layers_uncast(report):
    for name, state in report["full"].items():
        assert state["layers"] > 0 and state["cast_layers"] == 0 and not state["lowvram"], (name, state)


def test_partial_load_casts_weights_and_changes_nothing(report):
    for name, state in report["partial"].items():
        assert state["lowvram"] and state["cast_layers"] == state["layers"] > 0, (name, state)
        assert state["device"] == report["load_device"]
    assert report["identical"] == {"z0": True, "moments": True, "tokens": True}, report
    assert report["max_abs_diff"] == 0.0
