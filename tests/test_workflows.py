"""The shipped workflows (workflows/*.json): what the frontend and the server would say about them.

Offline, core nodes are checked against tests/comfy_host/core_object_info.json (recorded from
ComfyUI 0.3.64 / frontend 1.27.10 by tools/snapshot_object_info.py) and our nodes against the pack's
own classes. With COMFYUI_PATH set, the same checks run against the live server's /object_info.
"""
import json
from pathlib import Path

import pytest

from comfy_host.fixtures import comfy, comfy_server, requires_comfyui  # noqa: F401
from comfy_host.pack import load_pack
from nodes.workflow_graph import check_workflow, load_ui_workflow, ui_to_api_prompt, validate_api_prompt

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
CORE_SNAPSHOT = Path(__file__).parent / "comfy_host" / "core_object_info.json"
# COMBO inputs whose choices are the files installed on the user's machine: any name is accepted.
FILE_INPUTS = frozenset({
    "image", "ckpt_name", "vae_name", "clip_name",  # core loaders
    "model", "ram", "dape", "tag_list",  # AddSR loaders (models/addsr, models/ram)
})

workflow_params = [pytest.param(p, id=p.name) for p in WORKFLOWS] or [
    pytest.param(None, marks=pytest.mark.skip(reason="no workflows/*.json yet"), id="none")]


@pytest.fixture(scope="module")
def offline_definitions():
    core = json.loads(CORE_SNAPSHOT.read_text())["nodes"]
    return {**core, **load_pack().NODE_CLASS_MAPPINGS}


@pytest.mark.parametrize("path", workflow_params)
def test_workflow_loads_without_problems(path, offline_definitions):
    workflow = load_ui_workflow(path)
    assert check_workflow(workflow, offline_definitions, ignore_choices_for=FILE_INPUTS) == []
    prompt = ui_to_api_prompt(workflow, offline_definitions)
    assert validate_api_prompt(prompt, offline_definitions, ignore_choices_for=FILE_INPUTS) == []


@pytest.mark.comfyui
@requires_comfyui
@pytest.mark.parametrize("path", workflow_params)
def test_workflow_matches_the_live_server(path, comfy):
    object_info = comfy.object_info()
    workflow = load_ui_workflow(path)
    assert check_workflow(workflow, object_info, ignore_choices_for=FILE_INPUTS) == []
    # Running it needs weights in comfy_server.models_dir (tiny seeded checkpoints); the lead adds
    # that per workflow with comfy.run(ui_to_api_prompt(workflow, object_info), workflow=workflow).
