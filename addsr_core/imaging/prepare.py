"""Input normalisation and the official image preparation of ``test_addsr.py``.

Library convention: RGB float32 [B,3,H,W] in [0,1], with alpha split off as [B,1,H,W].

``to_rgb_float`` accepts what artists have: PIL images in any common mode, numpy arrays
(HW / HWC / BHWC, channels last as PIL gives them) and torch tensors (HW / CHW / BCHW, channels
first; pass ``channels_last=True`` for ComfyUI's BHWC). Grayscale becomes RGB, an alpha channel
is split off (AddSR only sees RGB; the alpha is upscaled separately with plain bicubic and
reattached at the end), 8-bit, 16-bit and float inputs all become float [0,1].

Two resize paths:

- **PIL** (``method="pil"``): the official one, bit-exact. It works on 8-bit images, as the
  official script does, so non-8-bit inputs are rounded to 8 bits first.
- **torch** (``method="torch"``, and ``resize_to``): ``F.interpolate`` bicubic with antialias,
  which uses PIL's kernel (a=-0.5) and support. In float it matches PIL's float resize to ~1e-7,
  but PIL's 8-bit resize rounds and clips to 8 bits between its horizontal and vertical passes,
  so against 8-bit PIL results it differs by a few levels near strong edges. It keeps full
  precision, runs on any device and resizes once where the official chain resizes up to three
  times.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InputError, OptionsError
from ..precision import unit_float

# --- Normalisation ----------------------------------------------------------------------------------

_PIL_TO_RGB_MODES = {"CMYK", "YCbCr", "LAB", "HSV", "RGBX", "P"}


@dataclass
class LoadedImage:
    """An image split into RGB [B,3,H,W] and optional alpha [B,1,H,W], both float32 in [0,1]."""

    rgb: torch.Tensor
    alpha: Optional[torch.Tensor] = None
    source_bits: int = 8  # 8, 16 or 32 (float): what the input carried

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return tuple(self.rgb.shape[-2:])

    def upscaled_alpha(self, size_hw: Sequence[int]) -> Optional[torch.Tensor]:
        """The alpha resized to ``size_hw`` with plain bicubic, clamped to [0,1]; None without alpha."""
        return None if self.alpha is None else upscale_alpha(self.alpha, size_hw)

    def reattach_alpha(self, rgb_out: torch.Tensor) -> torch.Tensor:
        """[B,3,H',W'] -> [B,4,H',W'] with this image's alpha resized to match (unchanged without alpha)."""
        alpha = self.upscaled_alpha(rgb_out.shape[-2:])
        if alpha is None:
            return rgb_out
        return torch.cat([rgb_out, alpha.to(rgb_out.device, rgb_out.dtype)], dim=1)


def _pil_to_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    elif mode in _PIL_TO_RGB_MODES:
        image = image.convert("RGB")
    elif mode == "1":
        image = image.convert("L")
    elif mode == "RGBa":
        image = image.convert("RGBA")
    elif mode == "La":
        image = image.convert("LA")
    return np.asarray(image)


def _integer_scale(arr: np.ndarray) -> tuple[float, int]:
    if arr.dtype == np.uint8:
        return 255.0, 8
    if arr.dtype == np.uint16:
        return 65535.0, 16
    # PIL's "I" mode (32-bit ints) is how 16-bit PNGs often arrive.
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > 65535:
        raise InputError(f"integer image values span [{lo}, {hi}]; expected 8-bit (0..255) or 16-bit (0..65535) data")
    return 65535.0, 16


def _array_to_float(arr: np.ndarray) -> tuple[torch.Tensor, int]:
    if arr.dtype == np.bool_:
        return torch.from_numpy(arr.astype(np.float32)), 8
    if np.issubdtype(arr.dtype, np.integer):
        scale, bits = _integer_scale(arr)
        return torch.from_numpy(arr.astype(np.float32) / np.float32(scale)), bits
    if np.issubdtype(arr.dtype, np.floating):
        return torch.from_numpy(np.array(arr, dtype=np.float32)), 32  # a copy: PIL arrays are read-only
    raise InputError(f"unsupported image dtype {arr.dtype}; use uint8, uint16 or float data")


def _tensor_to_float(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    if t.dtype == torch.bool:
        return t.float(), 8
    if t.dtype == torch.uint8:
        return t.float() / 255.0, 8
    if t.is_floating_point():
        return t.float(), 32
    if t.dtype in (torch.int16, torch.int32, torch.int64) or t.dtype == getattr(torch, "uint16", None):
        return _array_to_float(t.detach().cpu().numpy())
    raise InputError(f"unsupported image dtype {t.dtype}; use uint8, uint16 or float data")


def to_rgb_float(image, *, channels_last: Optional[bool] = None) -> LoadedImage:
    """Normalise a PIL image, numpy array or tensor to float32 RGB [B,3,H,W] + alpha in [0,1].

    ``channels_last`` defaults to True for numpy arrays (HWC) and False for tensors (CHW).
    Float inputs are clamped to [0,1]; NaN/inf, empty images and channel counts other than
    1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA) are errors.
    """
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise InputError(f"image is empty ({image.width}x{image.height}); use an image with pixels")
        image = _pil_to_array(image)
    if isinstance(image, np.ndarray):
        if image.size == 0:
            raise InputError(f"image is empty (shape {image.shape}); use an image with pixels")
        data, bits = _array_to_float(image)
        channels_last = True if channels_last is None else channels_last
    elif torch.is_tensor(image):
        if image.numel() == 0:
            raise InputError(f"image is empty (shape {tuple(image.shape)}); use an image with pixels")
        data, bits = _tensor_to_float(image)
        channels_last = False if channels_last is None else channels_last
    else:
        raise InputError(f"unsupported image type {type(image).__name__}; pass a PIL image, numpy array or torch tensor")

    if data.ndim == 2:
        data = data[None, None]
    elif data.ndim == 3:
        data = data.permute(2, 0, 1)[None] if channels_last else data[None]
    elif data.ndim == 4:
        data = data.permute(0, 3, 1, 2) if channels_last else data
    else:
        raise InputError(f"image must have 2 to 4 dimensions ([H,W], [H,W,C] or a batch), got shape {tuple(data.shape)}")
    b, c, h, w = data.shape
    if min(b, c, h, w) == 0:
        raise InputError(f"image is empty ({w}x{h}, batch {b}); use an image with pixels")
    if c not in (1, 2, 3, 4):
        layout = "channels last" if channels_last else "channels first"
        raise InputError(
            f"image has {c} channels (read {layout}); expected 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA)"
        )
    if not torch.isfinite(data).all():
        raise InputError("image contains NaN or infinite values; fix the step that produced it")
    data = data.clamp(0.0, 1.0)
    color = data[:, : 1 if c <= 2 else 3]
    rgb = color.expand(-1, 3, -1, -1) if color.shape[1] == 1 else color
    alpha = data[:, c - 1 : c] if c in (2, 4) else None
    return LoadedImage(rgb.contiguous(), None if alpha is None else alpha.contiguous(), bits)


def load_image(path: Union[str, Path]) -> LoadedImage:
    """Read an image file (EXIF orientation applied) into ``LoadedImage``."""
    from PIL import ImageOps

    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
    except FileNotFoundError:
        raise InputError(f"cannot read image {path}: no such file; check the path") from None
    except OSError as err:
        raise InputError(f"cannot read image {path}: {err}; use a PNG, JPEG, WebP or TIFF file") from None
    try:
        return to_rgb_float(im)
    except InputError as err:
        raise InputError(f"{path}: {err}") from None


def save_image(image: torch.Tensor, path: Union[str, Path], alpha: Optional[torch.Tensor] = None) -> None:
    """Write one [1,3,H,W] / [3,H,W] image in [0,1] (rounded to 8 bits), with optional alpha, as PIL infers from the suffix."""
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise ValueError(f"save_image writes one image; got a batch of {image.shape[0]}")
        image = image[0]
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"save_image expects [3,H,W] RGB, got {tuple(image.shape)}")
    planes = [to_uint8_round(image).numpy()]
    if alpha is not None:
        alpha = alpha.reshape(1, *alpha.shape[-2:])
        if alpha.shape[-2:] != image.shape[-2:]:
            raise ValueError(f"alpha {tuple(alpha.shape[-2:])} and image {tuple(image.shape[-2:])} differ in size")
        planes.append(to_uint8_round(alpha).numpy())
    arr = np.concatenate(planes, axis=-1) if len(planes) > 1 else planes[0]
    Image.fromarray(arr, "RGBA" if alpha is not None else "RGB").save(path)


UINT8_STRIP_PIXELS = 1 << 22  # the float temporaries of to_uint8_round cover at most ~4 MP at a time


def row_strips(hw: Sequence[int], pixels: int) -> list[slice]:
    """Row slices that cover an image of ``hw`` = (H, W) in strips of at most ``pixels`` (at least
    one row each): elementwise work strip by strip keeps its temporaries bounded, with the same bits."""
    rows = max(1, pixels // max(1, int(hw[1])))
    return [slice(r, r + rows) for r in range(0, int(hw[0]), rows)]


def to_uint8_round(x: torch.Tensor) -> torch.Tensor:
    """[C,H,W] or [B,C,H,W] float in [0,1] -> HWC / BHWC uint8, rounded (the pipeline's own PIL output).

    Converted in strips of rows: its float temporaries are bounded (an 8K image is not copied
    four times over), the same bits as converting it whole."""
    x = x.detach()
    out = torch.empty(x.shape, dtype=torch.uint8, device="cpu")  # on the host whatever the default device
    for rows in row_strips(x.shape[-2:], UINT8_STRIP_PIXELS):
        out[..., rows, :] = x[..., rows, :].float().clamp(0.0, 1.0).mul(255).round().to(torch.uint8).cpu()
    return out.permute(0, 2, 3, 1) if out.ndim == 4 else out.permute(1, 2, 0)


# --- Resizing ---------------------------------------------------------------------------------------


def _check_size(size_hw: Sequence[int]) -> tuple[int, int]:
    h, w = (int(v) for v in size_hw)
    if h < 1 or w < 1:
        raise ValueError(f"target size must be positive, got {h}x{w}")
    return h, w


def resize_to(images: torch.Tensor, size_hw: Sequence[int]) -> torch.Tensor:
    """Torch-only PIL-like bicubic (a=-0.5, antialiased) resize of [B,C,H,W] to (h, w); not clamped."""
    h, w = _check_size(size_hw)
    if tuple(images.shape[-2:]) == (h, w):
        return images
    x = images.float()
    try:
        out = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
    except (RuntimeError, NotImplementedError):  # backends without antialiased bicubic (e.g. some MPS builds)
        out = F.interpolate(x.cpu(), size=(h, w), mode="bicubic", align_corners=False, antialias=True).to(x.device)
    return out.to(images.dtype)


def upscale_alpha(alpha: torch.Tensor, size_hw: Sequence[int]) -> torch.Tensor:
    """An alpha [B,1,h,w] resized to ``size_hw`` with plain bicubic, clamped to [0,1] (AddSR only
    restores the RGB; the CLI and the nodes treat the alpha alike)."""
    return resize_to(alpha, size_hw).clamp(0.0, 1.0)


def resize_pil(images: torch.Tensor, size_hw: Sequence[int], rounding: str = "round") -> torch.Tensor:
    """PIL bicubic on 8-bit images, as the official script resizes: [B,3,H,W] in [0,1] -> float [0,1].

    The input is made 8-bit first: ``rounding="round"`` (exact for images from 8-bit files) or
    ``"truncate"`` (what the official colour fix hands to its final resize).
    """
    h, w = _check_size(size_hw)
    if rounding == "truncate":
        arrays = images.detach().float().clamp(0, 1).mul(255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    elif rounding == "round":
        arrays = to_uint8_round(images).numpy()
    else:
        raise OptionsError(f"rounding must be 'round' or 'truncate', got {rounding!r}")
    out = [np.asarray(Image.fromarray(a, "RGB").resize((w, h), Image.BICUBIC)) for a in arrays]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div(255).to(images.device)


# --- The official preparation (test_addsr.py) -----------------------------------------------------


# The official enlargement brings the SHORT side up to the minimum, so a thin image gets pixels in
# proportion to its aspect ratio: 8x1000 at 4x becomes 512x64000, 256x its 32x4000 output and 125x
# what a square image with as many pixels gets. Capped (our extension) at this many times a square
# image's pixels; an image up to 4:1 is never capped, so its size stays the official one.
MAX_ENLARGED_AREA_VS_SQUARE = 4


def _enlargement(h: int, w: int, scale: int, min_size: int) -> float:
    """The factor that brings the short side to ``min_size // scale``, capped for thin images."""
    short, side = min_size // scale, min(w, h)
    upscaled, square = scale * scale * h * w, max(min_size * min_size, scale * scale * h * w)
    # (short/side)^2 * upscaled > LIMIT * square, in integers so the official case stays exact
    if short * short * upscaled <= MAX_ENLARGED_AREA_VS_SQUARE * square * side * side:
        return short / side  # the official float expression
    return math.sqrt(MAX_ENLARGED_AREA_VS_SQUARE * square / upscaled)


def condition_sizes(lr_hw: Sequence[int], scale: int = 4, min_size: int = 512) -> list[tuple[int, int]]:
    """The (h, w) after each official resize step, ending with the condition image's size.

    1. if a side is below ``min_size // scale``: short side -> that size (``int()`` truncation),
       but at most to ``MAX_ENLARGED_AREA_VS_SQUARE`` times the pixels of a square image with as
       many pixels (only images thinner than 4:1 are affected);
    2. x ``scale``;
    3. each side down to a multiple of 8.
    """
    h, w = (int(v) for v in lr_hw)
    if h < 1 or w < 1:
        raise InputError(f"LR image is empty ({w}x{h}); use an image with pixels")
    if scale < 1:
        raise OptionsError(f"scale must be >= 1, got {scale}")
    sizes = []
    short = min_size // scale
    if w < short or h < short:
        factor = _enlargement(h, w, scale, min_size)
        h, w = int(factor * h), int(factor * w)
        sizes.append((h, w))
    h, w = h * scale, w * scale
    sizes.append((h, w))
    h8, w8 = h // 8 * 8, w // 8 * 8
    if h8 < 8 or w8 < 8:
        raise InputError(f"the upscaled image ({w}x{h}) is smaller than 8 px on a side; use a larger image or scale")
    sizes.append((h8, w8))
    return sizes


def official_condition_pil(image: Image.Image, scale: int = 4, min_size: int = 512) -> Image.Image:
    """The official preparation on a PIL image (bit-exact): see ``condition_sizes``."""
    image = image.convert("RGB")
    for h, w in condition_sizes((image.height, image.width), scale, min_size):
        image = image.resize((w, h), Image.BICUBIC)  # a same-size resize is a copy, as in PIL
    return image


def _check_condition_input(lr: torch.Tensor) -> None:
    if lr.ndim != 4 or lr.shape[1] != 3:
        raise InputError(f"expected an RGB batch [B,3,h,w], got {tuple(lr.shape)}; convert the image to RGB first")
    if not torch.isfinite(lr).all():
        raise InputError("LR image contains NaN or infinite values; fix the step that produced it")


def official_condition_image(
    lr: torch.Tensor, scale: int = 4, min_size: int = 512, method: str = "pil"
) -> torch.Tensor:
    """The ControlNet condition image from the LR: [B,3,h,w] in [0,1] -> [B,3,H,W], H and W multiples of 8.

    ``method="pil"`` reproduces the official uint8 result exactly (after rounding the input to 8
    bits); ``method="torch"`` resizes once, in float, straight to the final size.
    """
    if method == "pil":
        return unit_float(official_condition_uint8(lr, scale, min_size))
    if method != "torch":
        raise OptionsError(f"method must be 'pil' or 'torch', got {method!r}")
    _check_condition_input(lr)
    return resize_to(lr.float(), condition_sizes(lr.shape[-2:], scale, min_size)[-1]).clamp(0.0, 1.0)


def official_condition_uint8(lr: torch.Tensor, scale: int = 4, min_size: int = 512) -> torch.Tensor:
    """The official condition image as the 8-bit image it is: uint8 [B,3,H,W] (0-255) on ``lr``'s
    device, a quarter of the float's memory; :func:`~addsr_core.precision.unit_float` gives the float, the same bits.
    PIL runs on the host: a GPU ``lr`` is copied to it once (8 bits) and the result copied back."""
    _check_condition_input(lr)
    out = []
    for arr in to_uint8_round(lr).numpy():
        prepared = official_condition_pil(Image.fromarray(arr, "RGB"), scale, min_size)
        out.append(np.asarray(prepared))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(lr.device)


def output_size(lr_hw: Sequence[int], scale: int = 4) -> tuple[int, int]:
    """The official final size: (LR_h * scale, LR_w * scale)."""
    return int(lr_hw[0]) * scale, int(lr_hw[1]) * scale


def official_final_resize(
    images: torch.Tensor, lr_hw: Sequence[int], scale: int = 4, method: str = "torch", rounding: str = "round"
) -> torch.Tensor:
    """The official last step: bicubic resize of the (colour-fixed) output to LR size x scale.

    ``method="pil"`` is the official 8-bit resize; pass ``rounding="truncate"`` to feed it the
    truncated 8-bit image the official colour fix produces.
    """
    size = output_size(lr_hw, scale)
    if tuple(images.shape[-2:]) == size:
        return images
    if method == "pil":
        return resize_pil(images, size, rounding)
    if method != "torch":
        raise OptionsError(f"method must be 'pil' or 'torch', got {method!r}")
    return resize_to(images, size).clamp(0.0, 1.0)
