"""ComfyUI's real frontend, served by a test server, in headless Chromium driven by Playwright.

Debian's ``chromium`` is the browser (Playwright's own browser download is never used: this machine
has no network). The page talks only to the loopback server; requests to other hosts fail at once
and are not counted as errors of ours (the frontend asks api.comfy.org for release notes and
Hugging Face for file sizes).

What a loaded workflow looks like is read from the frontend itself (frontend 1.49 and later):

* the graph: ``window.app``'s LiteGraph nodes (ids are strings), their widgets and the red
  outline flag ``has_errors``, which the frontend sets on a node with a missing model file or
  input image (``useNodeErrorFlagSync``), a missing node type or a validation error;
* the missing files: the Pinia stores ``missingModel`` (``missingModelCandidates``) and
  ``missingMedia`` (``missingMediaCandidates``) that the issues panel is drawn from;
* the panel as a user sees it: the "N errors found" (1.49) / "N issues found" (1.58) overlay, and
  after its "View details", the right side panel's sections and Download buttons.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Settings a first-time user would click away (the templates dialog would cover the graph); full
# detail at the zoom that fits a whole workflow, and no minimap over its corner, for the screenshots.
QUIET_SETTINGS = {"Comfy.TutorialCompleted": True, "LiteGraph.Canvas.MinFontSizeForLOD": 0, "Comfy.Minimap.Visible": False}
# The missing-file stores, the issues panel and string node ids arrived in 1.49 (Missing Models
# dialog before); the checks here read them, so an older frontend is an error, not a pass.
MIN_FRONTEND = (1, 49)
# Console errors a frontend version logs while it starts, with or without any custom node pack
# installed, by exact version. 1.49.6: app.ts's rootGraph getter, read before the graph exists.
STARTUP_ERRORS_OF_THE_FRONTEND = {
    "1.49.6": ("ComfyApp graph accessed before initialization",),
}

_VERSION_JS = "() => window.__COMFYUI_FRONTEND_VERSION__ || ''"
# One row per node of the loaded graph, as the frontend built it; absent: each combo widget whose
# value the server does not offer (the frontend skips a widget driven by a link, and so do we).
_NODES_JS = """() => window.app.graph._nodes.map(n => {
    const linked = (w) => (n.inputs || []).some(i => i.widget && i.widget.name === w.name && i.link != null);
    const options = (w) => { const v = w.options && w.options.values; return typeof v === 'function' ? v() : v; };
    const inputs = LiteGraph.registered_node_types[n.type]?.nodeData?.input || {};
    const upload = (w) => { const o = (inputs.required?.[w.name] || inputs.optional?.[w.name] || [])[1] || {};
                            return !!(o.image_upload || o.animated_image_upload || o.video_upload || o.audio_upload); };
    return {
        id: String(n.id), type: n.type, title: n.title || '', mode: n.mode ?? 0,
        registered: !!LiteGraph.registered_node_types[n.type],
        display_name: (LiteGraph.registered_node_types[n.type]?.nodeData?.display_name) || '',
        has_errors: !!n.has_errors,
        widgets: (n.widgets || []).map(w => w.name),
        absent: (n.widgets || []).filter(w => w.type === 'combo' && !linked(w) && Array.isArray(options(w))
                                              && !options(w).includes(w.value))
                                 .map(w => ({widget: w.name, value: w.value, upload: upload(w)})),
    };
})"""
_SERIALIZED_WIDGETS_JS = "() => Object.fromEntries(window.app.graph.serialize().nodes.map(n => [n.id, n.widgets_values || []]))"
_DIALOGS_JS = "() => Array.from(document.querySelectorAll('.p-dialog')).filter(d => d.offsetParent !== null).map(d => d.innerText)"
_DROP_JS = """async ([text, name]) => {
    await window.app.handleFile(new File([text], name, {type: 'application/json'}), 'file_drop');
}"""
_PINIA = "document.getElementById('vue-app').__vue_app__.config.globalProperties.$pinia._s"
_MISSING_JS = f"""() => {{
    const stores = {_PINIA};
    const models = stores.get('missingModel'), media = stores.get('missingMedia');
    if (!models || !media) return null;
    const overlay = document.querySelector('[data-testid=error-overlay]');
    return {{
        models: (models.missingModelCandidates || []).map(c => ({{
            name: c.name, node_id: String(c.nodeId), widget: c.widgetName,
            url: c.url ?? null, directory: c.directory ?? null, missing: c.isMissing ?? null}})),
        media: (media.missingMediaCandidates || []).map(c => ({{
            name: c.name, node_id: String(c.nodeId), widget: c.widgetName, missing: c.isMissing ?? null}})),
        overlay: overlay ? overlay.innerText : null,
    }};
}}"""
_PANEL_JS = """() => {
    const panel = document.querySelector('[data-testid=properties-panel]');
    if (!panel || panel.offsetParent === null) return null;
    const sections = Array.from(panel.querySelectorAll('[data-testid^="error-group-"]'))
        .map(s => s.dataset.testid).filter(id => id !== 'error-group-display-message');
    return {
        sections: sections.map(id => id.slice('error-group-'.length)),
        downloads: Array.from(panel.querySelectorAll('[data-testid=missing-model-download]'))
            .map(b => (b.getAttribute('aria-label') || '').replace(/^Download /, '')),
    };
}"""
_CLOSE_PANEL_JS = f"() => {_PINIA}.get('rightSidePanel').closePanel()"
_OVERLAY_COUNT = re.compile(r"(\d+) (?:errors?|issues?) found")


def chromium_path() -> str:
    """Debian's Chromium; a clear failure (not a skip) when it is not installed."""
    path = os.environ.get("ADDSR_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise RuntimeError("Chromium not found: install Debian's package (apt-get install chromium) "
                           "or set ADDSR_CHROMIUM to a Chromium binary")
    return path


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


@dataclass(frozen=True)
class MissingFile:
    """One entry of the issues panel: a model file (``kind="model"``) or an input (``"media"``)."""

    kind: str
    name: str
    node_id: str
    widget: str
    url: str | None = None  # from the workflow's properties.models, when the frontend matched one
    directory: str | None = None


@dataclass
class IssuesPanel:
    """What the frontend reports about missing files: its stores' entries, the overlay's count, and
    (once opened) the panel's sections and the files it offers to download."""

    files: list[MissingFile]
    overlay: str | None  # the overlay's text; None when no overlay is shown
    sections: list[str] | None = None  # e.g. ["missing-model", "missing-media"]; None: panel not opened
    downloads: list[str] = field(default_factory=list)  # file names with a Download button

    @property
    def overlay_count(self) -> int:
        """The number in "N errors/issues found"; 0 without an overlay."""
        if self.overlay is None:
            return 0
        found = _OVERLAY_COUNT.search(self.overlay)
        if not found:
            raise AssertionError(f"the issues overlay has no 'N issues found' line: {self.overlay!r}")
        return int(found.group(1))


@dataclass
class LoadedGraph:
    """What the frontend made of one workflow file."""

    nodes: list[dict]
    widgets_values: dict[str, list]
    errors: list[str]
    issues: IssuesPanel
    dialogs: list[str] = field(default_factory=list)

    def node(self, node_id) -> dict:
        return next(n for n in self.nodes if n["id"] == str(node_id))


class Browser:
    """Headless Chromium under Playwright; pages on one or more servers. Use as a context manager."""

    def __init__(self, *, timeout_s: float = 120.0):
        self.timeout_s = timeout_s
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "Browser":
        from playwright.sync_api import sync_playwright

        playwright = self._stack.enter_context(sync_playwright())
        self._browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        self._stack.callback(self._browser.close)
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def open(self, port: int) -> "Frontend":
        """The server's UI in a new page, started and checked (see Frontend.start)."""
        page = self._browser.new_page(viewport={"width": 2400, "height": 1350}, locale="en-US")
        try:
            return Frontend(page, port, timeout_s=self.timeout_s).start()
        except BaseException:
            page.close()
            raise


class Frontend:
    """One browser page on a server's UI."""

    def __init__(self, page, port: int, *, timeout_s: float = 120.0):
        self.page = page
        self.base_url = f"http://127.0.0.1:{port}"
        self.timeout_ms = int(timeout_s * 1000)
        self._errors: list[str] = []
        self.page.on("pageerror", lambda err: self._errors.append(f"page error: {err}"))
        self.page.on("console", self._on_console)
        self.page.on("response", self._on_response)

    def start(self) -> "Frontend":
        """Opens the UI; fails on a frontend older than MIN_FRONTEND and on any start-up error but
        the ones STARTUP_ERRORS_OF_THE_FRONTEND lists for this exact version."""
        self._apply_settings()
        self.page.goto(self.base_url + "/", timeout=self.timeout_ms)
        self.page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=self.timeout_ms)
        self.page.wait_for_load_state("networkidle", timeout=self.timeout_ms)
        self.version = self.page.evaluate(_VERSION_JS)
        if version_tuple(self.version) < MIN_FRONTEND:
            raise AssertionError(f"frontend {self.version or '(unknown)'} is older than "
                                 f"{'.'.join(map(str, MIN_FRONTEND))}: these checks read its issues panel")
        known = {f"console error: {message}" for message in STARTUP_ERRORS_OF_THE_FRONTEND.get(self.version, ())}
        self.startup_errors, self._errors = [e for e in self._errors if e not in known], []
        self.close_dialogs()
        return self

    def close(self) -> None:
        self.page.close()

    def _apply_settings(self) -> None:
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

    def load(self, workflow: dict, name: str = "workflow.json") -> LoadedGraph:
        """Load a UI workflow as a user dropping the file ``name`` onto the canvas would, and wait
        until the frontend has settled what it reports (the missing-file checks run after the
        graph is built and ask the server for its folders)."""
        self.close_panel()
        self._errors = []
        self.page.evaluate(_DROP_JS, [json.dumps(workflow), name])
        self.page.wait_for_load_state("networkidle", timeout=self.timeout_ms)
        nodes, issues = self._settled()
        return LoadedGraph(nodes=nodes,
                           widgets_values={str(k): v for k, v in self.page.evaluate(_SERIALIZED_WIDGETS_JS).items()},
                           errors=list(self._errors), issues=issues, dialogs=self.page.evaluate(_DIALOGS_JS))

    def _settled(self, quiet_s: float = 0.5, timeout_s: float = 30.0) -> tuple[list[dict], IssuesPanel]:
        """The nodes and missing files once two reads ``quiet_s`` apart agree."""
        deadline = time.monotonic() + timeout_s
        last = None
        while True:
            time.sleep(quiet_s)
            now = (self.page.evaluate(_NODES_JS), self.page.evaluate(_MISSING_JS))
            if now[1] is None:
                raise AssertionError(f"frontend {self.version} has no missingModel/missingMedia store")
            if now == last or time.monotonic() > deadline:
                break
            last = now
        nodes, missing = now
        files = [MissingFile("model", m["name"], m["node_id"], m["widget"], m["url"], m["directory"])
                 for m in missing["models"] if m["missing"] is not False]
        files += [MissingFile("media", m["name"], m["node_id"], m["widget"])
                  for m in missing["media"] if m["missing"] is not False]
        return nodes, IssuesPanel(files=files, overlay=missing["overlay"])

    def open_issues(self, loaded: LoadedGraph) -> IssuesPanel:
        """Clicks the overlay's "View details", as a user would, and reads the panel into
        ``loaded.issues`` (its sections and the files it offers to download)."""
        self.page.click("[data-testid=error-overlay-see-errors]", timeout=self.timeout_ms)
        self.page.wait_for_selector("[data-testid=properties-panel] [data-testid^='error-group-']",
                                    timeout=self.timeout_ms)
        time.sleep(0.5)  # rows of later sections render on the next frames
        panel = self.page.evaluate(_PANEL_JS)
        loaded.issues.sections, loaded.issues.downloads = panel["sections"], panel["downloads"]
        return loaded.issues

    def close_panel(self) -> None:
        self.page.evaluate(_CLOSE_PANEL_JS)

    def screenshot(self, path: Path, *, fit: bool = True) -> None:
        """The whole graph fitted to the window, no dialog over it (the issues panel stays if open)."""
        self.close_dialogs()
        if fit:
            self.page.evaluate("() => window.app.extensionManager.command.execute('Comfy.Canvas.FitView')")
        time.sleep(0.5)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path))
