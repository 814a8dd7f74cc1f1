"""One error base class (addsr_core.errors.AddSRError), converted once for ComfyUI.

Every user-facing error class of the library is an AddSRError (and still a ValueError); every
node's FUNCTION goes through comfy_bridge.node_errors, which turns an AddSRError into the node
error ComfyUI shows (same message, no library traceback) and lets everything else through.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import traceback

import pytest
import torch

import addsr_core
import nodes
from addsr_core.errors import AddSRError, OptionsError
from nodes import comfy_bridge
from nodes.common import AddSRInputError


def _all_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _all_subclasses(sub)
    return found


def _exception_classes_defined_in(package) -> set[type]:
    classes = set()
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name.endswith("__main__"):  # runs the CLI
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                classes.add(obj)
    return classes


def test_every_library_error_class_is_an_addsr_error():
    defined = _exception_classes_defined_in(addsr_core) | _exception_classes_defined_in(nodes)
    assert defined, "found no error classes at all"
    not_ours = sorted(f"{c.__module__}.{c.__qualname__}" for c in defined if not issubclass(c, AddSRError))
    assert not not_ours, f"user-facing errors must derive from addsr_core.errors.AddSRError: {not_ours}"
    names = {c.__name__ for c in _all_subclasses(AddSRError)}
    assert {"CheckpointError", "TextWidthError", "TokenizerError", "ConfigError", "LoRAShapeError", "TagListError",
            "CLIError", "TrainConfigError", "DataError", "OptionsError", "AddSRInputError",
            "ModelFileNotFoundError"} <= names, names
    # Existing callers keep working: still a ValueError, CheckpointError still a RuntimeError, a
    # missing model file still a FileNotFoundError.
    assert issubclass(AddSRError, ValueError)
    from addsr_core.loading import CheckpointError

    assert issubclass(CheckpointError, RuntimeError)
    assert issubclass(comfy_bridge.ModelFileNotFoundError, FileNotFoundError)


def test_every_node_function_goes_through_node_errors():
    for name, cls in nodes.NODE_CLASS_MAPPINGS.items():
        fn = getattr(cls, cls.FUNCTION)
        assert getattr(fn, "_addsr_node_errors", False), name
        # ComfyUI calls it with keyword arguments; the wrapper keeps the node's signature.
        assert inspect.signature(fn) == inspect.signature(fn.__wrapped__), name
    before = nodes.AddSRSampler.sample
    comfy_bridge.with_node_errors(nodes.AddSRSampler)
    assert nodes.AddSRSampler.sample is before  # applied once, not nested


def test_a_library_error_in_a_real_node_reaches_comfyui_as_the_node_error(tmp_path, monkeypatch):
    folder = tmp_path / "addsr"
    folder.mkdir()
    (folder / "torn.safetensors").write_bytes(b"\x00" * 100)
    monkeypatch.setenv("ADDSR_ADDSR_DIR", str(folder))
    loader = nodes.AddSRModelLoader()

    from addsr_core.loading import CheckpointError
    from addsr_core.loading.pack import load_addsr

    with pytest.raises(CheckpointError) as direct:  # what the library says, called directly
        load_addsr(folder / "torn.safetensors")
    with pytest.raises(AddSRInputError) as err:
        loader.load("torn.safetensors")
    assert type(err.value) is AddSRInputError
    assert str(err.value) == str(direct.value) and "Re-download it" in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__
    frames = "".join(traceback.format_tb(err.value.__traceback__))
    assert "addsr_core" not in frames, frames  # no library traceback under the message

    with pytest.raises(AddSRInputError, match=r"family must be one of \('auto', 'addsr', 'seesr'\), got 'bogus'"):
        loader.load("torn.safetensors", family="bogus")  # an OptionsError from addsr_core.loading.family
    with pytest.raises(comfy_bridge.ModelFileNotFoundError, match="'gone.safetensors' not found in"):
        loader.load("gone.safetensors")


class _Node:
    FUNCTION = "run"

    def __init__(self, error: BaseException | None):
        self.error = error

    def run(self, x, *, y=1):
        if self.error is not None:
            raise self.error
        return (x + y,)


class InterruptProcessingException(Exception):
    """Stands in for comfy.model_management.InterruptProcessingException (a plain Exception)."""


def test_node_errors_converts_addsr_errors_and_lets_everything_else_through():
    comfy_bridge.with_node_errors(_Node)
    assert _Node(None).run(1, y=2) == (3,)

    for library_error in (OptionsError("steps must be 1, 2, 3 or 4, got 5"), AddSRError("plain one")):
        with pytest.raises(AddSRInputError) as err:
            _Node(library_error).run(1)
        assert type(err.value) is AddSRInputError and str(err.value) == str(library_error)
        assert err.value.__cause__ is None and err.value.__suppress_context__

    node_error = AddSRInputError("connect a CLIP Text Encode node")
    with pytest.raises(AddSRInputError) as err:
        _Node(node_error).run(1)
    assert err.value is node_error  # already the node error: as it is

    for other in (InterruptProcessingException(), torch.OutOfMemoryError("CUDA out of memory"), KeyError("bug"),
                  ValueError("a plain ValueError is a bug, not a message for the user"), KeyboardInterrupt()):
        with pytest.raises(type(other)) as err:
            _Node(other).run(1)
        assert err.value is other
