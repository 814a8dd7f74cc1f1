"""Import-only stub of torchvision.models; see torchvision/__init__.py."""


def __getattr__(name):
    raise AttributeError(
        f"torchvision.models.{name}: this is the import-only torchvision stub from tools/comfy_stubs. "
        "Install a torchvision that matches your torch to use it."
    )
