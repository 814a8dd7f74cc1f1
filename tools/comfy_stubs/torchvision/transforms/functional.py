"""Import-only stub of torchvision.transforms.functional; see torchvision/__init__.py.

spandrel (ComfyUI's upscale-model loader) imports a few names from here at module level; each one is
a placeholder that raises only when called, so the loader's nodes register while a real use fails loudly.
"""


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    def unavailable(*args, **kwargs):
        raise RuntimeError(
            f"torchvision.transforms.functional.{name}: this is the import-only torchvision stub from "
            "tools/comfy_stubs. Install a torchvision that matches your torch to use it.")

    unavailable.__name__ = name
    return unavailable
