"""The bridge's view of ComfyUI: absent (plain torch fallbacks) or present; never present but
silently broken (a failed import used to leave our networks without a patcher, found only when a
later memory call failed)."""
import sys

import pytest
import torch

from nodes import comfy_bridge


@pytest.fixture
def fake_comfy(tmp_path, monkeypatch):
    """A ``comfy`` package on sys.path whose model_management fails to import as 0.33's would without
    torchaudio, and whose utils fails while it imports."""
    package = tmp_path / "comfy"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "model_management.py").write_text("import torchaudio_not_installed_here\n")
    (package / "utils.py").write_text("raise RuntimeError('half-installed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "comfy" or m.startswith("comfy.")]:
        monkeypatch.delitem(sys.modules, name)
    yield
    for name in [m for m in sys.modules if m == "comfy" or m.startswith("comfy.")]:
        del sys.modules[name]


def test_without_comfyui_every_call_falls_back_to_plain_torch():
    assert comfy_bridge.comfy_module("comfy.model_patcher") is None
    managed = comfy_bridge.ManagedModule(torch.nn.Linear(2, 2))
    assert managed.patcher is None
    assert comfy_bridge.load_to_device([managed]) == comfy_bridge.torch_device()
    comfy_bridge.check_interrupt()
    assert comfy_bridge.Progress(3).bar is None


def test_a_comfyui_module_that_fails_to_import_is_a_clear_error(fake_comfy):
    with pytest.raises(comfy_bridge.ComfyUIImportError) as err:
        comfy_bridge.ManagedModule(torch.nn.Linear(2, 2))
    message = str(err.value)
    assert "comfy.model_management failed to import" in message and "torchaudio_not_installed_here" in message
    assert "restart ComfyUI" in message
    with pytest.raises(comfy_bridge.ComfyUIImportError, match="comfy.utils failed to import.*half-installed"):
        comfy_bridge.Progress(3)


def test_the_import_error_is_an_addsr_error_so_the_node_shows_it():
    from addsr_core.errors import AddSRError

    assert issubclass(comfy_bridge.ComfyUIImportError, AddSRError)
