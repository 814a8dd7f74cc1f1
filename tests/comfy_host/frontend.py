"""ComfyUI's real frontend, served by a test server, in headless Chromium driven by Playwright.

Debian's ``chromium`` is the browser (Playwright's own browser download is never used: this machine
has no network). The page talks only to the loopback server; requests to other hosts fail at once
and are not counted as errors of ours (the frontend asks api.comfy.org for release notes and
Hugging Face for file sizes).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Settings a first-time user would click away (the templates dialog would cover the graph); full
# detail at the zoom that fits a whole workflow, and no minimap over its corner, for the screenshots.
QUIET_SETTINGS = {"Comfy.TutorialCompleted": True, "LiteGraph.Canvas.MinFontSizeForLOD": 0, "Comfy.Minimap.Visible": False}
# Frontend 1.27.10 raises this while registering its own settings at start-up, with or without any
# custom node pack installed; only errors raised while a workflow loads are ours.
STARTUP_ERRORS_OF_THE_FRONTEND = ("Cannot read properties of undefined (reading 'id')",)

# One row per node of the loaded graph, as the frontend built it.
_NODES_JS = """() => window.app.graph._nodes.map(n => ({
    id: n.id, type: n.type, title: n.title || '',
    registered: !!LiteGraph.registered_node_types[n.type],
    display_name: (LiteGraph.registered_node_types[n.type]?.nodeData?.display_name) || '',
    has_errors: !!n.has_errors,
    widgets: (n.widgets || []).map(w => w.name),
}))"""
_SERIALIZED_WIDGETS_JS = "() => Object.fromEntries(window.app.graph.serialize().nodes.map(n => [n.id, n.widgets_values || []]))"
_DIALOGS_JS = "() => Array.from(document.querySelectorAll('.p-dialog')).filter(d => d.offsetParent !== null).map(d => d.innerText)"


def chromium_path() -> str:
    """Debian's Chromium; a clear failure (not a skip) when it is not installed."""
    path = os.environ.get("ADDSR_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise RuntimeError("Chromium not found: install Debian's package (apt-get install chromium) "
                           "or set ADDSR_CHROMIUM to a Chromium binary")
    return path


@dataclass
class LoadedGraph:
    """What the frontend made of one workflow file."""

    nodes: list[dict]
    widgets_values: dict[str, list]
    errors: list[str]
    dialogs: list[str] = field(default_factory=list)


class Frontend:
    """One browser page on the server's UI. Use as a context manager."""

    def __init__(self, port: int, *, timeout_s: float = 120.0):
        self.base_url = f"http://127.0.0.1:{port}"
        self.timeout_ms = int(timeout_s * 1000)
        self._errors: list[str] = []
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "Frontend":
        from playwright.sync_api import sync_playwright

        playwright = self._stack.enter_context(sync_playwright())
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        self._stack.callback(browser.close)
        self.page = browser.new_page(viewport={"width": 2400, "height": 1350})
        self.page.on("pageerror", lambda err: self._errors.append(f"page error: {err}"))
        self.page.on("console", self._on_console)
        self.page.on("response", self._on_response)
        self._apply_settings()
        self.page.goto(self.base_url + "/", timeout=self.timeout_ms)
        self.page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=self.timeout_ms)
        self.page.wait_for_load_state("networkidle", timeout=self.timeout_ms)
        self.startup_errors, self._errors = self._errors, []
        self.close_dialogs()
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def _apply_settings(self) -> None:
        import json
        import urllib.request

        for key, value in QUIET_SETTINGS.items():
            request = urllib.request.Request(f"{self.base_url}/api/settings/{urllib.parse.quote(key)}",
                                             data=json.dumps(value).encode(), method="POST",
                                             headers={"Content-Type": "application/json"})
            urllib.request.urlopen(request, timeout=30).close()

    def _is_ours(self, url: str) -> bool:
        return url.startswith(self.base_url)

    def _on_console(self, message) -> None:
        if message.type != "error":
            return
        text = message.text
        # Network failures are reported separately by _on_response (ours) or are the closed network.
        if text.startswith("Failed to load resource") or "Failed to fetch" in text:
            return
        self._errors.append(f"console error: {text[:2000]}")

    def _on_response(self, response) -> None:
        if self._is_ours(response.url) and response.status >= 500:
            self._errors.append(f"HTTP {response.status} from {response.url}")

    def close_dialogs(self) -> None:
        for _ in range(5):
            if not self.page.evaluate(_DIALOGS_JS):
                return
            self.page.keyboard.press("Escape")
            time.sleep(0.3)
        raise AssertionError(f"dialogs would not close: {self.page.evaluate(_DIALOGS_JS)}")

    def load(self, workflow: dict) -> LoadedGraph:
        """Load a UI workflow as a user dropping the file would (missing-node/model dialogs on)."""
        self._errors = []
        self.page.evaluate("async (wf) => { await window.app.loadGraphData(wf, true, true, 'test'); }", workflow)
        self.page.wait_for_load_state("networkidle", timeout=self.timeout_ms)
        time.sleep(0.5)  # dialogs open on the next animation frames
        return LoadedGraph(nodes=self.page.evaluate(_NODES_JS),
                           widgets_values={str(k): v for k, v in self.page.evaluate(_SERIALIZED_WIDGETS_JS).items()},
                           errors=list(self._errors), dialogs=self.page.evaluate(_DIALOGS_JS))

    def screenshot(self, path: Path) -> None:
        """The whole graph fitted to the window, no dialog over it."""
        self.close_dialogs()
        self.page.evaluate("() => window.app.extensionManager.command.execute('Comfy.Canvas.FitView')")
        time.sleep(0.5)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path))
