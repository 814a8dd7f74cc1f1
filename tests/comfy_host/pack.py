"""Import this repository the way ComfyUI imports a custom-node folder (a package from __init__.py).

The loader is the workflow builder's (tools/workflows/definitions.py), so the tests and the builder
share one imported pack."""
from tools.workflows.definitions import PACKAGE_NAME, load_pack

__all__ = ["PACKAGE_NAME", "load_pack"]
