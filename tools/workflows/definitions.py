"""The node definitions the workflows are built from: ComfyUI's core nodes (a snapshot) and the pack's own classes.

The snapshot (core_object_info.json) is the /object_info of ComfyUI 0.3.64, the oldest supported
host, recorded by tests/comfy_host/snapshot_object_info.py, so the workflows use only what every
supported host has.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
CORE_SNAPSHOT = Path(__file__).resolve().parent / "core_object_info.json"
PACKAGE_NAME = "addsr_pack_under_test"


def load_pack() -> ModuleType:
    """The pack's top-level package, imported the way ComfyUI imports a custom-node folder (a package
    from __init__.py); its NODE_CLASS_MAPPINGS is what ComfyUI registers."""
    if PACKAGE_NAME in sys.modules:
        return sys.modules[PACKAGE_NAME]
    spec = importlib.util.spec_from_file_location(PACKAGE_NAME, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PACKAGE_NAME]
        raise
    return module


def core_definitions() -> dict:
    """The core nodes' /object_info entries, as ComfyUI 0.3.64 serves them."""
    return json.loads(CORE_SNAPSHOT.read_text())["nodes"]


def definitions() -> dict:
    """Core node definitions (snapshot) plus the pack's classes."""
    return {**core_definitions(), **load_pack().NODE_CLASS_MAPPINGS}
