"""Every shipped workflow in ComfyUI's real frontend (1.49 or later, the one the host serves), in
headless Chromium, dropped onto the canvas as an artist would, on two servers of this module's own:

* installed: every shipped workflow's model files (tiny, under the names its loaders ask for) and
  input images are in place. Each workflow must then load clean: known node types, widget values
  landing one-to-one on the node's widgets, no page or console error, no node drawn broken (no
  title, a widget named UNKNOWN, the red outline) and nothing in the issues panel.
* fresh: a fresh install, no model files, only the input images ComfyUI ships. The panel must then
  list exactly the files the user has to provide, each findable from the workflow: a Download the
  frontend offers (properties.models) or, otherwise, named in the workflow's "Model files" note;
  and nothing else is red.

Negative tests show each check fails on the defect it is for. Screenshots go to
``.artifacts/frontend/`` (ignored): ``<workflow>.png`` installed, ``<workflow>.missing-files.png``
fresh, with the issues panel open.
"""
import copy
import json
import re
import shutil
from pathlib import Path

import pytest

from comfy_host.fixtures import COMFYUI_PATH, private_servers, requires_comfyui
from comfy_host.frontend import Browser, LoadedGraph
from comfy_host.models import COMFYUI, install_tiny_models
from comfy_host.pack import load_pack

pytestmark = [pytest.mark.comfyui, requires_comfyui]

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
SCREENSHOTS = REPO / ".artifacts" / "frontend"
FILES_NOTE_TITLE = "Model files"
# Widget values the frontend's missing-model scan looks at (MODEL_FILE_EXTENSIONS in its
# missingModelScan.ts, the same in 1.49.6 and 1.58.1); a folder name or a .txt it never lists.
FRONTEND_MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".onnx", ".gguf")
PANEL_SECTIONS_FOR_MISSING_FILES = {"missing-model", "missing-media"}
# A node carrying this title makes the test extension throw while the node is created.
THROWING_TITLE = "frontend-test: throw while creating"
THROWING_EXTENSION_JS = """(title) => window.app.registerExtension({
    name: 'addsr.test.thrower',
    nodeCreated(node) { queueMicrotask(() => { if (node.title === title) throw new Error('thrown by ' + node.type); }); },
})"""


def read_workflow(path: Path) -> dict:
    return json.loads(path.read_text())


def install_workflow_files(server) -> None:
    """What a user installs before loading the shipped workflows: every model file their loaders
    name, and each LoadImage's picture (a photo) in the input folder."""
    from PIL import Image
    from skimage import data

    photo = Image.fromarray(data.astronaut()).resize((128, 128))
    for path in WORKFLOWS:
        workflow = read_workflow(path)
        install_tiny_models(server.models_dir, workflow, target=COMFYUI)
        for node in workflow["nodes"]:
            if node["type"] == "LoadImage":
                server.input_dir.mkdir(parents=True, exist_ok=True)
                photo.save(server.input_dir / node["widgets_values"][0])


def ship_comfyui_inputs(server) -> None:
    """A fresh install's input folder: what the ComfyUI checkout ships in input/ (example.png)."""
    server.input_dir.mkdir(parents=True, exist_ok=True)
    for shipped in (Path(COMFYUI_PATH) / "input").iterdir():
        if shipped.is_file():
            shutil.copyfile(shipped, server.input_dir / shipped.name)


@pytest.fixture(scope="module")
def servers():
    """(installed, fresh), started side by side; the files go in while they start."""
    def prepare(started):
        install_workflow_files(started[0])
        ship_comfyui_inputs(started[1])

    with private_servers(2, prepare=prepare) as (installed, fresh):
        assert not any(fresh.models_dir.rglob("*.*")), "the fresh server must have no model files"
        yield installed, fresh


@pytest.fixture(scope="module")
def browser():
    with Browser() as chromium:
        yield chromium


def _open(browser, server):
    page = browser.open(server.port)
    assert page.startup_errors == [], f"frontend {page.version} reported errors while starting"
    page.page.evaluate(THROWING_EXTENSION_JS, THROWING_TITLE)
    return page


@pytest.fixture(scope="module")
def installed(browser, servers):
    """The UI of the server with every shipped workflow's files installed."""
    page = _open(browser, servers[0])
    yield page
    page.close()


@pytest.fixture(scope="module")
def fresh(browser, servers):
    """The UI of a fresh install: no model files."""
    page = _open(browser, servers[1])
    yield page
    page.close()


@pytest.fixture(scope="module")
def ours() -> set[str]:
    return set(load_pack().NODE_CLASS_MAPPINGS)


def label(node: dict) -> str:
    return f"node {node['id']} ({node['type']})"


def graph_problems(workflow: dict, loaded: LoadedGraph, ours: set[str]) -> list[str]:
    """What an artist would see as wrong in the graph itself, whatever files are installed: errors
    while it loaded, unknown node types, nodes drawn broken, widget values that did not land."""
    problems = list(loaded.errors) + [f"a dialog is open: {d[:300]!r}" for d in loaded.dialogs]
    by_id = {str(n["id"]): n for n in workflow["nodes"]}
    for node in loaded.nodes:
        if not node["registered"]:
            problems.append(f"{label(node)}: node type unknown to the frontend (missing node)")
            continue
        if "UNKNOWN" in node["widgets"]:
            problems.append(f"{label(node)}: widgets named UNKNOWN {node['widgets']}")
        if node["type"] in ours and node["title"] in ("", node["type"]) and node["display_name"] != node["type"]:
            problems.append(f"{label(node)}: shown without its title ({node['title']!r})")
        expected = by_id[node["id"]].get("widgets_values", [])
        if isinstance(expected, list) and loaded.widgets_values.get(node["id"], []) != expected:
            problems.append(f"{label(node)}: widget values {expected} came back as "
                            f"{loaded.widgets_values.get(node['id'])} (widget count or order mismatch)")
    return problems


def installed_problems(workflow: dict, loaded: LoadedGraph, ours: set[str]) -> list[str]:
    """Case A, every file installed: graph_problems, and no red outline, nothing in the panel."""
    problems = graph_problems(workflow, loaded, ours)
    problems += [f"{label(n)}: drawn with the red error outline" for n in loaded.nodes if n["has_errors"]]
    problems += [f"the issues panel lists {f.kind} {f.name!r} of node {f.node_id} ({f.widget})"
                 for f in loaded.issues.files]
    if loaded.issues.overlay is not None:
        problems.append(f"the issues overlay is shown: {loaded.issues.overlay!r}")
    for node in loaded.nodes:
        problems += [f"{label(node)}: {a['widget']} = {a['value']!r} is not among the installed files"
                     for a in node["absent"]]
    return problems


def files_note_names(workflow: dict) -> set[str]:
    """The file and folder names the Model files note gives as inline code (`name`, `folder/`)."""
    notes = [n for n in workflow["nodes"] if n["type"] in ("Note", "MarkdownNote") and n.get("title") == FILES_NOTE_TITLE]
    text = "\n".join(str(n["widgets_values"][0]) for n in notes)
    return {name.rstrip("/") for name in re.findall(r"`([^`\n]+)`", text)}


def missing_file_problems(workflow: dict, loaded: LoadedGraph, ours: set[str]) -> list[str]:
    """Case B, no model files: graph_problems, and the panel lists exactly the files the user must
    provide (the absent widget values the frontend scans: weight files and uploads), each
    findable: a Download the frontend offers, else named in the Model files note. Red only where a
    listed file is missing; the panel shows nothing but missing files."""
    issues = loaded.issues
    problems = graph_problems(workflow, loaded, ours)
    listed = {(f.node_id, f.widget): f for f in issues.files}
    note = files_note_names(workflow)
    declared = {m["name"] for n in workflow["nodes"] for m in (n.get("properties") or {}).get("models", [])}
    absent = {}
    for node in loaded.nodes:
        for a in node["absent"]:
            absent[(node["id"], a["widget"])] = a
            where = f"{label(node)} {a['widget']} = {a['value']!r}"
            scanned = a["upload"] or str(a["value"]).lower().endswith(FRONTEND_MODEL_SUFFIXES)
            if scanned and (node["id"], a["widget"]) not in listed:
                problems.append(f"{where}: missing, but the issues panel does not list it")
            if a["value"] not in issues.downloads and a["value"] not in note:
                problems.append(f"{where}: must be provided, but the panel offers no Download for it "
                                f"(properties.models) and the {FILES_NOTE_TITLE} note does not name it")
    for key, entry in listed.items():
        if key not in absent or absent[key]["value"] != entry.name:
            problems.append(f"the issues panel lists {entry.name!r} (node {entry.node_id}, {entry.widget}), "
                            "which the server has")
        if entry.name in declared and entry.name not in issues.downloads:
            problems.append(f"properties.models names {entry.name!r}, but the frontend offers no Download for it "
                            f"(url {entry.url!r}, folder {entry.directory!r})")
    listed_nodes = {f.node_id for f in issues.files}
    problems += [f"{label(n)}: drawn with the red error outline, but no missing file of it is listed"
                 for n in loaded.nodes if n["has_errors"] and n["id"] not in listed_nodes]
    if issues.sections is not None:
        problems += [f"the issues panel shows a {s!r} section" for s in issues.sections
                     if s not in PANEL_SECTIONS_FOR_MISSING_FILES]
    shown = len({f.name for f in issues.files if f.kind == "model"}) + sum(f.kind == "media" for f in issues.files)
    if issues.overlay_count != shown:
        problems.append(f"the overlay counts {issues.overlay_count} issues, the panel's entries make {shown}: "
                        f"{issues.overlay!r}")
    return problems


def load_fresh(fresh, workflow: dict, name: str) -> LoadedGraph:
    loaded = fresh.load(workflow, name)
    if loaded.issues.overlay is not None:
        fresh.open_issues(loaded)
    return loaded


# ---------------------------------------------------------------------------------------------
# Case A: files installed


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_workflow_loads_cleanly_with_its_files_installed(path, installed, ours):
    workflow = read_workflow(path)
    loaded = installed.load(workflow, path.name)
    assert installed_problems(workflow, loaded, ours) == []
    assert len(loaded.nodes) == len(workflow["nodes"])
    installed.screenshot(SCREENSHOTS / f"{path.stem}.png")
    assert (SCREENSHOTS / f"{path.stem}.png").stat().st_size > 10_000


def test_a_stablesr_workflow_saved_before_the_widget_rename_still_loads(installed, ours):
    """Files saved with the CFW loader's old widget names (vae_name, fusion_name) and without the
    upload button's value: values are positional, so they land on the renamed widgets."""
    current = read_workflow(REPO / "workflows" / "stablesr_turbo_4x.json")
    old = copy.deepcopy(current)
    renamed = {"cfw_file": "vae_name", "fusion_file": "fusion_name"}
    for node in old["nodes"]:
        for slot in node.get("inputs", []):
            if slot["name"] in renamed:
                slot["name"] = slot["widget"]["name"] = renamed[slot["name"]]
        if node["type"] == "LoadImage":
            node["widgets_values"] = node["widgets_values"][:1]
    assert old != current
    loaded = installed.load(old, "stablesr_saved_before_the_rename.json")
    problems = [p for p in installed_problems(old, loaded, ours) if "(LoadImage)" not in p]
    assert problems == []
    cfw = next(n for n in current["nodes"] if n["type"] == "StableSRCFWLoader")
    assert loaded.widgets_values[str(cfw["id"])] == cfw["widgets_values"]
    assert loaded.node(cfw["id"])["widgets"] == ["cfw_file", "dtype", "fusion_file"]


def test_a_workflow_saved_before_the_compile_input_still_loads(installed, ours):
    """AddSR Load Model gained an optional ``compile`` widget at the end: a file saved without it
    loads with its three values where they were and compile at its default (off)."""
    current = read_workflow(REPO / "workflows" / "addsr_basic_4x.json")
    old = copy.deepcopy(current)
    loader = next(n for n in old["nodes"] if n["type"] == "AddSRModelLoader")
    assert loader["widgets_values"][-1] == "off"
    loader["widgets_values"] = loader["widgets_values"][:-1]
    loaded = installed.load(old, "addsr_saved_before_compile.json")
    assert installed_problems(current, loaded, ours) == []  # the values of the current file, compile "off" included
    assert loaded.widgets_values[str(loader["id"])] == loader["widgets_values"] + ["off"]


OLD_NODE_FILES = sorted((REPO / "tests" / "fixtures" / "workflows_before_v2").glob("*.json"))


@pytest.mark.parametrize("path", OLD_NODE_FILES, ids=[p.name for p in OLD_NODE_FILES])
def test_a_workflow_saved_with_the_latent_pixel_nodes_still_loads(path, installed, ours):
    """A file saved before the SeeSR/StableSR tiles became output pixels: its nodes (now deprecated) load
    with their values where they were, nothing red, nothing missing (test_workflows.py runs it)."""
    workflow = read_workflow(path)
    deprecated = {"SeeSRSampler", "StableSRSampler", "StableSRCFWDecode"}
    assert deprecated & {n["type"] for n in workflow["nodes"]}
    loaded = installed.load(workflow, f"before_v2_{path.name}")
    assert installed_problems(workflow, loaded, ours) == []
    for node in workflow["nodes"]:
        if node["type"] in deprecated:
            assert loaded.widgets_values[str(node["id"])] == node["widgets_values"], node["type"]


def _first_with_widgets(workflow: dict, ours: set[str]) -> dict:
    return next(n for n in workflow["nodes"] if n["type"] in ours and n.get("widgets_values"))


def test_the_check_fails_on_a_missing_node(installed, ours):
    broken = read_workflow(WORKFLOWS[0])
    node = _first_with_widgets(broken, ours)
    node["type"] = "AddSRNoSuchNode"
    problems = installed_problems(broken, installed.load(broken, "missing_node.json"), ours)
    assert any(f"node {node['id']} (AddSRNoSuchNode)" in p and "missing node" in p for p in problems), problems


def test_the_check_fails_on_a_widget_count_mismatch(installed, ours):
    broken = read_workflow(WORKFLOWS[0])
    node = _first_with_widgets(broken, ours)
    node["widgets_values"] = node["widgets_values"][:-1]
    problems = installed_problems(broken, installed.load(broken, "widget_mismatch.json"), ours)
    assert any(f"node {node['id']} " in p and "mismatch" in p for p in problems), problems


def test_the_check_fails_when_a_node_throws_in_the_frontend(installed, ours):
    broken = read_workflow(WORKFLOWS[0])
    node = _first_with_widgets(broken, ours)
    node["title"] = THROWING_TITLE
    problems = installed_problems(broken, installed.load(broken, "throws.json"), ours)
    assert any(f"thrown by {node['type']}" in p for p in problems), problems


def test_the_check_fails_on_a_file_that_is_not_installed(installed, ours):
    """The frontend's own marking of a missing file: the red outline and a panel entry."""
    broken = read_workflow(REPO / "workflows" / "stablesr_turbo_4x.json")
    cfw = next(n for n in broken["nodes"] if n["type"] == "StableSRCFWLoader")
    cfw["widgets_values"][0] = "not_installed_cfw.ckpt"
    problems = installed_problems(broken, installed.load(broken, "not_installed.json"), ours)
    node = f"node {cfw['id']} (StableSRCFWLoader)"
    assert f"{node}: drawn with the red error outline" in problems, problems
    assert f"the issues panel lists model 'not_installed_cfw.ckpt' of node {cfw['id']} (cfw_file)" in problems, problems


# ---------------------------------------------------------------------------------------------
# Case B: a fresh install, no model files


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_workflow_without_its_files_lists_exactly_what_to_provide(path, fresh, ours):
    workflow = read_workflow(path)
    loaded = load_fresh(fresh, workflow, path.name)
    assert missing_file_problems(workflow, loaded, ours) == []
    # Not vacuous: every weight file a loader names is listed, and the properties.models ones offer
    # a Download.
    weights = {v for n in workflow["nodes"] for v in n.get("widgets_values") or []
               if isinstance(v, str) and v.lower().endswith(FRONTEND_MODEL_SUFFIXES)}
    assert weights and {f.name for f in loaded.issues.files} == weights
    declared = {m["name"] for n in workflow["nodes"] for m in (n.get("properties") or {}).get("models", [])}
    assert declared and declared <= set(loaded.issues.downloads)
    fresh.screenshot(SCREENSHOTS / f"{path.stem}.missing-files.png")


def test_the_missing_files_check_fails_on_a_file_nothing_names(fresh, ours):
    """A file that neither properties.models nor the Model files note names cannot be found."""
    broken = read_workflow(REPO / "workflows" / "addsr_basic_4x.json")
    ram = next(n for n in broken["nodes"] if n["type"] == "AddSRRAMLoader")
    ram["widgets_values"][1] = "DAPE_renamed.pth"
    problems = missing_file_problems(broken, load_fresh(fresh, broken, "unnamed_file.json"), ours)
    assert problems == [f"node {ram['id']} (AddSRRAMLoader) dape = 'DAPE_renamed.pth': must be provided, but the "
                        "panel offers no Download for it (properties.models) and the Model files note does not name it"]


def test_the_missing_files_check_fails_on_a_download_entry_the_frontend_refuses(fresh, ours):
    """A properties.models entry whose url the frontend will not download from (Google Drive)."""
    broken = read_workflow(REPO / "workflows" / "addsr_basic_4x.json")
    checkpoint = next(n for n in broken["nodes"] if n["type"] == "CheckpointLoaderSimple")
    checkpoint["properties"]["models"][0]["url"] = "https://drive.google.com/file/d/0/view"
    problems = missing_file_problems(broken, load_fresh(fresh, broken, "refused_download.json"), ours)
    assert len(problems) == 1 and problems[0].startswith(
        "properties.models names 'v2-1_512-ema-pruned.safetensors', but the frontend offers no Download"), problems


def test_the_missing_files_check_fails_on_a_missing_input_image(fresh, ours):
    """An input image the fresh install does not ship: listed by the panel, named nowhere."""
    broken = read_workflow(REPO / "workflows" / "addsr_basic_4x.json")
    image = next(n for n in broken["nodes"] if n["type"] == "LoadImage")
    image["widgets_values"][0] = "my_photo.png"
    loaded = load_fresh(fresh, broken, "missing_image.json")
    assert ("media", "my_photo.png") in {(f.kind, f.name) for f in loaded.issues.files}
    problems = missing_file_problems(broken, loaded, ours)
    assert any(p.startswith(f"node {image['id']} (LoadImage) image = 'my_photo.png': must be provided") for p in problems), problems
