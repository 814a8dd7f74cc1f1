#!/usr/bin/env bash
# Make a ComfyUI checkout runnable for our tests on a CPU machine, without touching the installed torch.
#
#   tools/setup_comfyui.sh /path/to/ComfyUI [--frontend VERSION]... [--no-smoke]
#   COMFYUI_PATH=/path/to/ComfyUI python3 -m pytest -q
#
# Either supported host: 0.33.0 (the primary one) or 0.3.64 (the oldest). Each host pins its own
# frontend and template packages, so give a second host its own Python: a venv made with
# --system-site-packages (it shares the CPU torch), named in COMFYUI_PYTHON here and for the tests.
# Safe to run again: pip and apt skip what is already there. Exits non-zero if the server cannot start.
#  - Installs ComfyUI's requirements.txt except torch, torchvision, torchaudio and spandrel, with the
#    installed torch pinned as a constraint, so pip can never swap it for another build, plus
#    `requests`, which 0.3.64 imports without listing it.
#  - torchvision and torchaudio: PyPI has no CPU builds. Their Linux wheels link libtorch_cuda, so with
#    a CPU torch even `import torchvision` fails ("operator torchvision::nms does not exist"), yet
#    ComfyUI imports torchvision at start-up (0.33.0 also torchvision.ops and torchaudio). For each one
#    that does not import, tests/comfy_host puts an import-only stub from tools/comfy_stubs on the
#    server's PYTHONPATH; nothing is installed. Where the real package imports, it is used.
#  - spandrel is installed without its dependencies (they would pull a CUDA torch and torchvision);
#    with the stub its upscale-model nodes register. They must: frontend 1.27 looks up
#    UpscaleModelLoader while building any ckpt_name/vae_name/lora_name widget and throws when it is
#    missing, which draws Load Checkpoint broken.
#  - --frontend VERSION (repeatable): also install comfyui-frontend-package==VERSION beside the
#    checkout (../frontends/VERSION, or under ADDSR_FRONTENDS_DIR), not into the Python; the tests
#    serve it when COMFYUI_FRONTEND_ROOT names its static folder (printed below), ComfyUI itself
#    with --front-end-root. Without it the server serves the frontend the host pins.
#  - For the frontend tests: Playwright's Python driver (its own browser download is never used) and
#    Debian's chromium (apt-get, when run as root and chromium is missing).
# Then it starts the server on a free 127.0.0.1 port with this pack linked in a temp folder and checks
# that /object_info lists the pack's nodes (--no-smoke skips this).
set -euo pipefail

usage() { echo "usage: $0 /path/to/ComfyUI [--frontend VERSION]... [--no-smoke]" >&2; exit 2; }
[ $# -ge 1 ] || usage
COMFYUI_PATH=$(cd "$1" && pwd) || usage
shift
SMOKE=--smoke
FRONTENDS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --no-smoke|--smoke) SMOKE=$1 ;;
        --frontend) [ $# -ge 2 ] || usage; FRONTENDS+=("$2"); shift ;;
        *) usage ;;
    esac
    shift
done
PY=${COMFYUI_PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")

for f in main.py requirements.txt comfy/cli_args.py; do
    [ -f "$COMFYUI_PATH/$f" ] || { echo "$COMFYUI_PATH is not a ComfyUI checkout (no $f)" >&2; exit 1; }
done

TORCH_VERSION=$("$PY" -c "import torch; print(torch.__version__)" 2>/dev/null) || {
    echo "torch is not installed in $PY; install it first (CPU: pip install torch==2.13.0)" >&2; exit 1; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "torch==${TORCH_VERSION%%+*}" > "$WORK/constraints.txt"   # 2.13.0 also matches the local 2.13.0+cpu
grep -v -i -E '^[[:space:]]*(torch|torchvision|torchaudio|spandrel)[[:space:]]*([<>=!~;].*)?$' \
    "$COMFYUI_PATH/requirements.txt" > "$WORK/requirements.txt" || true   # grep exits 1 when nothing is left

echo "requests" >> "$WORK/requirements.txt"
echo "playwright" >> "$WORK/requirements.txt"

echo "Installing ComfyUI requirements (keeping torch $TORCH_VERSION)..."
"$PY" -m pip install --quiet --disable-pip-version-check -r "$WORK/requirements.txt" -c "$WORK/constraints.txt"
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps spandrel

AFTER=$("$PY" -c "import torch; print(torch.__version__)")
[ "$AFTER" = "$TORCH_VERSION" ] || { echo "torch changed from $TORCH_VERSION to $AFTER" >&2; exit 1; }

STUB_PATH=""
for package in torchvision torchaudio; do
    if "$PY" -c "import $package" >/dev/null 2>&1; then
        echo "$package: importable, used as is"
    else
        echo "$package: not importable; the test harness adds the stub $REPO/tools/comfy_stubs/$package"
        STUB_PATH="$STUB_PATH:$REPO/tools/comfy_stubs/$package"
    fi
done
if [ -n "$STUB_PATH" ]; then
    echo "  to start ComfyUI by hand: PYTHONPATH=$REPO/tools/comfy_stubs/import_only$STUB_PATH $PY main.py --cpu --listen 127.0.0.1 --port 8188 --disable-auto-launch"
fi

FRONTENDS_DIR=${ADDSR_FRONTENDS_DIR:-$(dirname "$COMFYUI_PATH")/frontends}
for version in "${FRONTENDS[@]}"; do
    target="$FRONTENDS_DIR/$version"
    if [ ! -f "$target/comfyui_frontend_package/static/index.html" ]; then
        echo "Installing comfyui-frontend-package==$version into $target..."
        "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --upgrade --target "$target" \
            "comfyui-frontend-package==$version"
    fi
    echo "frontend $version: COMFYUI_FRONTEND_ROOT=$target/comfyui_frontend_package/static"
done

if command -v chromium >/dev/null 2>&1 || [ -n "${ADDSR_CHROMIUM:-}" ]; then
    echo "chromium: $(command -v chromium || echo "$ADDSR_CHROMIUM")"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing Debian's chromium for the frontend tests..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
    echo "chromium: missing; the frontend tests need it (apt-get install chromium, or set ADDSR_CHROMIUM)" >&2
    exit 1
fi

if [ "$SMOKE" = "--smoke" ]; then
    COMFYUI_PYTHON="$PY" "$PY" - "$COMFYUI_PATH" "$REPO" <<'EOF'
import sys, tempfile
comfyui, repo = sys.argv[1], sys.argv[2]
sys.path[:0] = [repo + "/tests"]
from comfy_host.server import ComfyServer
from comfy_host.pack import load_pack

ours = set(load_pack().NODE_CLASS_MAPPINGS)
with tempfile.TemporaryDirectory(prefix="addsr-comfyui-smoke-") as root, ComfyServer(comfyui, root) as server:
    info = server.client.object_info()
    missing = sorted(ours - set(info))
    print(f"ComfyUI answered on 127.0.0.1:{server.port}: {len(info)} node types, "
          f"{len(ours) - len(missing)}/{len(ours)} AddSR nodes")
    if missing or not ours:
        print("missing AddSR nodes:", missing, "\n" + server.log_tail(), file=sys.stderr)
        sys.exit(1)
EOF
fi
echo "Done. Run: COMFYUI_PATH=$COMFYUI_PATH $PY -m pytest -q"
