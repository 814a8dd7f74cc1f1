"""The StableSR family on the shared stages: official input geometry, pixel tiles, and an end-to-end tiny run."""
import pytest
import torch
import torch.nn.functional as F

from addsr_core.errors import OptionsError
from addsr_core.pipeline import StableSRModels, StableSROptions, upscale
from addsr_core.sampling.tiling import pixel_tile_starts
from addsr_core.stablesr.pipeline import finish, prepare_lr
from addsr_core.stablesr.tiny import TINY_CONTEXT_DIM, tiny_cfw, tiny_stablesr


def test_prepare_follows_the_official_tile_script():
    lr = torch.rand(1, 3, 10, 13, generator=torch.Generator().manual_seed(0))
    prepared = prepare_lr(lr, StableSROptions(scale=4, min_size=64, latent_overlap_px=32))
    # factor max(64/10, 4) = 6.4 -> 64 x 83; 83 is no multiple of 32, so both sides are reflect-padded to
    # the next multiple of 32 above them: 64 gets 32 more (the script's ((h // 32) + 1) * 32 - h)
    assert prepared.upscaled_hw == (64, 83) and prepared.output_size == (40, 52)
    up = F.interpolate(lr * 2 - 1, size=(64, 83), mode="bicubic").clamp(-1, 1)
    assert torch.equal(prepared.control_image, F.pad(up, (0, 13, 0, 32), mode="reflect"))
    prepared = prepare_lr(torch.rand(1, 3, 200, 160), StableSROptions(min_size=512))
    assert prepared.upscaled_hw == (800, 640) and tuple(prepared.control_image.shape[-2:]) == (800, 640)


def test_prepare_needs_the_models_size_first():
    with pytest.raises(OptionsError, match="min_size is 0"):
        prepare_lr(torch.rand(1, 3, 16, 16), StableSROptions())


def test_pixel_tiles_follow_the_official_splitter():
    assert pixel_tile_starts(3000, 1280, 1000) == [0, 1000, 1720]
    assert pixel_tile_starts(2000, 1280, 1000) == [0, 720]
    assert pixel_tile_starts(1280, 1280, 1000) == [0]
    plan = StableSROptions().pixel_plan(3000, 2000)  # 1280 px tiles overlapping by 280: the official stride 1000
    assert sorted({y for y, _ in plan.origins}) == [0, 1000, 1720] and sorted({x for _, x in plan.origins}) == [0, 720]


def test_finish_crops_padding_then_resizes_to_the_output_size():
    prepared = prepare_lr(torch.rand(1, 3, 10, 13), StableSROptions(scale=4, min_size=64, latent_overlap_px=32))
    out = finish(torch.zeros(1, 3, 64, 96), prepared)
    assert tuple(out.shape[-2:]) == (40, 52) and torch.allclose(out, torch.full_like(out, 0.5))


def test_bad_options_are_named():
    for kwargs, match in [({"color_fix": "hist"}, "color_fix"), ({"min_size": 100}, "min_size"),
                          ({"fidelity": 2.0}, "fidelity"), ({"procedure": "fast"}, "procedure"),
                          ({"pixel_tile_px": 60}, "pixel_tile_px"), ({"start_point": "x"}, "start_point")]:
        with pytest.raises(OptionsError, match=match):
            StableSROptions(**kwargs).validate()


def test_end_to_end_tiny_upscale_whole_and_in_pixel_tiles():
    context = torch.randn(1, 7, TINY_CONTEXT_DIM, generator=torch.Generator().manual_seed(2))
    models = StableSRModels(tiny_stablesr(0), tiny_cfw(0), text=lambda prompts: context.expand(len(prompts), -1, -1))
    lr = torch.rand(1, 3, 16, 20, generator=torch.Generator().manual_seed(1))
    options = dict(scale=2, steps=1, min_size=128, latent_tile_px=128, latent_overlap_px=32, color_fix="wavelet")
    tiles = []
    whole = upscale(models, lr, StableSROptions(**options), on_tile=lambda: tiles.append(1))
    assert tuple(whole.shape) == (1, 3, 32, 40) and whole.min() >= 0 and whole.max() <= 1
    assert len(tiles) == 2  # one pixel tile; its 16x20 latent in 16-latent tiles (overlap 4): 2 tiles per step
    split = upscale(models, lr, StableSROptions(**options, pixel_tile_px=128, pixel_overlap_px=32))
    assert tuple(split.shape) == (1, 3, 32, 40) and torch.isfinite(split).all()
    assert not torch.equal(split, whole)  # 128x160 in 128 px pixel tiles: two tiles, each sampled on its own
    canvas = upscale(models, lr, StableSROptions(**options, procedure="whole_latent"))
    assert torch.equal(canvas, whole)  # one pixel tile covering the image: the whole latent is that tile
