"""A test-only custom-node folder: DynamicVRAM on a CPU ComfyUI server, as main.py turns it on for NVIDIA GPUs.

main.py (0.16 and later) sets ``comfy.memory_management.aimdo_enabled = True`` and makes
``comfy.model_patcher.CoreModelPatcher`` the ``ModelPatcherDynamic`` once comfy-aimdo initialises
its CUDA devices; on a CPU it never does (``--enable-dynamic-vram`` fails in comfy-aimdo's device
init). Custom nodes are imported before any prompt runs, so setting the same two switches here gives
every network built afterwards what an NVIDIA GPU gives it: ``comfy.ops`` Linear/Embedding layers
built without weights until ``load_state_dict``, and read-only memory-mapped safetensors from
``comfy.utils.load_torch_file``. What needs CUDA (comfy-aimdo's VRAM paging) cannot run here:
``ModelPatcherDynamic`` itself hands a CPU load device to the plain ModelPatcher.
"""
import logging

import comfy.memory_management
import comfy.model_patcher

comfy.memory_management.aimdo_enabled = True
comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
MARKER = "addsr test host: DynamicVRAM simulated (aimdo_enabled on the CPU)"
logging.info(MARKER)

NODE_CLASS_MAPPINGS = {}
