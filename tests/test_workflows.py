"""The shipped workflows (workflows/*.json): what the frontend and the server would say about them,
and that they run end to end.

Offline, core nodes are checked against tools/workflows/core_object_info.json (recorded from
ComfyUI 0.3.64 / frontend 1.27.10, the oldest supported host, by tests/comfy_host/snapshot_object_info.py;
the workflows are built from it, so they use only what every supported host has) and our nodes against
the pack's own classes; then each graph is executed in this process (execute_api_prompt) on tiny
seeded checkpoints, with stand-ins for the core nodes. With COMFYUI_PATH set, the same checks run
against the live server's /object_info, each workflow is queued through the HTTP API on tiny
checkpoints, and again with DynamicVRAM switched on (0.33: the same images).
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_host.fixtures import comfy, comfy_server, dynamic_vram_server, requires_comfyui  # noqa: F401
from comfy_host.inputs import lr_photo, shrink_for_cpu
from comfy_host.models import COMFYUI, INPROCESS, LOADERS, UnsupportedLoaderError, install_tiny_models
from comfy_host.pack import load_pack
from comfy_host.standins import core_standins, saved_files
from comfy_host.workflow_graph import (
    FRONTEND_ONLY_TYPES,
    as_node_specs,
    check_workflow,
    execute_api_prompt,
    load_ui_workflow,
    ui_to_api_prompt,
    validate_api_prompt,
)

from tools.workflows import build
from tools.workflows.builder import min_node_size, node_rect, rects_overlap
from tools.workflows.definitions import core_definitions

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
# COMBO inputs whose choices are the files installed on the user's machine: any name is accepted.
FILE_INPUTS = frozenset({
    "image", "ckpt_name", "vae_name", "clip_name",  # core loaders
    "cfw_file", "fusion_file",  # StableSR CFW loader
    "model", "ram", "dape", "tag_list",  # AddSR loaders (models/addsr, models/ram)
})
# Frontend rules for properties.models (MissingModelsWarning in frontend 1.27.10, the allowedSources
# and allowedSuffixes of comfyui_frontend_package's bundle): the entry must name the widget's value;
# anything not from these sources with these suffixes is a red error in the dialog. (The bundle also
# allows http://localhost: "for testing usage only", and three fixed URLs, none of them ours.)
DOWNLOAD_SOURCES = ("https://civitai.com/", "https://huggingface.co/")
DOWNLOAD_SUFFIXES = (".safetensors", ".sft")

workflow_params = [pytest.param(p, id=p.name) for p in WORKFLOWS] or [
    pytest.param(None, marks=pytest.mark.skip(reason="no workflows/*.json yet"), id="none")]


@pytest.fixture(scope="module")
def offline_definitions():
    return {**core_definitions(), **load_pack().NODE_CLASS_MAPPINGS}


# ---------------------------------------------------------------------------------------------
# Static checks


@pytest.mark.parametrize("path", workflow_params)
def test_workflow_loads_without_problems(path, offline_definitions):
    workflow = load_ui_workflow(path)
    assert check_workflow(workflow, offline_definitions, ignore_choices_for=FILE_INPUTS) == []
    prompt = ui_to_api_prompt(workflow, offline_definitions)
    assert validate_api_prompt(prompt, offline_definitions, ignore_choices_for=FILE_INPUTS) == []


@pytest.mark.parametrize("path", workflow_params)
def test_workflow_is_shareable(path, offline_definitions):
    """Thumbnail, a Note that names the files, properties.models the frontend can use, tidy layout."""
    workflow = load_ui_workflow(path)
    thumb = path.with_suffix(".png")
    assert thumb.is_file() and thumb.stat().st_size < 200_000, f"{thumb.name}: missing or >= 200 KB"
    with Image.open(thumb) as im:
        assert im.width >= 256 and im.height >= 128

    notes = [n for n in workflow["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    assert notes, "no Note explaining which files to download"
    note_text = "\n".join(str(v) for n in notes for v in n["widgets_values"])
    specs = as_node_specs(offline_definitions)
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY_TYPES:
            continue
        values = node.get("widgets_values") or []
        for entry in node["properties"].get("models", []):
            assert set(entry) >= {"name", "url", "directory"}, entry
            assert entry["name"] in values, f"{entry['name']} is not a widget value of node {node['id']}"
            assert entry["url"].startswith("https://"), entry
        if node["type"] in LOADERS:  # every loader's file names are explained in the Note
            spec = specs[node["type"]]
            for widget, kind in spec.widget_layout():
                value = values[[w for w, _ in spec.widget_layout()].index(widget)] if kind == "value" else None
                if widget.name in FILE_INPUTS and isinstance(value, str) and value != "none":
                    assert value in note_text, f"{value} ({node['type']}) is not named in the Note"
    checkpoint = [n for n in workflow["nodes"] if n["type"] == "CheckpointLoaderSimple"]
    assert all(n["properties"].get("models") for n in checkpoint)

    # Nothing overlaps, even after the frontend grows each node to its computed size.
    rects = []
    for node in workflow["nodes"]:
        min_w, min_h = min_node_size(node, specs)
        assert node["size"][0] >= min_w - 1 and node["size"][1] >= min_h - 1, f"node {node['id']} too small"
        rects.append((node["id"], node_rect(node)))
    for i, (a_id, a) in enumerate(rects):
        for b_id, b in rects[i + 1:]:
            assert not rects_overlap(a, b), f"nodes {a_id} and {b_id} overlap"
    groups = [g["bounding"] for g in workflow.get("groups", [])]
    boxes = [(x, y, x + w, y + h) for x, y, w, h in groups]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not rects_overlap(a, b), "groups overlap"


def download_problem(entry: dict) -> str | None:
    """The missing-models dialog's red error for this properties.models entry, if it would show one."""
    if not entry["url"].startswith(DOWNLOAD_SOURCES):
        return f"Download not allowed from source {entry['url']!r}"
    if not entry["name"].endswith(DOWNLOAD_SUFFIXES):
        return f"{entry['name']}: only allowed suffixes are {DOWNLOAD_SUFFIXES}"
    return None


def test_download_rule_is_the_frontends():
    hf = "https://huggingface.co/x/y/resolve/main/"
    assert download_problem({"name": "a.safetensors", "url": hf + "a.safetensors"}) is None
    assert "suffixes" in download_problem({"name": "ram_swin_large_14m.pth", "url": hf + "ram_swin_large_14m.pth"})
    assert "source" in download_problem({"name": "DAPE.safetensors", "url": "https://drive.google.com/drive/folders/x"})


@pytest.mark.parametrize("path", workflow_params)
def test_properties_models_are_downloadable_by_the_frontend(path):
    """Only files the dialog can fetch are listed; the rest (.pth, .ckpt, Google Drive) are in the Note."""
    workflow = load_ui_workflow(path)
    problems = [f"node {node['id']} ({node['type']}): {problem}" for node in workflow["nodes"]
                for entry in node.get("properties", {}).get("models", []) if (problem := download_problem(entry))]
    assert problems == []


def test_builder_reproduces_the_shipped_files(tmp_path):
    """workflows/*.json are exactly what ``python -m tools.workflows`` writes (no hand edits drift)."""
    ours = set(build.WORKFLOWS)  # every family's (AddSR, SeeSR, StableSR)
    assert ours == {p.stem for p in WORKFLOWS}
    for name in sorted(ours):
        written = build.write_workflow(name, tmp_path)
        assert json.loads(written.read_text()) == json.loads((REPO / "workflows" / f"{name}.json").read_text()), name


def test_install_tiny_models_fails_loudly_for_unknown_loaders(tmp_path):
    workflow = {"nodes": [{"id": 1, "type": "SomeNewLoader", "mode": 0, "widgets_values": ["weights.safetensors"]}]}
    definitions = {"SomeNewLoader": {"input": {"required": {"ckpt": [["weights.safetensors"]]}}, "output": ["X"]}}
    with pytest.raises(UnsupportedLoaderError, match="SomeNewLoader.*weights.safetensors"):
        install_tiny_models(tmp_path, workflow, definitions)


def test_install_tiny_models_gives_each_model_loader_its_own_family(tmp_path, monkeypatch):
    """addsr_vs_seesr has two AddSR Load Model nodes: each gets its own tiny files, SeeSR's seeded apart
    from AddSR's and (packed) recorded as SeeSR, so the loader tells them apart as it would the releases."""
    import copy

    import nodes
    from addsr_core.loading.family import resolve_family
    from addsr_core.loading.pack import load_addsr

    workflow = load_ui_workflow(REPO / "workflows" / "addsr_vs_seesr.json")
    loaders = {n["widgets_values"][0]: n for n in workflow["nodes"] if n["type"] == "AddSRModelLoader"}
    assert {name: n["widgets_values"][2] for name, n in loaders.items()} == {"addsr": "auto", "seesr": "seesr"}
    written = install_tiny_models(tmp_path / "folders", workflow)
    paths = {name: written[str(n["id"])]["model"] for name, n in loaders.items()}
    weights = {name: next(load_addsr(path)[0].parameters()) for name, path in paths.items()}
    assert paths["addsr"] != paths["seesr"] and not torch.equal(weights["addsr"], weights["seesr"])
    monkeypatch.setenv("ADDSR_ADDSR_DIR", str(tmp_path / "folders" / "addsr"))
    assert [nodes.AddSRModelLoader().load(name, "fp32", family)[0].family for name, family in
            (("addsr", "auto"), ("seesr", "seesr"))] == ["addsr", "seesr"]

    packed = copy.deepcopy(workflow)  # a packed SeeSR file under a neutral name carries its family
    node = next(n for n in packed["nodes"] if n["widgets_values"][:1] == ["seesr"])
    node["widgets_values"][0] = "weights_fp16.safetensors"
    path = install_tiny_models(tmp_path / "packed", packed)[str(node["id"])]["model"]
    assert resolve_family(path) == ("seesr", "file metadata")


def test_standins_match_the_core_definitions(tmp_path, offline_definitions):
    """The in-process stand-ins take and return what ComfyUI's own nodes do."""
    standins = as_node_specs(core_standins(tmp_path / "m", tmp_path / "i", tmp_path / "o"))
    served = as_node_specs({k: v for k, v in offline_definitions.items() if k in standins})
    assert set(standins) == set(served)
    for name, spec in standins.items():
        shape = lambda s: [(i.name, i.type, i.required, i.is_widget, i.control_values) for i in s.inputs]
        assert shape(spec) == shape(served[name]), name
        assert spec.outputs == served[name].outputs and spec.output_node == served[name].output_node, name


# ---------------------------------------------------------------------------------------------
# Running the graphs


def check_outputs(files_by_node: dict, workflow: dict, lr: Image.Image, scale: int = 4) -> None:
    lr_array = np.asarray(lr.convert("RGB"), dtype=np.float64) / 255
    expected = (lr.width * scale, lr.height * scale)
    saves = [str(n["id"]) for n in workflow["nodes"] if n["type"] == "SaveImage"]
    previews = [str(n["id"]) for n in workflow["nodes"] if n["type"] == "PreviewImage"]
    assert saves
    for node_id in saves + previews:
        files = files_by_node.get(node_id)
        assert files, f"node {node_id} saved nothing"
        for path in files:
            assert path.is_file(), path
            with Image.open(path) as png:
                assert png.size == expected, (path.name, png.size, expected)
                array = np.asarray(png.convert("RGB"), dtype=np.float64) / 255
            assert array.std() > 0.02, f"{path.name} is (nearly) constant"
            assert np.isfinite(array).all()
    for node_id in saves:  # SaveImage gets the adain-fixed result: the LR's colour statistics
        with Image.open(files_by_node[node_id][0]) as png:
            out = np.asarray(png.convert("RGB"), dtype=np.float64) / 255
        assert np.allclose(out.mean(axis=(0, 1)), lr_array.mean(axis=(0, 1)), atol=0.03)
        assert np.allclose(out.std(axis=(0, 1)), lr_array.std(axis=(0, 1)), atol=0.05)


_installed: dict = {}


def tiny_models_for(workflow: dict, root: Path) -> Path:
    """One tiny-model folder per distinct set of loader widgets (installing takes seconds)."""
    key = json.dumps(sorted((n["type"], n.get("widgets_values")) for n in workflow["nodes"] if n["type"] in LOADERS))
    if key not in _installed:
        models = root / f"models{len(_installed)}"
        install_tiny_models(models, workflow, target=INPROCESS)
        _installed[key] = models
    return _installed[key]


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    yield tmp_path_factory.mktemp("tiny-models")
    _installed.clear()


@pytest.mark.parametrize("path", workflow_params)
def test_workflow_runs_in_process(path, tmp_path, models_root, monkeypatch):
    workflow = load_ui_workflow(path)
    models = tiny_models_for(workflow, models_root)
    inputs, outputs = tmp_path / "input", tmp_path / "output"
    for folder in models.iterdir():  # models/<kind> -> ADDSR_<KIND>_DIR, which nodes/comfy_bridge.py reads
        monkeypatch.setenv(f"ADDSR_{folder.name.upper()}_DIR", str(folder))
    tiled = "tiled" in path.stem
    # The tiled workflow: 4x is 264 x 160, two 256 px tiles across; the others stay small.
    lr = lr_photo(66, 40) if tiled else lr_photo(40, 32)
    inputs.mkdir()
    for node in workflow["nodes"]:
        if node["type"] == "LoadImage":
            lr.save(inputs / node["widgets_values"][0])

    definitions = {**core_standins(models, inputs, outputs), **load_pack().NODE_CLASS_MAPPINGS}
    prompt = shrink_for_cpu(ui_to_api_prompt(workflow, definitions), min_tile=tiled)
    result = execute_api_prompt(prompt, definitions, extra_pnginfo={"workflow": workflow})

    files = {node_id: saved_files(ui, outputs) for node_id, ui in result.ui.items()}
    check_outputs(files, workflow, lr)
    nearest = [n for n in workflow["nodes"] if n["type"] == "ImageScaleBy"]
    for node in nearest:  # the comparison preview is exactly the input, 4x nearest
        preview = next(str(n["id"]) for n in workflow["nodes"] if n["type"] == "PreviewImage")
        with Image.open(files[preview][0]) as png:
            assert np.array_equal(np.asarray(png.convert("RGB")),
                                  np.asarray(lr.resize((lr.width * 4, lr.height * 4), Image.NEAREST)))


# ---------------------------------------------------------------------------------------------
# A real ComfyUI


@pytest.mark.comfyui
@requires_comfyui
@pytest.mark.parametrize("path", workflow_params)
def test_workflow_matches_the_live_server(path, comfy):
    object_info = comfy.object_info()
    workflow = load_ui_workflow(path)
    assert check_workflow(workflow, object_info, ignore_choices_for=FILE_INPUTS) == []


_live_runs: dict = {}


def live_run(server, path: Path) -> dict:
    """``path`` queued on ``server`` as the frontend would, on tiny checkpoints in its models folder (an
    SD2 checkpoint ComfyUI detects as SD 2) and a small LR: ``{"files": {node id: [png]}, "pixels":
    {node id: [uint8 arrays]}, "lr": image}``. Run once per server and workflow (a cache: any test may
    be the first to ask)."""
    key = (str(server.root), path.name)
    if key in _live_runs:
        return _live_runs[key]
    comfy = server.client
    workflow = load_ui_workflow(path)
    install_tiny_models(server.models_dir, workflow, target=COMFYUI)
    lr = lr_photo(40, 32)  # 4x: 160 x 128; small (the SD2 VAE is full size), but deep enough for every UNet
    for node in workflow["nodes"]:
        if node["type"] == "LoadImage":
            lr.save(server.input_dir / node["widgets_values"][0])
    object_info = comfy.object_info()  # now lists the installed files
    assert check_workflow(workflow, object_info) == [], "installed names do not match the widgets"
    prompt = shrink_for_cpu(ui_to_api_prompt(workflow, object_info), min_tile=False)
    entry = comfy.run(prompt, workflow=workflow, timeout=900)
    files = {node_id: comfy.output_files({"outputs": {node_id: output}})
             for node_id, output in (entry.get("outputs") or {}).items()}
    pixels = {}
    for node_id, paths in files.items():
        pixels[node_id] = []
        for png_path in paths:
            with Image.open(png_path) as png:
                pixels[node_id].append(np.asarray(png.convert("RGB")))
    _live_runs[key] = {"files": files, "pixels": pixels, "lr": lr}
    return _live_runs[key]


@pytest.mark.comfyui
@requires_comfyui
@pytest.mark.parametrize("path", workflow_params)
def test_workflow_runs_on_the_live_server(path, comfy_server):
    """The saved PNGs have the right size and colours, and carry the UI workflow; and every
    properties.models entry is what the frontend's missing-models check can find once installed."""
    workflow = load_ui_workflow(path)
    run = live_run(comfy_server, path)
    check_outputs(run["files"], workflow, run["lr"])
    save = next(str(n["id"]) for n in workflow["nodes"] if n["type"] == "SaveImage")
    with Image.open(run["files"][save][0]) as png:
        embedded = json.loads(png.text["workflow"])  # the UI workflow travels inside the PNG
    assert embedded["id"] == workflow["id"] and len(embedded["nodes"]) == len(workflow["nodes"])
    # The frontend's missing-models check: each properties.models entry names a folder the server
    # knows (/experiment/models) and, once installed, a file it lists there by that exact name.
    comfy = comfy_server.client
    folders = {f["name"] for f in comfy.get_json("/experiment/models")}
    for node in workflow["nodes"]:
        for entry in node.get("properties", {}).get("models", []):
            assert entry["directory"] in folders, entry
            listed = {f["name"] for f in comfy.get_json(f"/experiment/models/{entry['directory']}")}
            assert entry["name"] in listed, f"the frontend would still report {entry['name']} missing"


@pytest.mark.comfyui
@pytest.mark.dynamic_vram
@requires_comfyui
@pytest.mark.parametrize("path", workflow_params)
def test_workflow_gives_the_same_image_under_dynamic_vram(path, comfy_server, dynamic_vram_server):
    """DynamicVRAM on, as on an NVIDIA GPU (every loader builds its Linear layers without weights until
    they load): the workflow runs, and every image it saves or previews is the flag-off image, bit for bit."""
    workflow = load_ui_workflow(path)
    dynamic = live_run(dynamic_vram_server, path)
    check_outputs(dynamic["files"], workflow, dynamic["lr"])
    plain = live_run(comfy_server, path)
    assert dynamic["pixels"].keys() == plain["pixels"].keys()
    for node_id, images in plain["pixels"].items():
        assert len(dynamic["pixels"][node_id]) == len(images)
        for ours, theirs in zip(dynamic["pixels"][node_id], images):
            assert ours.shape == theirs.shape and np.array_equal(ours, theirs), \
                f"node {node_id}: {(ours != theirs).mean():.1%} of the values differ with DynamicVRAM on"


def _run_in_process(path: Path, lr: Image.Image, tmp_path: Path, models_root: Path, monkeypatch) -> dict:
    workflow = load_ui_workflow(path)
    models = tiny_models_for(workflow, models_root)
    inputs, outputs = tmp_path / "input", tmp_path / "output"
    for folder in models.iterdir():
        monkeypatch.setenv(f"ADDSR_{folder.name.upper()}_DIR", str(folder))
    inputs.mkdir(parents=True)
    for node in workflow["nodes"]:
        if node["type"] == "LoadImage":
            lr.save(inputs / node["widgets_values"][0])
    definitions = {**core_standins(models, inputs, outputs), **load_pack().NODE_CLASS_MAPPINGS}
    prompt = shrink_for_cpu(ui_to_api_prompt(workflow, definitions), min_tile=False)
    result = execute_api_prompt(prompt, definitions, extra_pnginfo={"workflow": workflow})
    saves = [str(n["id"]) for n in workflow["nodes"] if n["type"] == "SaveImage"]
    (save,) = saves
    (png,) = saved_files(result.ui[save], outputs)
    with Image.open(png) as image:
        return np.asarray(image.convert("RGB"))


def test_node_by_node_workflow_saves_the_all_in_one_image(tmp_path, models_root, monkeypatch):
    """The shipped basic graph and the shipped all-in-one graph, same widgets, same LR: the same PNG."""
    lr = lr_photo(40, 32)
    modular = _run_in_process(REPO / "workflows" / "addsr_basic_4x.json", lr, tmp_path / "modular", models_root, monkeypatch)
    one = _run_in_process(REPO / "workflows" / "addsr_all_in_one.json", lr, tmp_path / "one", models_root, monkeypatch)
    assert modular.shape == one.shape == (128, 160, 3)
    assert np.array_equal(modular, one), f"{(modular != one).mean():.1%} of the values differ"


@pytest.mark.parametrize("name", ["seesr_quality_50", "stablesr_turbo_4x"])
def test_a_workflow_saved_with_the_latent_pixel_nodes_gives_the_same_image(name, tmp_path, models_root, monkeypatch):
    """The shipped file as it was before the tiles became output pixels (tests/fixtures/workflows_before_v2:
    the deprecated SeeSR Sampler / StableSR Sampler and CFW Decode with their latent-pixel values) runs
    and saves the image of today's file."""
    old_path = REPO / "tests" / "fixtures" / "workflows_before_v2" / f"{name}.json"
    old_types = {n["type"] for n in load_ui_workflow(old_path)["nodes"]}
    new_types = {n["type"] for n in load_ui_workflow(REPO / "workflows" / f"{name}.json")["nodes"]}
    assert old_types - new_types and all(getattr(load_pack().NODE_CLASS_MAPPINGS[t], "DEPRECATED", False)
                                         for t in old_types - new_types)
    lr = lr_photo(40, 32)
    old = _run_in_process(old_path, lr, tmp_path / "old", models_root, monkeypatch)
    new = _run_in_process(REPO / "workflows" / f"{name}.json", lr, tmp_path / "new", models_root, monkeypatch)
    assert old.shape == new.shape == (128, 160, 3)
    assert np.array_equal(old, new), f"{(old != new).mean():.1%} of the values differ"
