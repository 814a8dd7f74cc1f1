"""The library's one error base class.

An :class:`AddSRError` is a problem the user can fix: a file that cannot be used, an option out of
range, an input that does not fit. Its message says what is wrong and what to do about it, so a
host shows the message as it is instead of a traceback (the CLI prints it and exits 2; the ComfyUI
nodes show it in the UI, see ``nodes/comfy_bridge.py``). Anything else that leaves the library
(an interrupt, out of memory, a bug) is deliberately not one.

Every user-facing error class of the library derives from it. It derives from ValueError, so code
written before it existed (``except ValueError``) keeps working.
"""
from __future__ import annotations


class AddSRError(ValueError):
    """A problem the user can fix; the message says what and how."""


class OptionsError(AddSRError):
    """An option (steps, a tile size, a weight, a choice among names) outside what is accepted."""


class InputError(AddSRError):
    """An input that cannot be used: an image that is empty, unreadable, not finite, or of a shape,
    channel count or value range the library does not take."""
