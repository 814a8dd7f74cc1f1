"""Record the /object_info of the core ComfyUI nodes our workflows use, for offline workflow checks.

    python tools/snapshot_object_info.py /path/to/ComfyUI [--out tests/comfy_host/core_object_info.json]

Starts the checkout on a free loopback port with an empty temp base folder (so file lists such as
checkpoint names are empty), without our pack, and writes the selected node definitions.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from comfy_host.server import ComfyServer  # noqa: E402

CORE_NODES = (
    "LoadImage", "SaveImage", "PreviewImage", "EmptyImage", "ImageScale", "ImageScaleBy",
    "CheckpointLoaderSimple", "CLIPLoader", "VAELoader", "CLIPTextEncode", "ConditioningZeroOut",
    "VAEDecode", "VAEEncode", "VAEDecodeTiled", "VAEEncodeTiled", "StringConcatenate",
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("comfyui_path", type=Path)
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "comfy_host" / "core_object_info.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="addsr-snapshot-") as root, \
            ComfyServer(args.comfyui_path, root, link_pack=False) as server:
        info = server.client.object_info()
        version = server.client.get_json("/system_stats")["system"]["comfyui_version"]
        frontend = next((line.split(":", 1)[1].strip() for line in server.log_text().splitlines()
                         if line.startswith("ComfyUI frontend version:")), "unknown")
    missing = [name for name in CORE_NODES if name not in info]
    if missing:
        print(f"this ComfyUI lacks {missing}", file=sys.stderr)
        return 1
    snapshot = {
        "_source": {"comfyui_version": version, "frontend_version": frontend,
                    "note": "written by tools/snapshot_object_info.py; file lists are from an empty base folder"},
        "nodes": {name: info[name] for name in CORE_NODES},
    }
    args.out.write_text(json.dumps(snapshot, indent=1) + "\n")
    print(f"wrote {len(CORE_NODES)} node definitions to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
