"""Start a real ComfyUI server for tests, on loopback, with everything it writes in a temp folder.

The ComfyUI checkout (``COMFYUI_PATH``) is only read: models, inputs, outputs, temp files, the user
folder and the database all live under ``root``; our pack (and any extra node folders) is linked
into ``root/custom_nodes``. Every wait is bounded, every request goes to 127.0.0.1.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Iterable, Mapping

REPO = Path(__file__).resolve().parents[2]
STUBS = REPO / "tools" / "comfy_stubs"
LOOPBACK = "127.0.0.1"
PACK_LINK_NAME = "addsr"
STOPPED_LINE = "Stopped server"  # main.py logs it once its event loop has ended


class ComfyServerError(RuntimeError):
    """The server did not start, refused a prompt, or a prompt failed; carries the log tail."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


STUBBED_PACKAGES = ("torchvision", "torchaudio")  # no CPU builds on PyPI; ComfyUI 0.33 imports both at start-up


def stub_paths(python: str) -> list[str]:
    """The PYTHONPATH entries that give ``python`` an import-only stand-in (tools/comfy_stubs) for
    each of STUBBED_PACKAGES that does not import there; empty when all of them import."""
    missing = [name for name in STUBBED_PACKAGES
               if subprocess.run([python, "-c", f"import {name}"], capture_output=True, timeout=120).returncode != 0]
    return [str(STUBS / "import_only"), *(str(STUBS / name) for name in missing)] if missing else []


class ComfyServer:
    """One ComfyUI process. Use as a context manager, or call start() and stop()."""

    def __init__(self, comfyui_path, root, *, python: str | None = None, port: int | None = None,
                 link_pack: bool = True, extra_custom_nodes: Iterable = (), extra_args: Iterable[str] = (),
                 front_end_root: str | None = None, start_timeout: float = 180.0):
        self.comfyui_path = Path(comfyui_path).resolve()
        if not (self.comfyui_path / "main.py").is_file():
            raise ComfyServerError(f"{self.comfyui_path} is not a ComfyUI checkout (no main.py); "
                                   "set COMFYUI_PATH to one, see tools/setup_comfyui.sh")
        self.root = Path(root).resolve()
        self.python = python or os.environ.get("COMFYUI_PYTHON") or sys.executable
        self.port = port or free_port()
        self.link_pack = link_pack
        self.extra_custom_nodes = [Path(p).resolve() for p in extra_custom_nodes]
        self.extra_args = list(extra_args)
        # Which frontend the UI serves: COMFYUI_FRONTEND_ROOT (a comfyui_frontend_package/static folder,
        # see tools/setup_comfyui.sh --frontend), else the one the host's Python has installed.
        self.front_end_root = front_end_root or os.environ.get("COMFYUI_FRONTEND_ROOT") or None
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self.log_path = self.root / "comfyui.log"
        self.client = ComfyClient(LOOPBACK, self.port, server=self)

    # Folders the server uses, all inside root.
    @property
    def base_dir(self) -> Path:
        return self.root / "base"

    @property
    def custom_nodes_dir(self) -> Path:
        return self.base_dir / "custom_nodes"

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def temp_parent(self) -> Path:
        return self.root / "tmp"  # ComfyUI appends "temp" to --temp-directory

    def command(self) -> list[str]:
        return [
            self.python, "main.py", "--cpu", "--listen", LOOPBACK, "--port", str(self.port),
            "--disable-auto-launch", "--base-directory", str(self.base_dir),
            "--output-directory", str(self.output_dir), "--input-directory", str(self.input_dir),
            "--user-directory", str(self.base_dir / "user"), "--temp-directory", str(self.temp_parent),
            "--database-url", "sqlite:///:memory:",
            *(["--front-end-root", self.front_end_root] if self.front_end_root else []),
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = stub_paths(self.python)
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        if paths:
            env["PYTHONPATH"] = os.pathsep.join(paths)
        # Byte-code of ComfyUI and the pack goes to a cache of ours, not into either checkout.
        env.setdefault("PYTHONPYCACHEPREFIX", str(Path(tempfile.gettempdir()) / "addsr-comfyui-pycache"))
        env.update({"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"})
        return env

    def _prepare_dirs(self) -> None:
        for folder in (self.custom_nodes_dir, self.models_dir, self.input_dir, self.output_dir,
                       self.base_dir / "user", self.temp_parent):
            folder.mkdir(parents=True, exist_ok=True)
        links = ([(PACK_LINK_NAME, REPO)] if self.link_pack else []) + [(p.name, p) for p in self.extra_custom_nodes]
        for name, target in links:
            link = self.custom_nodes_dir / name
            if not link.exists():
                link.symlink_to(target, target_is_directory=True)

    def start(self) -> "ComfyServer":
        if self.process is not None:
            return self
        self._prepare_dirs()
        log = open(self.log_path, "wb")
        try:
            self.process = subprocess.Popen(self.command(), cwd=self.comfyui_path, env=self.environment(),
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ComfyServerError(f"ComfyUI exited with code {self.process.returncode} while starting:\n"
                                       f"{self.log_tail()}")
            with contextlib.suppress(OSError, ComfyServerError):
                if self.client.get_json("/queue", timeout=2) is not None:
                    return self
            time.sleep(0.25)
        self.stop()
        raise ComfyServerError(f"ComfyUI did not answer on {LOOPBACK}:{self.port} within {self.start_timeout:.0f} s:\n"
                               f"{self.log_tail()}")

    def stop(self, timeout: float = 20.0, teardown_grace: float = 1.0) -> None:
        """SIGINT, as Ctrl+C would: main.py leaves its event loop, logs "Stopped server" and removes
        its temp folder. What follows is only the interpreter collecting ComfyUI's module graph
        (seconds of gc on 2 cores, nothing written), so after a short grace the process is killed."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        stopped_at = None
        while process.poll() is None and time.monotonic() < deadline:
            if stopped_at is None and STOPPED_LINE in self.log_text():
                stopped_at = time.monotonic()
            if stopped_at is not None and time.monotonic() - stopped_at > teardown_grace:
                break
            time.sleep(0.1)
        if process.poll() is None:
            process.kill()
            process.wait(timeout=timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ComfyClient:
    """The HTTP calls tests need: /object_info, /prompt, /history."""

    def __init__(self, host: str, port: int, *, server: ComfyServer | None = None):
        if host not in (LOOPBACK, "localhost", "::1"):
            raise ValueError(f"tests only talk to loopback, not {host!r}")
        self.base_url = f"http://{host}:{port}"
        self.server = server
        self.client_id = uuid.uuid4().hex

    def _request(self, path: str, body: Mapping | None = None, timeout: float = 30.0):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method="POST" if data else "GET",
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as err:
            detail = err.read().decode("utf-8", errors="replace")
            raise ComfyServerError(f"{request.method} {path} -> HTTP {err.code}: {_pretty(detail)}") from None

    def get_json(self, path: str, timeout: float = 30.0):
        return self._request(path, timeout=timeout)

    def object_info(self, node_class: str | None = None) -> dict:
        path = "/object_info" + (f"/{urllib.parse.quote(node_class)}" if node_class else "")
        return self.get_json(path, timeout=120)

    def queue(self, prompt: Mapping, workflow: Mapping | None = None) -> str:
        """Queue an API prompt; returns its prompt_id. Validation errors raise with node_errors."""
        extra = {"extra_pnginfo": {"workflow": workflow}} if workflow is not None else {}
        reply = self._request("/prompt", {"prompt": prompt, "client_id": self.client_id, "extra_data": extra})
        if reply.get("node_errors"):
            raise ComfyServerError(f"prompt refused: {_pretty(reply['node_errors'])}")
        return reply["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        return (self.get_json(f"/history/{urllib.parse.quote(prompt_id)}") or {}).get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 120.0, poll: float = 0.25) -> dict:
        """The history entry once the prompt finished; raises on error or after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            status = (entry or {}).get("status") or {}
            if status.get("completed") or status.get("status_str") == "error":
                if status.get("status_str") == "error":
                    raise ComfyServerError(f"prompt {prompt_id} failed: {_execution_error(status)}\n{self._log_tail()}")
                return entry
            if self.server is not None and self.server.process is not None and self.server.process.poll() is not None:
                raise ComfyServerError(f"ComfyUI died while running {prompt_id}:\n{self._log_tail()}")
            time.sleep(poll)
        with contextlib.suppress(ComfyServerError, OSError):
            self._request("/interrupt", {})
        raise ComfyServerError(f"prompt {prompt_id} did not finish within {timeout:.0f} s\n{self._log_tail()}")

    def run(self, prompt: Mapping, workflow: Mapping | None = None, timeout: float = 120.0) -> dict:
        return self.wait(self.queue(prompt, workflow), timeout=timeout)

    def output_files(self, entry: Mapping) -> list[Path]:
        """Files that output nodes reported in a history entry, as paths in the output folder."""
        if self.server is None:
            raise ComfyServerError("output_files needs the ComfyServer that owns the output folder")
        roots = {"output": self.server.output_dir, "temp": self.server.temp_parent / "temp", "input": self.server.input_dir}
        files = []
        for node_output in (entry.get("outputs") or {}).values():
            for items in node_output.values():
                for item in items if isinstance(items, list) else []:
                    if isinstance(item, Mapping) and "filename" in item:
                        root = roots.get(item.get("type", "output"), self.server.output_dir)
                        files.append(root / item.get("subfolder", "") / item["filename"])
        return files

    def _log_tail(self) -> str:
        return self.server.log_tail() if self.server is not None else ""


def _execution_error(status: Mapping) -> str:
    for kind, data in status.get("messages") or []:
        if kind == "execution_error":
            return (f"node {data.get('node_id')} ({data.get('node_type')}): "
                    f"{data.get('exception_type')}: {data.get('exception_message')}")
    return _pretty(status)


def _pretty(detail) -> str:
    if isinstance(detail, str):
        with contextlib.suppress(ValueError):
            detail = json.loads(detail)
    return json.dumps(detail, indent=1)[:4000] if not isinstance(detail, str) else detail[:4000]
