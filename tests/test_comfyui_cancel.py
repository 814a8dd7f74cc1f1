"""Cancel and progress in a real ComfyUI (0.33: InterruptProcessingException is a BaseException, and
ProgressBar updates are throttled to one per 100 ms / 0.5 %, except the first, the last and previews).

Through the server: Cancel pressed while SeeSR Sampler runs stops that node and the prompt, writes
no output, and the rerun gives the image of a fresh run; progress reaches 100 % and a preview arrives
for every step. In process (tests/comfy_host/cancel.py, the real ``comfy``): the sampler stops at
the network call that was running, passes ComfyUI's own exception through, and leaves no tensor of
the cancelled run alive and ComfyUI's loaded models as they were.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfy_host.events import PREVIEW_IMAGE, ServerEvents
from comfy_host.fixtures import COMFYUI_PATH, comfy_server, requires_comfyui  # noqa: F401
from comfy_host.inputs import lr_photo, shrink_for_cpu
from comfy_host.models import COMFYUI, install_tiny_models
from comfy_host.server import stub_paths
from comfy_host.workflow_graph import load_ui_workflow, ui_to_api_prompt

pytestmark = [pytest.mark.comfyui, requires_comfyui]
REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).parent / "comfy_host" / "cancel.py"
STEPS = 30  # SeeSR, CFG on: 30 network calls per tile, enough to press Cancel in the middle


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*stub_paths(sys.executable), *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run([sys.executable, str(SCRIPT), COMFYUI_PATH, str(tmp_path_factory.mktemp("cancel"))],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_cancel_stops_at_the_running_network_call_with_comfyuis_own_exception(report):
    assert report["is_comfy_interrupt"], report["stopped_by"]
    assert report["calls_when_stopped"] == 3 < report["calls_uninterrupted"] == 4
    assert report["flag_cleared"]


def test_cancel_leaves_no_tensor_of_the_run_and_the_loaded_models_as_they_were(report):
    assert report["tensors_left"] == []
    assert report["loaded_after"] == report["loaded_before"] != []


def test_a_rerun_after_cancel_gives_the_same_latent(report):
    assert report["rerun_identical"]


@pytest.fixture(scope="module")
def seesr(comfy_server):
    """SeeSR's shipped graph with its files installed, at STEPS steps: (prompt, sampler id, save id)."""
    workflow = load_ui_workflow(REPO / "workflows" / "seesr_quality_50.json")
    install_tiny_models(comfy_server.models_dir, workflow, target=COMFYUI)
    for node in workflow["nodes"]:
        if node["type"] == "LoadImage":
            lr_photo(40, 32).save(comfy_server.input_dir / node["widgets_values"][0])
    prompt = shrink_for_cpu(ui_to_api_prompt(workflow, comfy_server.client.object_info()), min_tile=False)
    sampler = next(i for i, n in prompt.items() if n["class_type"] == "SeeSRSamplerV2")
    save = next(i for i, n in prompt.items() if n["class_type"] == "SaveImage")
    prompt[sampler]["inputs"]["steps"] = STEPS
    prompt[save]["inputs"]["filename_prefix"] = "AddSR/cancel_test"
    return prompt, sampler, save


def _finished(client, prompt_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = client.history(prompt_id)
        if entry and (entry.get("status") or {}).get("status_str") in ("success", "error"):
            return entry
        time.sleep(0.2)
    raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")


def _saved_pixels(client, entry: dict, save: str) -> np.ndarray:
    (path,) = client.output_files({"outputs": {save: entry["outputs"][save]}})
    with Image.open(path) as png:
        return np.asarray(png.convert("RGB"))


def test_cancel_through_the_server_stops_the_sampler_writes_nothing_and_the_rerun_is_a_fresh_runs_image(
        comfy_server, seesr):
    prompt, sampler, save = seesr
    client = comfy_server.client
    saved = comfy_server.output_dir / "AddSR"
    before = sorted(saved.glob("cancel_test*")) if saved.is_dir() else []
    with ServerEvents(client) as events:
        prompt_id = client.queue(prompt)
        events.wait_for(lambda m: m.kind == "progress" and m.data["node"] == sampler and m.data["value"] >= 1, 600)
        client._request("/interrupt", {})
        entry = _finished(client, prompt_id)
        interrupted = events.wait_for(lambda m: m.kind == "execution_interrupted", 60)
    assert entry["status"]["status_str"] == "error"
    assert interrupted.data["prompt_id"] == prompt_id and interrupted.data["node_id"] == sampler
    progress = [m.data for m in events.of("progress", prompt_id) if m.data["node"] == sampler]
    assert progress and progress[-1]["value"] < progress[-1]["max"], "the sampler ran to the end"
    assert save not in (entry.get("outputs") or {})
    assert (sorted(saved.glob("cancel_test*")) if saved.is_dir() else []) == before, "a partial output was written"

    with ServerEvents(client) as events:
        rerun = client.wait(client.queue(prompt), timeout=600)
    progress = [m for m in events.messages if m.kind == "progress" and m.data["node"] == sampler]
    assert progress[-1].data["value"] == progress[-1].data["max"], "progress stopped short of 100 %"
    executing = [m for m in events.messages if m.kind == "executing"]  # a node starts (the last: node None)
    start = next(m.at for m in executing if m.data.get("node") == sampler)
    end = next(m.at for m in executing if m.at > start and m.data.get("node") != sampler)
    previews = [m for m in events.messages if m.kind == f"binary:{PREVIEW_IMAGE}" and start <= m.at <= end]
    assert len(previews) >= STEPS, f"{len(previews)} previews for {STEPS} steps"

    client._request("/free", {"unload_models": True, "free_memory": True})  # no cached node outputs left
    fresh = client.wait(client.queue(prompt), timeout=600)
    assert np.array_equal(_saved_pixels(client, rerun, save), _saved_pixels(client, fresh, save))
