"""Import-only stub of torchvision.transforms; see torchvision/__init__.py."""


def __getattr__(name):
    raise AttributeError(
        f"torchvision.transforms.{name}: this is the import-only torchvision stub from tools/comfy_stubs. "
        "Install a torchvision that matches your torch to use it."
    )
