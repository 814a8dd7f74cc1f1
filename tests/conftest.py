import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("ADDSR_REFERENCE", REPO.parent / "shared" / "reference"))
PARITY = REFERENCE / "parity"
MANIFESTS = REFERENCE / "manifests"
TOL = 1e-4  # README §0: max|ours - expected| <= 1e-4 * max(1, max|expected|)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_configure(config):
    config.addinivalue_line("markers", "comfyui: needs a real ComfyUI checkout in COMFYUI_PATH")
    config.addinivalue_line("markers", "slow: builds full-size networks or runs long loops")
    config.addinivalue_line("markers", "dynamic_vram: needs a ComfyUI with DynamicVRAM (0.16 or later, e.g. 0.33.0)")


def assert_matches(ours: torch.Tensor, expected: torch.Tensor, tol: float = TOL, name: str = "tensor"):
    """The reference tolerance rule, with a message that says how far off we are."""
    assert tuple(ours.shape) == tuple(expected.shape), f"{name}: shape {tuple(ours.shape)} != {tuple(expected.shape)}"
    ours = ours.detach().double().cpu()
    expected = expected.detach().double().cpu()
    bound = tol * max(1.0, expected.abs().max().item())
    diff = (ours - expected).abs().max().item()
    assert diff <= bound, f"{name}: max|diff| {diff:.3e} > {bound:.3e}"


@pytest.fixture(scope="session")
def reference():
    if not REFERENCE.is_dir():
        pytest.fail(f"reference fixtures not found at {REFERENCE}; set ADDSR_REFERENCE")
    return REFERENCE


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module of tiny-tensor tests: a second thread only adds contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
