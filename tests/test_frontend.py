"""Every shipped workflow in ComfyUI's real frontend (the comfyui-frontend-package the host serves),
in headless Chromium, as an artist dropping the file onto the canvas would see it.

Fails on: node types the frontend does not know, widget values that do not land one-to-one on the
node's widgets, page or console errors while the graph loads, nodes rendered broken (no title, a
widget named UNKNOWN, the red error outline), and red errors in the Missing Models dialog. A
screenshot of each graph, with no dialog covering it, goes to ``.artifacts/frontend/`` (ignored).
"""
import copy
import json
from pathlib import Path

import pytest

from comfy_host.fixtures import comfy, comfy_server, requires_comfyui  # noqa: F401
from comfy_host.frontend import STARTUP_ERRORS_OF_THE_FRONTEND, Frontend, LoadedGraph
from comfy_host.pack import load_pack

pytestmark = [pytest.mark.comfyui, requires_comfyui]

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
SCREENSHOTS = REPO / ".artifacts" / "frontend"
# What frontend 1.27 prints in the Missing Models dialog for an entry it cannot download.
MISSING_MODELS_RED_ERRORS = ("Only allowed suffixes", "Download not allowed")
# A node carrying this title makes the test extension throw while the node is created.
THROWING_TITLE = "frontend-test: throw while creating"
THROWING_EXTENSION_JS = """(title) => window.app.registerExtension({
    name: 'addsr.test.thrower',
    nodeCreated(node) { queueMicrotask(() => { if (node.title === title) throw new Error('thrown by ' + node.type); }); },
})"""


@pytest.fixture(scope="module")
def frontend(comfy_server):
    with Frontend(comfy_server.port) as page:
        unexpected = [e for e in page.startup_errors if not any(s in e for s in STARTUP_ERRORS_OF_THE_FRONTEND)]
        assert unexpected == [], "the frontend reported errors while starting"
        page.page.evaluate(THROWING_EXTENSION_JS, THROWING_TITLE)
        yield page


def graph_problems(workflow: dict, loaded: LoadedGraph, ours: set[str]) -> list[str]:
    """Everything an artist would see as wrong after loading ``workflow``; empty when it is clean."""
    problems = list(loaded.errors)
    by_id = {str(n["id"]): n for n in workflow["nodes"]}
    for node in loaded.nodes:
        label = f"node {node['id']} ({node['type']})"
        if not node["registered"]:
            problems.append(f"{label}: node type unknown to the frontend (missing node)")
            continue
        if node["has_errors"]:
            problems.append(f"{label}: drawn with the red error outline")
        if "UNKNOWN" in node["widgets"]:
            problems.append(f"{label}: widgets named UNKNOWN {node['widgets']}")
        if node["type"] in ours and node["title"] in ("", node["type"]) and node["display_name"] != node["type"]:
            problems.append(f"{label}: shown without its title ({node['title']!r})")
        expected = by_id[str(node["id"])].get("widgets_values", [])
        if isinstance(expected, list) and loaded.widgets_values.get(str(node["id"]), []) != expected:
            problems.append(f"{label}: widget values {expected} came back as "
                            f"{loaded.widgets_values.get(str(node['id']))} (widget count or order mismatch)")
    for dialog in loaded.dialogs:
        problems += [f"missing-models dialog shows {error!r}: {dialog[:300]!r}"
                     for error in MISSING_MODELS_RED_ERRORS if error in dialog]
    return problems


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_workflow_renders_cleanly_in_the_real_frontend(path, frontend):
    workflow = json.loads(path.read_text())
    loaded = frontend.load(workflow)
    assert graph_problems(workflow, loaded, set(load_pack().NODE_CLASS_MAPPINGS)) == []
    assert len(loaded.nodes) == len(workflow["nodes"])
    frontend.screenshot(SCREENSHOTS / f"{path.stem}.png")
    assert (SCREENSHOTS / f"{path.stem}.png").stat().st_size > 10_000


def test_a_stablesr_workflow_saved_before_the_widget_rename_still_loads(frontend):
    """Files saved with the CFW loader's old widget names (vae_name, fusion_name) and without the
    upload button's value: values are positional, so they land on the renamed widgets."""
    ours = set(load_pack().NODE_CLASS_MAPPINGS)
    current = json.loads((REPO / "workflows" / "stablesr_turbo_4x.json").read_text())
    old = copy.deepcopy(current)
    renamed = {"cfw_file": "vae_name", "fusion_file": "fusion_name"}
    for node in old["nodes"]:
        for slot in node.get("inputs", []):
            if slot["name"] in renamed:
                slot["name"] = slot["widget"]["name"] = renamed[slot["name"]]
        if node["type"] == "LoadImage":
            node["widgets_values"] = node["widgets_values"][:1]
    assert old != current
    loaded = frontend.load(old)
    problems = [p for p in graph_problems(old, loaded, ours) if "(LoadImage)" not in p]
    assert problems == []
    cfw = next(n for n in current["nodes"] if n["type"] == "StableSRCFWLoader")
    assert loaded.widgets_values[str(cfw["id"])] == cfw["widgets_values"]
    assert next(n for n in loaded.nodes if n["id"] == cfw["id"])["widgets"] == ["cfw_file", "dtype", "fusion_file"]
    frontend.close_dialogs()


def _first_with_widgets(workflow: dict, ours: set[str]) -> dict:
    return next(n for n in workflow["nodes"] if n["type"] in ours and n.get("widgets_values"))


def test_the_check_fails_on_a_missing_node(frontend):
    workflow = json.loads(WORKFLOWS[0].read_text())
    broken = copy.deepcopy(workflow)
    _first_with_widgets(broken, set(load_pack().NODE_CLASS_MAPPINGS))["type"] = "AddSRNoSuchNode"
    problems = graph_problems(broken, frontend.load(broken), set(load_pack().NODE_CLASS_MAPPINGS))
    frontend.close_dialogs()
    assert any("AddSRNoSuchNode" in p and "missing node" in p for p in problems), problems


def test_the_check_fails_on_a_widget_count_mismatch(frontend):
    ours = set(load_pack().NODE_CLASS_MAPPINGS)
    broken = json.loads(WORKFLOWS[0].read_text())
    node = _first_with_widgets(broken, ours)
    node["widgets_values"] = node["widgets_values"][:-1]
    problems = graph_problems(broken, frontend.load(broken), ours)
    frontend.close_dialogs()
    assert any(f"node {node['id']} " in p and "mismatch" in p for p in problems), problems


def test_the_check_fails_when_a_node_throws_in_the_frontend(frontend):
    ours = set(load_pack().NODE_CLASS_MAPPINGS)
    broken = json.loads(WORKFLOWS[0].read_text())
    node = _first_with_widgets(broken, ours)
    node["title"] = THROWING_TITLE
    problems = graph_problems(broken, frontend.load(broken), ours)
    frontend.close_dialogs()
    assert any(f"thrown by {node['type']}" in p for p in problems), problems
