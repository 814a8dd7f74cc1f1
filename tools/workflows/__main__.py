"""``python -m tools.workflows [names] [--out DIR] [--no-thumbnails]`` (or ``python tools/workflows ...``)."""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a folder: python tools/workflows
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tools.workflows.build import main
else:
    from .build import main

sys.exit(main())
