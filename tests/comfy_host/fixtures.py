"""pytest fixtures: one ComfyUI server per test session, only when COMFYUI_PATH is set.

Use in a test module with::

    from comfy_host.fixtures import comfy, comfy_server, requires_comfyui  # noqa: F401
    pytestmark = [pytest.mark.comfyui, requires_comfyui]

Modules that import the fixtures share one server (started on first use, stopped when the last
user's session teardown runs, or at interpreter exit at the latest). A module whose checks need
servers of its own (their own model folders) starts them with :func:`private_servers`.
"""
from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import os
import shutil
import tempfile

import pytest

from .server import ComfyServer

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
requires_comfyui = pytest.mark.skipif(
    not COMFYUI_PATH, reason="needs a ComfyUI checkout in COMFYUI_PATH (see tools/setup_comfyui.sh)")

_shared: dict = {"server": None, "users": 0, "root": None}


def _acquire() -> ComfyServer:
    if _shared["server"] is None:
        root = tempfile.mkdtemp(prefix="addsr-comfyui-")
        server = ComfyServer(COMFYUI_PATH, root,
                             start_timeout=float(os.environ.get("COMFYUI_START_TIMEOUT", "180")))
        _shared.update(server=server, root=root)
        atexit.register(_shutdown)
        try:
            server.start()
        except BaseException:
            _shutdown()  # the next user tries afresh instead of getting a dead server
            raise
    _shared["users"] += 1
    return _shared["server"]


def _release() -> None:
    _shared["users"] -= 1
    if _shared["users"] <= 0:
        _shutdown()


def _shutdown() -> None:
    server, root = _shared["server"], _shared["root"]
    _shared.update(server=None, root=None, users=0)
    if server is not None:
        server.stop()
    if root and not os.environ.get("COMFYUI_KEEP_TMP"):
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def private_servers(count: int, prepare=None):
    """``count`` servers of the caller's own (not the shared one), each in its own temp folder,
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
def comfy_server():
    if not COMFYUI_PATH:
        pytest.skip("needs a ComfyUI checkout in COMFYUI_PATH (see tools/setup_comfyui.sh)")
    server = _acquire()
    try:
        yield server
    finally:
        _release()


@pytest.fixture(scope="session")
def comfy(comfy_server):
    """The HTTP client of the shared server: object_info(), queue(), wait(), run(), output_files()."""
    return comfy_server.client
