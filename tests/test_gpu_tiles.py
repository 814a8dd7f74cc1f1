"""GPU-aware tile defaults (addsr_core/memory.py): the largest tiles that fit the free memory on a GPU, the
measured CPU defaults everywhere else, explicit tiles always kept."""
from __future__ import annotations

import pytest
import torch

from addsr_core import memory
from addsr_core.cli_upscale import build_options
from addsr_core.memory import AUTO, gpu_tiles
from addsr_core.pipeline import AddSROptions
from addsr_core.stages import DEFAULT_LATENT_TILE_PX, DEFAULT_VAE_TILE_PX, resolve_tiles
from addsr_core.seesr.pipeline import SeeSROptions

GiB = 2**30
AUTO_TILES = dict(latent_tile_px=AUTO, vae_encode_tile_px=AUTO, vae_decode_tile_px=AUTO)


def test_the_chosen_tiles_fit_the_budget_and_grow_with_the_free_memory():
    out_px = 4096 * 4096
    previous = None
    for free_gib in (1, 2, 3, 4, 8, 16, 40, 80):
        tiles = gpu_tiles(free_gib * GiB, torch.bfloat16, out_px, max_latent_tile_px=1024)
        budget = memory.FREE_FRACTION * free_gib * GiB - memory.IMAGE_BYTES_PER_PX * out_px
        for tile, cost in ((tiles.latent_tile_px, memory.DENOISE_BYTES_PER_PX[2] * tiles.latent_tile_px ** 2),
                           (tiles.vae_decode_tile_px, memory.VAE_DECODE_BYTES_PER_PX[2] * tiles.vae_decode_tile_px ** 2)):
            assert tile % memory.TILE_STEP == 0
            assert tile == memory.MIN_TILE_PX or cost <= budget
        if previous is not None:
            assert all(a >= b for a, b in zip(vars(tiles).values(), vars(previous).values()))
        previous = tiles
    assert (previous.latent_tile_px, previous.vae_decode_tile_px) == (1024, memory.MAX_VAE_TILE_PX)  # 80 GiB: caps
    starved = gpu_tiles(GiB // 2, torch.float16, out_px, max_latent_tile_px=1024)
    assert set(vars(starved).values()) == {memory.MIN_TILE_PX}  # nothing fits: the smallest, OOM halving after


def test_fp32_tiles_cost_twice_and_cfg_doubles_the_diffusion_tile_cost():
    half = gpu_tiles(6 * GiB, torch.bfloat16, 2048 * 2048, max_latent_tile_px=4096)
    full = gpu_tiles(6 * GiB, torch.float32, 2048 * 2048, max_latent_tile_px=4096)
    cfg = gpu_tiles(6 * GiB, torch.bfloat16, 2048 * 2048, max_latent_tile_px=4096, cfg_batch=2)
    assert full.vae_decode_tile_px < half.vae_decode_tile_px and full.latent_tile_px < half.latent_tile_px
    assert cfg.latent_tile_px < half.latent_tile_px and cfg.vae_decode_tile_px == half.vae_decode_tile_px


def test_auto_tiles_are_the_measured_defaults_off_the_gpu():
    addsr = resolve_tiles(AddSROptions(**AUTO_TILES, latent_overlap_px=64), torch.device("cpu"), lr_hw=(300, 200))
    assert (addsr.latent_tile_px, addsr.latent_overlap_px, addsr.vae_encode_tile_px, addsr.vae_decode_tile_px) == \
        (DEFAULT_LATENT_TILE_PX, 64, DEFAULT_VAE_TILE_PX, DEFAULT_VAE_TILE_PX)
    seesr = resolve_tiles(SeeSROptions(latent_tile_px=AUTO), torch.device("cpu"))
    assert (seesr.latent_tile_px, seesr.latent_overlap_px) == (768, 32)
    explicit = AddSROptions(latent_tile_px=512, vae_decode_tile_px=AUTO)
    kept = resolve_tiles(explicit, torch.device("cuda"), torch.bfloat16, (1024, 1024), free_bytes=80 * GiB)
    assert kept.latent_tile_px == 512 and kept.vae_decode_tile_px == memory.MAX_VAE_TILE_PX
    AddSROptions(**AUTO_TILES).validate()  # AUTO is a valid tile option


def test_auto_tiles_on_a_gpu_follow_its_free_memory():
    options = AddSROptions(**AUTO_TILES, latent_overlap_px=64)
    small = resolve_tiles(options, torch.device("cuda"), torch.bfloat16, (1024, 1024), free_bytes=3 * GiB)
    expected = gpu_tiles(3 * GiB, torch.bfloat16, 4096 * 4096, max_latent_tile_px=DEFAULT_LATENT_TILE_PX)
    assert (small.latent_tile_px, small.vae_encode_tile_px, small.vae_decode_tile_px) == \
        (expected.latent_tile_px, expected.vae_encode_tile_px, expected.vae_decode_tile_px)
    assert small.latent_overlap_px == min(64, small.latent_tile_px // 2 // 8 * 8)
    seesr = resolve_tiles(SeeSROptions(**AUTO_TILES), torch.device("cuda"), torch.float16, (256, 256), free_bytes=80 * GiB)
    assert seesr.latent_tile_px == 768  # never above the family's own (official) tile


def _cli_args(method: str, *flags: str):
    from addsr_core.cli import build_parser

    return build_parser().parse_args(["upscale", "in", "-o", "out", "--addsr", "a", "--sd2", "s", "--ram", "r",
                                      "--method", method, *flags])


@pytest.mark.parametrize("method", ["addsr", "seesr"])
def test_the_cli_leaves_unset_tiles_to_a_gpu_and_keeps_the_cpu_numbers(method):
    cpu = build_options(_cli_args(method), torch.device("cpu"))
    defaults = AddSROptions() if method == "addsr" else SeeSROptions()
    assert (cpu.latent_tile_px, cpu.latent_overlap_px, cpu.vae_encode_tile_px, cpu.vae_decode_tile_px) == \
        (defaults.latent_tile_px, defaults.latent_overlap_px, DEFAULT_VAE_TILE_PX, DEFAULT_VAE_TILE_PX)
    gpu = build_options(_cli_args(method), torch.device("cuda"))
    assert (gpu.latent_tile_px, gpu.vae_encode_tile_px, gpu.vae_decode_tile_px) == (AUTO, AUTO, AUTO)
    given = build_options(_cli_args(method, "--tile", "640", "--vae-tile", "512"), torch.device("cuda"))
    assert (given.latent_tile_px, given.vae_decode_tile_px) == (640, 512)


def test_upscale_resolves_auto_tiles_to_the_same_image_as_the_defaults(tmp_path):
    from addsr_core.addsr.tiny import write_tiny_kit
    from addsr_core.selfcheck import load_tiny_models
    from addsr_core.pipeline import upscale

    models = load_tiny_models(write_tiny_kit(tmp_path))
    lr = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(0))
    small = dict(steps=1, min_size=96, use_tags=False)
    auto = upscale(models, lr, AddSROptions(**small, **AUTO_TILES))
    assert torch.equal(auto, upscale(models, lr, AddSROptions(**small)))
