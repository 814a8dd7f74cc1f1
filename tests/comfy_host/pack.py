"""Import this repository the way ComfyUI imports a custom-node folder (a package from __init__.py)."""
from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from .server import REPO

PACKAGE_NAME = "addsr_pack_under_test"


def load_pack() -> ModuleType:
    """The pack's top-level package; its NODE_CLASS_MAPPINGS is what ComfyUI registers."""
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
