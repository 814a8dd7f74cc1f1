"""Thin images (issue 11 §2.4): work in proportion to their pixels, counted, not timed.

An 8x1000 LR used to become a 512x64000 condition image (the official short-side minimum),
256x its output, and the tiled VAE ran a whole-image statistics pass and then the tiles over
it, twice the work for a strip that fits in the pass.
"""
import pytest
import torch

from conftest import PARITY
from addsr_core.imaging.prepare import MAX_ENLARGED_AREA_VS_SQUARE, condition_sizes
from addsr_core.imaging.tiled_vae import decoder_context, tiled_decode
from addsr_core.loading.models import load_vae
from addsr_core.pipeline import AddSROptions, upscale
from addsr_core.addsr.tiny import write_tiny_kit
from addsr_core.selfcheck import load_tiny_models

pytestmark = pytest.mark.usefixtures("single_thread")  # small tensors: a second thread only adds contention


def _official_sizes(h, w, scale, process_size):
    """test_addsr.py's enlargement, uncapped (reference README §5)."""
    short = process_size // scale
    if w < short or h < short:
        f = short / min(w, h)
        h, w = int(f * h), int(f * w)
    return (h * scale) // 8 * 8, (w * scale) // 8 * 8


def _area(hw):
    return hw[0] * hw[1]


def test_thin_enlargement_is_capped_and_images_up_to_4_to_1_stay_official():
    assert condition_sizes((8, 1000))[-1] == (88, 11448)  # official: (512, 64000)
    square = _area(condition_sizes((89, 90))[-1])  # as many LR pixels
    assert _area(condition_sizes((8, 1000))[-1]) <= MAX_ENLARGED_AREA_VS_SQUARE * square
    for scale, process_size in [(4, 512), (2, 512), (4, 128)]:
        for h in range(1, 130, 3):
            for w in range(h, 9 * h + 1, max(1, h // 2)):
                if min(_official_sizes(h, w, scale, process_size)) < 8:
                    continue
                ours = condition_sizes((h, w), scale, process_size)[-1]
                if w <= 4 * h:
                    assert ours == _official_sizes(h, w, scale, process_size), (h, w)
                square = max(process_size**2, scale * scale * h * w)  # what a square of h*w pixels gets
                assert _area(ours) <= MAX_ENLARGED_AREA_VS_SQUARE * square, (h, w)
                assert ours[0] >= h * scale // 8 * 8, (h, w)  # capped, but never below no enlargement


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return load_tiny_models(write_tiny_kit(tmp_path_factory.mktemp("thin_kit")))


def _count_work(models, lr, options):
    """Pixels into the VAE encoder and decoder (halos and statistics passes included), latents into the UNet and ControlNet."""
    work = dict.fromkeys(["encoder", "decoder", "unet", "controlnet"], 0)
    nets = {"encoder": models.vae.encoder, "decoder": models.vae.decoder, "unet": models.unet, "controlnet": models.controlnet}
    px = {"encoder": 1, "decoder": 64, "unet": 1, "controlnet": 1}  # decoder input is latent: count output pixels

    def hook(name):
        def count(module, args):
            work[name] += args[0].shape[-2] * args[0].shape[-1] * px[name]

        return count

    handles = [net.register_forward_pre_hook(hook(name)) for name, net in nets.items()]
    try:
        with torch.no_grad():
            out = upscale(models, lr, options)
    finally:
        for h in handles:
            h.remove()
    return out, work


def test_thin_image_work_is_proportional_to_its_pixels(models):
    """A 2x100 LR against a 14x14 one (about as many pixels), through the whole pipeline with
    small tiles, so that every tiled stage is exercised."""
    options = AddSROptions(
        steps=2, use_tags=False, min_size=64, latent_tile_px=128, latent_overlap_px=32,
        vae_encode_tile_px=128, vae_decode_tile_px=128, vae_overlap_px=32,
    )
    g = torch.Generator().manual_seed(0)
    thin, square = torch.rand(1, 3, 2, 100, generator=g), torch.rand(1, 3, 14, 14, generator=g)
    out_thin, work_thin = _count_work(models, thin, options)
    out_square, work_square = _count_work(models, square, options)
    assert out_thin.shape == (1, 3, 8, 400) and torch.isfinite(out_thin).all()
    assert out_square.shape == (1, 3, 56, 56)
    cond_thin = _area(condition_sizes((2, 100), 4, 64)[-1])  # 16x904 (official: 64x3200)
    cond_square = _area(condition_sizes((14, 14), 4, 64)[-1])  # 64x64
    assert cond_thin <= MAX_ENLARGED_AREA_VS_SQUARE * cond_square
    for name in work_thin:  # per condition pixel, within 2x of the square image
        per_px_thin, per_px_square = work_thin[name] / cond_thin, work_square[name] / cond_square
        assert per_px_thin <= 2 * per_px_square, (name, work_thin[name], work_square[name])


@pytest.fixture(scope="module")
def vae():
    return load_vae(PARITY / "vae_small" / "vae")


def _decoder_area(vae, fn):
    seen = [0]
    handle = vae.decoder.register_forward_pre_hook(lambda m, a: seen.__setitem__(0, seen[0] + a[0].shape[-2] * a[0].shape[-1]))
    try:
        with torch.no_grad():
            out = fn()
    finally:
        handle.remove()
    return out, seen[0]


def test_thin_strip_decodes_untiled_or_seamlessly(vae):
    """The halo (14 latents) is taller than the strip (3): clamped to the image, not padded."""
    latent = torch.randn(1, 4, 3, 20, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        untiled = vae.decode(latent)
    # 2.5 tiles wide, but no more area than one tile (8^2 latents): one untiled run, bit-identical
    default, area = _decoder_area(vae, lambda: tiled_decode(vae, latent, 64, 16))
    assert torch.equal(default, untiled) and area == 3 * 20
    # forced into tiles of 8 latents with the exact whole-image context: seamless
    tiled = tiled_decode(vae, latent, 64, 16, context=decoder_context(vae, latent))
    assert (tiled - untiled).abs().max() < 2e-5


def test_thin_strip_tiles_cost_no_more_per_pixel_than_square_ones(vae):
    """Past the statistics pass's size both are tiled; the thin axis needs no halo, so the strip
    is cheaper per pixel than the square (both counted with the pass)."""
    g = torch.Generator().manual_seed(5)
    thin, square = torch.randn(1, 4, 2, 128, generator=g), torch.randn(1, 4, 16, 16, generator=g)  # > 12^2: tiled
    areas = [_decoder_area(vae, lambda x=x: tiled_decode(vae, x, 64, 16, halo_px=16))[1] / _area(x.shape[-2:]) for x in (thin, square)]
    assert 1 < areas[0] <= areas[1]
