#!/usr/bin/env bash
# The Comfy Registry's own check of this pack, as `comfy node publish` runs it: clean means no error
# and no warning (the registry turns its warnings, e.g. exec/eval, into errors later).
#
#   tools/validate_registry.sh [path/to/comfy]     # comfy-cli 1.23.0: pip install comfy-cli==1.23.0
set -euo pipefail
COMFY=${1:-comfy}
cd "$(dirname "$0")/.."
output=$(CI=true "$COMFY" --skip-prompt --no-enable-telemetry node validate </dev/null 2>&1) || {
    echo "$output"; echo "comfy node validate failed" >&2; exit 1; }
echo "$output"
if grep -qi "warning" <<<"$output"; then
    echo "comfy node validate reported warnings" >&2
    exit 1
fi
