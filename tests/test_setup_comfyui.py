"""tools/setup_comfyui.sh: it must fail, not print "Done", when the server it set up cannot start."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CRASHING_MAIN = "import sys\nprint('ModuleNotFoundError: No module named requests', flush=True)\nsys.exit(1)\n"


def _fake_checkout(root: Path, main: str) -> Path:
    checkout = root / "ComfyUI"
    (checkout / "comfy").mkdir(parents=True)
    (checkout / "comfy" / "cli_args.py").write_text("")
    (checkout / "requirements.txt").write_text("torch\n")  # torch is kept as installed, never reinstalled
    (checkout / "main.py").write_text(main)
    return checkout


def _setup(checkout: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COMFYUI_PYTHON": sys.executable, "ADDSR_CHROMIUM": "/bin/true"}
    return subprocess.run(["bash", str(REPO / "tools" / "setup_comfyui.sh"), str(checkout), *args],
                          env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)


def test_setup_fails_when_the_server_cannot_start(tmp_path):
    result = _setup(_fake_checkout(tmp_path, CRASHING_MAIN))
    assert result.returncode != 0
    assert "Done" not in result.stdout
    assert "No module named requests" in result.stderr + result.stdout  # the server's own words reach the user


def test_setup_without_the_smoke_start_says_done(tmp_path):
    result = _setup(_fake_checkout(tmp_path, CRASHING_MAIN), "--no-smoke")
    assert result.returncode == 0, result.stderr
    assert "Done" in result.stdout
