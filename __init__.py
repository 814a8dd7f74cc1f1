"""ComfyUI entry point of the AddSR pack.

Importing this must never break ComfyUI: if torch or a dependency is missing, we log what to
install and register no nodes.
"""
import logging
import os
import sys

_log = logging.getLogger("addsr")
_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:
    # Appended, not prepended: makes `addsr_core` importable without shadowing ComfyUI's modules.
    sys.path.append(_here)

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

try:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811
except Exception as err:  # a missing dependency must not take the server down
    _log.error(
        "AddSR nodes are disabled: %s: %s. Install the pack's requirements into ComfyUI's Python "
        "(pip install -r custom_nodes/<this folder>/requirements.txt) and restart.",
        type(err).__name__, err,
    )

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
