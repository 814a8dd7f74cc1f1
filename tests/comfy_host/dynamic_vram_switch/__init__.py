"""A test-only custom-node folder: DynamicVRAM on a CPU ComfyUI server, as main.py turns it on for NVIDIA GPUs.

main.py (0.16 and later) loads comfy-aimdo's library (``comfy_aimdo.control.init``), then sets
``comfy.memory_management.aimdo_enabled = True`` and makes ``comfy.model_patcher.CoreModelPatcher``
the ``ModelPatcherDynamic`` once comfy-aimdo initialises its CUDA devices; on a CPU it never does
(``--enable-dynamic-vram`` fails in comfy-aimdo's device init). Custom nodes are imported before any
prompt runs, so doing the same here, less the device init, gives every network built afterwards what
an NVIDIA GPU gives it: ``comfy.ops`` Linear/Embedding layers built without weights until
``load_state_dict``, and read-only memory-mapped safetensors from ``comfy.utils.load_torch_file``
(comfy-aimdo's file mapping works without a GPU). What needs CUDA (comfy-aimdo's VRAM paging, pinned
host buffers) cannot run here: ``ModelPatcherDynamic`` itself hands a CPU load device to the plain
ModelPatcher.
"""
import importlib
import logging
import sys

import comfy.memory_management
import comfy.model_patcher
import comfy_aimdo.control

if not comfy_aimdo.control.init():
    raise RuntimeError("comfy-aimdo's library did not load: DynamicVRAM cannot be simulated")
if "comfy_aimdo.model_mmap" in sys.modules:  # it binds the library when first imported
    importlib.reload(sys.modules["comfy_aimdo.model_mmap"])
comfy.memory_management.aimdo_enabled = True
comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
logging.info("addsr test host: DynamicVRAM simulated (aimdo_enabled on the CPU)")  # fixtures.py looks for it

NODE_CLASS_MAPPINGS = {}
