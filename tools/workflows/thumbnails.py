"""A workflow's thumbnail: input vs 4x, side by side, labelled honestly."""
from __future__ import annotations

import io
from pathlib import Path


def make_thumbnail(info: dict, out: Path, *, max_bytes: int = 200_000) -> Path:
    """Write the thumbnail ``info`` describes (``photo``: a skimage.data name, ``title``, ``product``) to ``out``.

    The right-hand panel is a bicubic 4x upscale with the workflows' adain colour fix, a stand-in:
    no model weights are available when the thumbnails are built, and tiny random weights only make
    noise. The label says so.
    """
    import numpy as np
    import torch
    from PIL import Image, ImageDraw, ImageFilter, ImageFont
    from skimage import data

    from addsr_core.imaging.colorfix import adain_color_fix

    photo = getattr(data, info["photo"])()
    hr = Image.fromarray(photo).convert("RGB")
    side = min(hr.size)
    hr = hr.crop(((hr.width - side) // 2, 0, (hr.width - side) // 2 + side, side)).resize((256, 256), Image.LANCZOS)
    # Degrade: blur + 4x down + JPEG, the usual blind-SR test recipe.
    lr = hr.filter(ImageFilter.GaussianBlur(1.2)).resize((64, 64), Image.BICUBIC)
    buffer = io.BytesIO()
    lr.save(buffer, "JPEG", quality=35)
    lr = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    nearest = lr.resize((256, 256), Image.NEAREST)
    bicubic = lr.resize((256, 256), Image.BICUBIC)
    to_t = lambda im: torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    fixed = adain_color_fix(to_t(bicubic), to_t(lr)).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    right = Image.fromarray((fixed * 255).round().astype(np.uint8))

    pad, head, foot = 8, 30, 22
    canvas = Image.new("RGB", (256 * 2 + pad * 3, 256 + head + foot + pad), (24, 24, 28))
    canvas.paste(nearest, (pad, head))
    canvas.paste(right, (256 + 2 * pad, head))
    draw = ImageDraw.Draw(canvas)
    try:
        title_font, label_font = ImageFont.load_default(size=16), ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1
        title_font = label_font = ImageFont.load_default()
    draw.text((pad, 7), info["title"], fill=(240, 240, 240), font=title_font)
    draw.text((pad, head + 256 + 5), "input (64 px, 4x nearest)", fill=(200, 200, 200), font=label_font)
    draw.text((256 + 2 * pad, head + 256 + 5), f"preview: bicubic 4x + adain, NOT {info.get('product', 'AddSR')} output",
              fill=(255, 200, 120), font=label_font)
    out.parent.mkdir(parents=True, exist_ok=True)
    for colors in (256, 128, 64):
        canvas.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(
            out, optimize=True)
        if out.stat().st_size < max_bytes:
            break
    return out
