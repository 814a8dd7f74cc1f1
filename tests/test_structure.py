"""The import structure of addsr_core, nodes and tools (docs/architecture.md, "The folders").

Imports are read statically (ast), at module level and inside functions alike (a lazy import still
ties two modules together), plus ``importlib.import_module("...")`` / ``comfy_module("...")`` calls
with a literal name. Four rules:

- **cycle**: no import cycle among the modules of addsr_core, of nodes, of tools;
- **layer**: inside addsr_core a module imports only lower layers (``LAYERS``) or its own folder;
- **host**: addsr_core never imports ComfyUI, nodes, tools or the tests; nodes import ComfyUI only
  inside functions of nodes/comfy_bridge.py; tools never import the tests.

What still breaks them is listed in ``KNOWN_VIOLATIONS``; the list can only shrink: a new violation
fails, and so does a listed one that no longer exists.
"""
from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("addsr_core", "nodes", "tools")

# addsr_core's layers, lowest first: a module may import its own top-level folder/module and any
# lower layer. Entry points (the top layer) may import each other; the cycle rule still holds there.
LAYERS = {
    "errors": 0,
    "models": 1, "compiling": 1,  # the networks and the compile switch
    "precision": 2, "memory": 2,  # the dtype / memory-format policy (knows the VAE class); the GPU tile-size policy
    "loading": 3, "sampling": 3,  # component folders over the networks
    "ram": 4, "text": 4, "imaging": 4,  # component folders over loading / sampling
    "stages": 5,  # the shared stages, the conditioning bundle, the options base: no family
    "addsr": 6, "seesr": 6, "stablesr": 6,  # family folders: never each other
    "pipeline": 7,  # the orchestrator: the family from the options type
    "selfcheck": 8, "cli": 8, "cli_jobs": 8, "cli_upscale": 8, "cli_tag": 8, "__main__": 8, "training": 8,  # entry points
}
PACKAGE_ROOT_LAYER = 0  # addsr_core/__init__.py: importing the package must stay free of heavy imports
ENTRY_POINT_LAYER = 8

COMFY_MODULES = frozenset({
    "comfy", "comfy_extras", "comfy_api", "comfy_api_nodes", "comfy_execution", "comfy_config", "folder_paths",
    "latent_preview", "node_helpers", "execution", "server", "comfyui_version",
})
COMFY_BRIDGE = "nodes.comfy_bridge"
DYNAMIC_IMPORTERS = frozenset({"import_module", "comfy_module", "__import__"})

# Each entry: (rule, importer, imported). Do not add to this list: fix the import.
KNOWN_VIOLATIONS = frozenset()

@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    imported: str  # dotted module name (ours resolved to a module where one exists)
    in_function: bool


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def find_modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    return {module_name(p, root): p for package in packages for p in sorted((root / package).rglob("*.py"))}


def names_of_test_modules(root: Path) -> frozenset[str]:
    """Top-level names the tests can be imported as (``tests``, ``conftest``, ``comfy_host``, ``test_x``...)."""
    tests = root / "tests"
    names = {p.stem for p in tests.glob("*.py")} | {p.name for p in tests.iterdir() if (p / "__init__.py").is_file()}
    return frozenset(names | {"tests"})


class _ImportVisitor(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, modules: dict[str, Path]):
        self.module, self.modules, self.depth, self.found = module, modules, 0, []
        self.package = module if is_package else module.rpartition(".")[0]

    def _add(self, name: str) -> None:
        if name and name != self.module:
            self.found.append(Import(self.module, self._sibling(name), self.depth > 0))

    def _sibling(self, name: str) -> str:
        """A bare name that is a module beside the importer (a script's ``sys.path`` import) is that module."""
        if name.split(".")[0] in {m.split(".")[0] for m in self.modules}:
            return name
        sibling = f"{self.package}.{name}" if self.package else name
        return sibling if sibling in self.modules else name

    def _function(self, node) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            parts = self.package.split(".")
            base = ".".join(parts[: len(parts) - (node.level - 1)])
            source = f"{base}.{node.module}" if node.module else base
        else:
            source = node.module
        for alias in node.names:  # ``from package import submodule`` imports the submodule
            self._add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in self.modules else source)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in DYNAMIC_IMPORTERS and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            self._add(node.args[0].value)
        self.generic_visit(node)


def read_imports(root: Path, packages=PACKAGES) -> tuple[dict[str, Path], list[Import]]:
    modules = find_modules(root, packages)
    imports = []
    for module, path in modules.items():
        visitor = _ImportVisitor(module, path.name == "__init__.py", modules)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        imports += visitor.found
    return modules, imports


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components."""
    index, low, stack, on_stack, components, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def cycle_violations(modules, imports) -> set[tuple]:
    """Every import edge that lies on a cycle among one package's modules."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.imported in modules and imp.importer.split(".")[0] == imp.imported.split(".")[0]:
            graph.setdefault(imp.importer, set()).add(imp.imported)
    found = set()
    for component in _strongly_connected(graph):
        if len(component) > 1:
            found |= {("cycle", a, b) for a in component for b in graph.get(a, ()) if b in component}
    return found


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "addsr_core":
        return None
    return PACKAGE_ROOT_LAYER if len(parts) == 1 else LAYERS.get(parts[1])


def layer_violations(imports) -> set[tuple]:
    found = set()
    for imp in imports:
        a, b = layer_of(imp.importer), layer_of(imp.imported)
        if a is None or b is None or imp.importer.split(".")[:2] == imp.imported.split(".")[:2]:
            continue
        if b > a or (b == a and a != ENTRY_POINT_LAYER):
            found.add(("layer", imp.importer, imp.imported))
    return found


def host_violations(imports, test_modules: frozenset[str]) -> set[tuple]:
    found = set()
    for imp in imports:
        package, top = imp.importer.split(".")[0], imp.imported.split(".")[0]
        comfy = top in COMFY_MODULES
        if package == "addsr_core" and (comfy or top in ("nodes", "tools") or top in test_modules):
            found.add(("host", imp.importer, imp.imported))
        elif package == "nodes" and (top in ("tools",) or top in test_modules
                                     or comfy and not (imp.importer == COMFY_BRIDGE and imp.in_function)):
            found.add(("host", imp.importer, imp.imported))
        elif package == "tools" and top in test_modules:
            found.add(("host", imp.importer, imp.imported))
    return found


def structure_violations(root: Path = REPO) -> set[tuple]:
    modules, imports = read_imports(root)
    return cycle_violations(modules, imports) | layer_violations(imports) | host_violations(imports, names_of_test_modules(root))


# ---------------------------------------------------------------------------------------------


def compare_with_known(found: set, known: frozenset = KNOWN_VIOLATIONS) -> list[str]:
    """Why ``found`` is not acceptable: a violation that is not listed, or a listed one that is gone."""
    problems = [f"new {rule}: {a} -> {b} (fix the import; see docs/architecture.md)" for rule, a, b in sorted(found - known)]
    problems += [f"fixed, remove it from KNOWN_VIOLATIONS: {entry}" for entry in sorted(known - found)]
    return problems


def test_the_repository_has_no_new_structure_violations():
    problems = compare_with_known(structure_violations())
    assert not problems, "\n".join(problems)


def test_the_known_list_can_only_shrink():
    listed = ("cycle", "addsr_core.cli", "addsr_core.cli_tag")
    assert compare_with_known({listed}, frozenset({listed})) == []
    assert compare_with_known(set(), frozenset({listed})) == [f"fixed, remove it from KNOWN_VIOLATIONS: {listed}"]
    assert compare_with_known({listed, ("host", "nodes.vae", "comfy.utils")}, frozenset({listed})) == [
        "new host: nodes.vae -> comfy.utils (fix the import; see docs/architecture.md)"]


def test_every_part_of_addsr_core_has_a_layer():
    tops = {p.stem if p.suffix == ".py" else p.name for p in (REPO / "addsr_core").iterdir()
            if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert tops == set(LAYERS), f"give these a layer in LAYERS: {sorted(tops - set(LAYERS))}; stale: {sorted(set(LAYERS) - tops)}"


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_the_checker_finds_each_kind_of_violation(tmp_path):
    """A tiny synthetic repository with one violation of each kind, each hidden a different way."""
    _write(tmp_path, {
        "addsr_core/__init__.py": "",
        "addsr_core/errors.py": "",
        "addsr_core/pipeline.py": "from .addsr import stage\n",
        "addsr_core/models/__init__.py": "from .unet import Net\n",
        "addsr_core/models/unet.py": """\
            import torch

            def build():
                from ..addsr.stage import sample  # a lazy import is still an import
            """,
        "addsr_core/sampling/__init__.py": "",
        "addsr_core/sampling/denoisers.py": "from ..imaging import prepare\nfrom ..models import Net\nfrom .. import errors\n",
        "addsr_core/imaging/__init__.py": "",
        "addsr_core/imaging/prepare.py": "from ..sampling.denoisers import x\n",
        "addsr_core/addsr/__init__.py": "",
        "addsr_core/addsr/stage.py": """\
            class Stage:
                from .. import pipeline  # class bodies run at import

            def run():
                import folder_paths
            """,
        "addsr_core/seesr/__init__.py": "",
        "addsr_core/seesr/stage.py": "from ..addsr.stage import Stage\n",
        "nodes/__init__.py": "from . import comfy_bridge, sampler\n",
        "nodes/comfy_bridge.py": """\
            import importlib
            import comfy.utils

            def comfy_module(name):
                return importlib.import_module(name)

            def model_management():
                import comfy.model_management
                return comfy_module("comfy.model_patcher")
            """,
        "nodes/sampler.py": "from . import comfy_bridge\nfrom addsr_core.addsr import stage\n\n"
                            "def run():\n    return comfy_bridge.comfy_module('comfy.samplers')\n",
        "tools/workflow.py": "import helper\n",
        "tools/helper.py": "import workflow\nfrom comfy_host.workflow_graph import UIWorkflowBuilder\n",
        "tests/conftest.py": "",
        "tests/comfy_host/__init__.py": "",
    })
    assert structure_violations(tmp_path) == {
        ("cycle", "addsr_core.pipeline", "addsr_core.addsr.stage"),
        ("cycle", "addsr_core.addsr.stage", "addsr_core.pipeline"),
        ("layer", "addsr_core.addsr.stage", "addsr_core.pipeline"),
        ("layer", "addsr_core.models.unet", "addsr_core.addsr.stage"),
        ("cycle", "addsr_core.sampling.denoisers", "addsr_core.imaging.prepare"),
        ("cycle", "addsr_core.imaging.prepare", "addsr_core.sampling.denoisers"),
        ("layer", "addsr_core.sampling.denoisers", "addsr_core.imaging.prepare"),
        ("layer", "addsr_core.seesr.stage", "addsr_core.addsr.stage"),  # families never import each other
        ("host", "addsr_core.addsr.stage", "folder_paths"),
        ("host", "nodes.comfy_bridge", "comfy.utils"),  # the bridge, but at module level
        ("host", "nodes.sampler", "comfy.samplers"),  # ComfyUI by name, outside the bridge
        ("cycle", "tools.workflow", "tools.helper"),
        ("cycle", "tools.helper", "tools.workflow"),
        ("host", "tools.helper", "comfy_host.workflow_graph"),
    }
