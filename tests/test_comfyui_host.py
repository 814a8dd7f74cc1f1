"""The ComfyUI test host: its lifecycle against a stand-in server, then a real ComfyUI.

Tests marked ``comfyui`` are skipped unless COMFYUI_PATH points at a checkout. The server runs from
tests/comfy_host: loopback only, a free port, everything it writes in a temp folder, this repository
linked in as custom_nodes/addsr.
"""
import json
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_host import ComfyClient, ComfyServer, ComfyServerError
from comfy_host.fixtures import comfy, comfy_server, requires_comfyui  # noqa: F401
from comfy_host.pack import load_pack
from comfy_host.workflow_graph import (
    UIWorkflowBuilder,
    as_node_specs,
    check_workflow,
    ui_to_api_prompt,
    validate_api_prompt,
)

# A stand-in for ComfyUI's main.py: the few routes the client uses, so the harness's start, queue,
# wait, error and stop paths run without a checkout.
FAKE_MAIN = textwrap.dedent("""
    import argparse, json, os, sys, time, uuid
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int)
    parser.add_argument("--listen")
    parser.add_argument("--output-directory")
    args, _ = parser.parse_known_args()
    if os.environ.get("FAKE_COMFY_CRASH"):
        print("fake crash on startup", flush=True)
        sys.exit(3)
    history = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def send(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/queue":
                self.send(200, {"queue_running": [], "queue_pending": []})
            elif self.path == "/object_info":
                self.send(200, {"FakeSave": {"input": {"required": {"n": ["INT", {"min": 1}]}}, "output": []}})
            elif self.path.startswith("/history/"):
                pid = self.path.rsplit("/", 1)[1]
                self.send(200, {pid: history[pid]} if pid in history else {})
            else:
                self.send(404, {})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/prompt":
                self.send(200, {})
                return
            node = body["prompt"]["1"]
            if node["inputs"]["n"] < 1:
                self.send(400, {"error": {"type": "prompt_outputs_failed_validation"},
                                "node_errors": {"1": {"errors": [{"type": "value_smaller_than_min"}]}}})
                return
            pid = uuid.uuid4().hex
            if node["inputs"]["n"] == 13:
                history[pid] = {"status": {"status_str": "error", "completed": False, "messages": [
                    ["execution_error", {"node_id": "1", "node_type": "FakeSave", "exception_type": "ValueError",
                                         "exception_message": "unlucky"}]]}, "outputs": {}}
            elif node["inputs"]["n"] != 99:  # 99: never finishes
                open(os.path.join(args.output_directory, "fake_00001_.png"), "wb").write(b"png")
                history[pid] = {"status": {"status_str": "success", "completed": True, "messages": []},
                                "outputs": {"1": {"images": [{"filename": "fake_00001_.png", "subfolder": "",
                                                              "type": "output"}]}}}
            self.send(200, {"prompt_id": pid, "number": 0, "node_errors": {}})

    print("Starting server", flush=True)
    try:
        ThreadingHTTPServer((args.listen, args.port), Handler).serve_forever()
    except KeyboardInterrupt:  # as main.py: leave the loop, say so, then the interpreter tears down
        print("Stopped server", flush=True)
        if os.environ.get("FAKE_COMFY_SLOW_TEARDOWN"):
            time.sleep(600)
""")


@pytest.fixture
def fake_comfyui(tmp_path):
    checkout = tmp_path / "ComfyUI"
    checkout.mkdir()
    (checkout / "main.py").write_text(FAKE_MAIN)
    return checkout


def test_harness_lifecycle_on_a_stand_in_server(fake_comfyui, tmp_path):
    server = ComfyServer(fake_comfyui, tmp_path / "run", python=sys.executable, start_timeout=30)
    assert "--listen" in server.command() and server.command()[server.command().index("--listen") + 1] == "127.0.0.1"
    with server:
        assert (server.custom_nodes_dir / "addsr").resolve() == Path(__file__).resolve().parents[1]
        client = server.client
        assert "FakeSave" in client.object_info()
        entry = client.run({"1": {"class_type": "FakeSave", "inputs": {"n": 2}}}, timeout=10)
        files = client.output_files(entry)
        assert files == [server.output_dir / "fake_00001_.png"] and files[0].read_bytes() == b"png"
        with pytest.raises(ComfyServerError, match="value_smaller_than_min"):
            client.queue({"1": {"class_type": "FakeSave", "inputs": {"n": 0}}})
        with pytest.raises(ComfyServerError, match="FakeSave.*ValueError: unlucky"):
            client.run({"1": {"class_type": "FakeSave", "inputs": {"n": 13}}}, timeout=10)
        with pytest.raises(ComfyServerError, match="did not finish within 1 s"):
            client.run({"1": {"class_type": "FakeSave", "inputs": {"n": 99}}}, timeout=1)
        process = server.process
    assert process.poll() is not None and server.process is None
    assert not (fake_comfyui / "output").exists()  # nothing written into the checkout


def test_harness_stops_after_the_clean_shutdown_without_waiting_for_teardown(fake_comfyui, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_COMFY_SLOW_TEARDOWN", "1")
    server = ComfyServer(fake_comfyui, tmp_path / "run", python=sys.executable, start_timeout=30)
    server.start()
    process = server.process
    started = time.monotonic()
    server.stop(timeout=300)
    assert process.poll() is not None
    assert "Stopped server" in server.log_text()  # it went through the server's own shutdown
    assert time.monotonic() - started < 60  # not the 600 s teardown, nor the 300 s timeout


def test_harness_reports_a_server_that_dies_on_startup(fake_comfyui, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_COMFY_CRASH", "1")
    server = ComfyServer(fake_comfyui, tmp_path / "run", python=sys.executable, start_timeout=30)
    with pytest.raises(ComfyServerError, match="exited with code 3(.|\\n)*fake crash on startup"):
        server.start()


def test_harness_refuses_what_is_not_loopback_or_comfyui(tmp_path):
    with pytest.raises(ValueError, match="loopback"):
        ComfyClient("10.1.2.3", 8188)
    with pytest.raises(ComfyServerError, match="not a ComfyUI checkout"):
        ComfyServer(tmp_path, tmp_path / "run")


@pytest.fixture(scope="module")
def object_info(comfy):
    return comfy.object_info()


@pytest.fixture(scope="module")
def pack_mappings():
    try:
        pack = load_pack()
    except Exception as err:  # the pack's own entry point must never raise; if it does, say so
        pytest.fail(f"importing the pack like ComfyUI does raised {type(err).__name__}: {err}")
    if not getattr(pack, "NODE_CLASS_MAPPINGS", None):
        pytest.fail("the pack registers no nodes (its __init__ logged why: a missing dependency?)")
    return pack.NODE_CLASS_MAPPINGS


@pytest.mark.comfyui
@requires_comfyui
def test_server_lists_every_pack_node(object_info, pack_mappings, comfy_server):
    missing = sorted(set(pack_mappings) - set(object_info))
    assert not missing, f"not registered in ComfyUI: {missing}\n{comfy_server.log_tail()}"
    failed = [line for line in comfy_server.log_text().splitlines()
              if "IMPORT FAILED" in line and "custom_nodes/addsr" in line]
    assert not failed, failed


@pytest.mark.comfyui
@requires_comfyui
def test_server_sees_the_same_inputs_and_outputs(object_info, pack_mappings):
    ours = as_node_specs(pack_mappings)
    served = as_node_specs({name: object_info[name] for name in pack_mappings})
    for name, spec in ours.items():
        def shape(s):
            return [(i.name, i.type, i.required, i.is_widget, i.control_values) for i in s.inputs]
        assert shape(served[name]) == shape(spec), name
        assert served[name].outputs == spec.outputs and served[name].output_node == spec.output_node, name


@pytest.mark.comfyui
@requires_comfyui
def test_core_workflow_runs_end_to_end(comfy, object_info):
    """EmptyImage -> SaveImage built as a UI workflow, checked, converted, queued and saved."""
    builder = UIWorkflowBuilder(object_info)
    empty = builder.add("EmptyImage", width=40, height=24, batch_size=2, color=0xFF8000)
    save = builder.add("SaveImage", filename_prefix="addsr_harness")
    builder.connect(empty, "IMAGE", save, "images")
    workflow = builder.build()
    assert check_workflow(workflow, object_info) == []

    entry = comfy.run(ui_to_api_prompt(workflow, object_info), workflow=workflow, timeout=120)
    files = comfy.output_files(entry)
    assert len(files) == 2 and all(f.is_file() for f in files)
    with Image.open(files[0]) as png:
        assert png.size == (40, 24)
        assert np.array(png.convert("RGB"))[5, 5].tolist() == [255, 128, 0]
        embedded = json.loads(png.text["workflow"])  # the UI workflow travels inside the PNG
    assert check_workflow(embedded, object_info) == []
    assert ui_to_api_prompt(embedded, object_info) == ui_to_api_prompt(workflow, object_info)


@pytest.mark.comfyui
@requires_comfyui
def test_our_validator_refuses_what_the_server_refuses(comfy, object_info):
    builder = UIWorkflowBuilder(object_info)
    empty = builder.add("EmptyImage", width=16, height=16)
    save = builder.add("SaveImage")
    builder.connect(empty, 0, save, "images")
    prompt = ui_to_api_prompt(builder.build(), object_info)
    prompt[str(empty)]["inputs"]["width"] = 0  # min is 1
    assert any("width = 0 is below its min 1" in p for p in validate_api_prompt(prompt, object_info))
    with pytest.raises(ComfyServerError, match="value_smaller_than_min"):
        comfy.queue(prompt)


@pytest.mark.comfyui
@requires_comfyui
def test_a_torn_model_file_is_a_clear_error_and_the_server_keeps_serving(comfy, comfy_server, tmp_path):
    """A half-downloaded .safetensors in models/addsr: the client gets our message (the file, what is
    wrong, re-download), not safetensors' bare header error, and the server takes the next request."""
    from safetensors.torch import save_file

    name = "torn_addsr_pack.safetensors"
    whole = tmp_path / name
    save_file({"unet.w": torch.zeros(64, 64)}, str(whole))
    (comfy_server.models_dir / "addsr").mkdir(parents=True, exist_ok=True)
    torn = comfy_server.models_dir / "addsr" / name
    torn.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    prompt = {"1": {"class_type": "AddSRModelLoader", "inputs": {"model": name, "dtype": "fp32"}},
              "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}  # any output node
    try:
        prompt_id = comfy.queue(prompt)
        with pytest.raises(ComfyServerError):
            comfy.wait(prompt_id, timeout=120)
        messages = comfy.history(prompt_id)["status"]["messages"]
        error = next(data for kind, data in messages if kind == "execution_error")
        assert error["node_type"] == "AddSRModelLoader", error
        message = error["exception_message"]
        assert name in message and "is not a valid .safetensors file (truncated" in message, message
        assert "Re-download it; a partial download is the usual cause" in message, message
        assert "Error while deserializing header" not in message, message
        # The library's CheckpointError reaches ComfyUI once converted (comfy_bridge.node_errors):
        # the node error, with no library frames in the traceback the UI shows.
        assert error["exception_type"].endswith("comfy_bridge.AddSRInputError"), error
        assert not any("addsr_core" in frame for frame in error["traceback"]), error["traceback"]
        assert set(comfy.get_json("/queue")) >= {"queue_running", "queue_pending"}  # still serving
    finally:
        torn.unlink()
