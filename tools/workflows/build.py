"""Every shipped workflow by name, and the command that writes them (``python -m tools.workflows``)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

from . import addsr, seesr, stablesr
from .definitions import REPO
from .thumbnails import make_thumbnail

WORKFLOW_DIR = REPO / "workflows"

# name -> function returning the UI workflow dict; another family adds its module here.
WORKFLOWS: dict[str, Callable[[], dict]] = {**addsr.WORKFLOWS, **seesr.WORKFLOWS, **stablesr.WORKFLOWS}
# name -> thumbnail description (skimage.data photo, title, product named in the stand-in label).
THUMBNAILS: dict[str, dict] = {**addsr.THUMBNAILS, **seesr.THUMBNAILS, **stablesr.THUMBNAILS}


def write_workflow(name: str, out_dir: Path = WORKFLOW_DIR) -> Path:
    workflow = WORKFLOWS[name]()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(workflow, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_thumbnail(name: str, out_dir: Path = WORKFLOW_DIR) -> Path:
    return make_thumbnail(THUMBNAILS[name], out_dir / f"{name}.png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.workflows",
                                     description="Write the shipped ComfyUI workflows (workflows/*.json) and their thumbnails.")
    parser.add_argument("names", nargs="*", help=f"workflows to write (default: all of {sorted(WORKFLOWS)})")
    parser.add_argument("--out", type=Path, default=WORKFLOW_DIR)
    parser.add_argument("--no-thumbnails", action="store_true")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in WORKFLOWS]
    if unknown:
        parser.error(f"unknown workflow(s) {unknown}; known: {sorted(WORKFLOWS)}")
    for name in args.names or list(WORKFLOWS):
        path = write_workflow(name, args.out)
        print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
        if not args.no_thumbnails and name in THUMBNAILS:
            thumb = write_thumbnail(name, args.out)
            print(f"wrote {thumb.name} ({thumb.stat().st_size // 1024} KB)")
    return 0
