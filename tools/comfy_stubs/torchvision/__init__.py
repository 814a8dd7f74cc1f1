"""Import-only stand-in for torchvision, for starting ComfyUI on a CPU-only torch in tests.

PyPI has no CPU build of torchvision: its Linux wheel links libtorch_cuda, so with torch+cpu even
`import torchvision` fails ("operator torchvision::nms does not exist"). ComfyUI imports torchvision at
module level (comfy/sd.py -> comfy/ldm/cascade/stage_c_coder.py) but only *uses* it inside a few
model classes (Stable Cascade, Cosmos, ACE audio) that our tests never build. This stub lets those
imports succeed; any real use raises AttributeError naming the stub. It has no dist-info, so
libraries that look torchvision up by package metadata (transformers) still see it as absent.

Only tests/comfy_host puts this folder on the ComfyUI server's PYTHONPATH, and only when
`import torchvision` fails in that Python. Never install it into site-packages.
"""
__version__ = "0.0.0+stub"
IS_STUB = True


def __getattr__(name):
    raise AttributeError(
        f"torchvision.{name}: this is the import-only torchvision stub from tools/comfy_stubs "
        "(no CPU torchvision build exists). Install a torchvision that matches your torch to use it."
    )
