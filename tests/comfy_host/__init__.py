"""A real ComfyUI server for tests (see server.py), its pytest fixtures (fixtures.py), and the
pack loaded the way ComfyUI loads it (pack.py)."""
from .server import ComfyClient, ComfyServer, ComfyServerError, free_port

__all__ = ["ComfyClient", "ComfyServer", "ComfyServerError", "free_port"]
