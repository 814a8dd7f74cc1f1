"""addsr_core: a standalone PyTorch implementation of AddSR and StableSR diffusion super-resolution.

No ComfyUI imports live here; ``nodes/`` adapts this library to ComfyUI.

Layout: family folders (``addsr/``, ``seesr/``, ``stablesr/``) hold what one model family uses;
component folders (``models/``, ``loading/``, ``ram/``, ``text/``, ``sampling/``, ``imaging/``,
``training/``) hold what families share; top-level modules are entry points (``pipeline``: the
shared stages and ``upscale``; ``precision``; ``errors``; the CLI).
"""
__version__ = "0.1.0"
