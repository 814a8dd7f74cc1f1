"""pytest fixtures: ComfyUI servers shared by a test session, only when COMFYUI_PATH is set.

Use in a test module with::

    from comfy_host.fixtures import comfy, comfy_server, requires_comfyui  # noqa: F401
    pytestmark = [pytest.mark.comfyui, requires_comfyui]

Modules that import a fixture share its server (started on first use, stopped when the last user's
session teardown runs, or at interpreter exit at the latest). ``comfy_server`` is ComfyUI as
started on a CPU; ``dynamic_vram_server`` the same host with DynamicVRAM switched on as main.py does
on NVIDIA GPUs (tests/comfy_host/dynamic_vram_switch; hosts 0.16 and later). A module whose checks
need servers of its own (their own model folders) starts them with :func:`private_servers`.
"""
from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from .server import ComfyServer

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
requires_comfyui = pytest.mark.skipif(
    not COMFYUI_PATH, reason="needs a ComfyUI checkout in COMFYUI_PATH (see tools/setup_comfyui.sh)")
DYNAMIC_VRAM_SWITCH = Path(__file__).parent / "dynamic_vram_switch"
DYNAMIC_VRAM_LOG_LINE = "DynamicVRAM simulated"  # what the switch logs once it is on

_SERVER_OPTIONS = {"plain": {}, "dynamic_vram": {"extra_custom_nodes": [DYNAMIC_VRAM_SWITCH]}}
_shared: dict = {kind: {"server": None, "users": 0, "root": None} for kind in _SERVER_OPTIONS}


def _acquire(kind: str) -> ComfyServer:
    state = _shared[kind]
    if state["server"] is None:
        root = tempfile.mkdtemp(prefix=f"addsr-comfyui-{kind}-")
        server = ComfyServer(COMFYUI_PATH, root, start_timeout=float(os.environ.get("COMFYUI_START_TIMEOUT", "180")),
                             **_SERVER_OPTIONS[kind])
        state.update(server=server, root=root)
        atexit.register(_shutdown, kind)
        try:
            server.start()
        except BaseException:
            _shutdown(kind)  # the next user tries afresh instead of getting a dead server
            raise
    state["users"] += 1
    return state["server"]


def _release(kind: str) -> None:
    _shared[kind]["users"] -= 1
    if _shared[kind]["users"] <= 0:
        _shutdown(kind)


def _shutdown(kind: str) -> None:
    state = _shared[kind]
    server, root = state["server"], state["root"]
    state.update(server=None, root=None, users=0)
    if server is not None:
        server.stop()
    if root and not os.environ.get("COMFYUI_KEEP_TMP"):
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _serving(kind: str):
    if not COMFYUI_PATH:
        pytest.skip("needs a ComfyUI checkout in COMFYUI_PATH (see tools/setup_comfyui.sh)")
    server = _acquire(kind)
    try:
        yield server
    finally:
        _release(kind)


@pytest.fixture(scope="session")
def comfy_server():
    with _serving("plain") as server:
        yield server


@pytest.fixture(scope="session")
def dynamic_vram_server():
    """The host with DynamicVRAM on; fails (never skips) where the host has none (before 0.16)."""
    with _serving("dynamic_vram") as server:
        assert DYNAMIC_VRAM_LOG_LINE in server.log_text(), f"DynamicVRAM was not switched on:\n{server.log_tail()}"
        yield server


@contextlib.contextmanager
def private_servers(count: int, prepare=None):
    """``count`` servers of the caller's own (not the shared ones), each in its own temp folder,
    started side by side; ``prepare(servers)`` runs while they start (e.g. to install model files:
    the server lists its folders on each request). Stopped and removed on exit."""
    servers = [ComfyServer(COMFYUI_PATH, tempfile.mkdtemp(prefix="addsr-comfyui-"),
                           start_timeout=float(os.environ.get("COMFYUI_START_TIMEOUT", "180")))
               for _ in range(count)]
    try:
        with concurrent.futures.ThreadPoolExecutor(count) as pool:
            starting = [pool.submit(server.start) for server in servers]
            if prepare is not None:
                prepare(servers)
            for future in starting:
                future.result()
        yield servers
    finally:
        for server in servers:
            server.stop()
            if not os.environ.get("COMFYUI_KEEP_TMP"):
                shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="session")
def comfy(comfy_server):
    """The HTTP client of the shared server: object_info(), queue(), wait(), run(), output_files()."""
    return comfy_server.client
