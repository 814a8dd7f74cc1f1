"""addsr_core: a standalone PyTorch implementation of AddSR and StableSR diffusion super-resolution.

No ComfyUI imports live here; ``nodes/`` adapts this library to ComfyUI.
"""
__version__ = "0.1.0"
