"""Import-only stand-ins for packages that ComfyUI imports at start-up but our tests never use.

PyPI has no CPU build of torchvision or torchaudio: their Linux wheels link libtorch_cuda, so beside
the CPU torch wheel even ``import torchvision`` fails ("operator torchvision::nms does not exist").
ComfyUI 0.33 imports ``torchvision.ops`` (comfy/ldm/sam3) and ``torchaudio`` (comfy/ldm/lightricks)
at module level, 0.3.64 only ``torchvision``; they are used inside model classes and nodes that our
tests never run.

``make_stub(globals())`` turns a package's ``__init__`` into such a stand-in: every submodule imports
(``import torchvision.ops``, ``import torchaudio.functional``), every attribute is a placeholder that
raises only when called, so ``from torchvision.ops import roi_align`` works and a real use fails
loudly, naming the stub.

Only the test host (tests/comfy_host) puts a stub's folder on the ComfyUI server's PYTHONPATH, and
only when the real package does not import in that Python. Never install these into site-packages.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types


def _unavailable(qualname: str):
    def unavailable(*args, **kwargs):
        raise RuntimeError(f"{qualname}: this is the import-only stub from tools/comfy_stubs; install a build of "
                           f"{qualname.split('.')[0]} that matches your torch to use it.")

    unavailable.__name__ = unavailable.__qualname__ = qualname.rsplit(".", 1)[-1]
    return unavailable


def _module_getattr(module_name: str):
    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _unavailable(f"{module_name}.{name}")

    return __getattr__


class _SubmoduleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``<package>.<anything>`` as a stub module."""

    def __init__(self, package: str):
        self.prefix = package + "."

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(self.prefix):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name, f"Import-only stub of {spec.name} (tools/comfy_stubs).")
        module.__path__ = []
        module.__getattr__ = _module_getattr(spec.name)
        return module

    def exec_module(self, module):
        pass


def make_stub(namespace: dict) -> None:
    """Make the package whose ``__init__`` globals are ``namespace`` an import-only stub."""
    name = namespace["__name__"]
    namespace.update(__version__="0.0.0+stub", IS_STUB=True, __getattr__=_module_getattr(name))
    if not any(isinstance(f, _SubmoduleFinder) and f.prefix == name + "." for f in sys.meta_path):
        sys.meta_path.insert(0, _SubmoduleFinder(name))
