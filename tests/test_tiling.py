"""Latent tiling against the official tiled branch (reference README §10)."""
import pytest
import torch
from safetensors.torch import load_file

from conftest import PARITY, assert_matches
from addsr_core.sampling.tiling import aggregate_tiles, effective_tile, gaussian_weights, tile_count, tile_origins


# numpy's float64 exp takes a different code path per CPU (AVX-512 SIMD vs the libm fallback on an
# AVX2-only CPU): the same official formula differs in the last bit or two between machines. The
# fixture's weights were recorded on an AVX-512 machine; 4 ulp bounds that, and nothing else.
ULPS = 4 * torch.finfo(torch.float64).eps


def assert_same_weights(ours, ref):
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, rtol=ULPS, atol=0), f"max rel diff {((ours - ref).abs() / ref.abs()).max():.2e}"


@pytest.fixture(scope="module")
def expected():
    return load_file(PARITY / "tiling" / "expected.safetensors")


@pytest.mark.parametrize("w,h", [(64, 64), (40, 24)])
def test_gaussian_weights_match_official(expected, w, h):
    ref = expected[f"gaussian_weights_w{w}_h{h}"]
    ours = gaussian_weights(w, h)
    assert ours.dtype == torch.float64 and ours.shape == (h, w)
    assert torch.equal(ref, ref[:1, :1].expand_as(ref))  # every channel is the same tile
    assert_same_weights(ours, ref[0, 0])  # the official formula, to the last bits of exp


def test_weights_used_by_the_official_stitch(expected):
    assert_same_weights(gaussian_weights(64, 64), expected["gaussian_weights_w64_h64_used"][0, 0])


def test_gaussian_weights_are_asymmetric_in_y():
    g = gaussian_weights(8, 8)
    assert torch.allclose(g, g.flip(1))  # x centred at (W-1)/2
    assert not torch.allclose(g, g.flip(0))  # y centred at H/2
    assert g[4, 3] == g[:, 3].max()


def test_tile_origins_official_order(expected):
    origins = tile_origins(100, 140, 64, 8)
    assert origins == [(0, 0), (36, 0), (0, 56), (36, 56), (0, 76), (36, 76)]
    assert origins == [tuple(o) for o in expected["tile_origins_yx"].tolist()]
    assert tile_count(100, 140, 64, 8) == 6


def test_tile_geometry_edge_cases():
    assert tile_origins(64, 64, 64, 8) == [(0, 0)]
    assert tile_origins(50, 100, 64, 8) == [(0, 0), (0, 42), (0, 50)]  # official square clamp to 50
    assert tile_origins(50, 100, (64, 64), 8) == [(0, 0), (0, 36)]  # per-axis clamp for an explicit (h, w) tile
    assert tile_origins(120, 120, 64, 8) == [(0, 0), (56, 0), (0, 56), (56, 56)]  # exactly two tiles per axis
    assert effective_tile(40, 300, 64, 48) == (40, 40, 20, 20)  # overlap >= clamped tile: halved, no endless loop
    assert tile_count(300, 40, (96, 32), (16, 0)) == 4 * 2
    for h, w, t, o in [(37, 91, 16, 3), (200, 33, 48, 12), (9, 9, 4, 1)]:
        th, tw, _, _ = effective_tile(h, w, t, o)
        covered = torch.zeros(h, w, dtype=torch.bool)
        for y0, x0 in tile_origins(h, w, t, o):
            assert 0 <= y0 <= h - th and 0 <= x0 <= w - tw
            covered[y0 : y0 + th, x0 : x0 + tw] = True
        assert covered.all()
    with pytest.raises(ValueError, match="overlap"):
        tile_origins(100, 100, 64, -1)
    with pytest.raises(ValueError, match="non-empty"):
        tile_count(0, 10, 8, 2)


def test_stitch_matches_official(expected):
    preds = [expected[f"tile_pred.{i}"] for i in range(6)]
    origins = tile_origins(100, 140, 64, 8)
    calls = []

    def fn(y0, x0, th, tw):
        calls.append((y0, x0, th, tw))
        return preds[len(calls) - 1]

    ticks = []
    out = aggregate_tiles(fn, (100, 140), 64, 8, on_tile=lambda: ticks.append(1))
    assert calls == [(y, x, 64, 64) for y, x in origins]
    assert len(ticks) == 6
    assert out.dtype == torch.float32
    assert_matches(out, expected["stitched_noise_pred"], name="stitched_noise_pred")
    assert torch.equal(out, expected["stitched_noise_pred"])  # same accumulation order and precision


def test_one_tile_returns_fn_output_exactly():
    pred = torch.randn(2, 4, 30, 50, generator=torch.Generator().manual_seed(0))
    out = aggregate_tiles(lambda y0, x0, th, tw: pred, (30, 50), (32, 64), 8)
    assert out is pred


def test_stitch_of_a_global_field_is_exact_and_nonsquare():
    field = torch.randn(1, 4, 45, 70, generator=torch.Generator().manual_seed(1))
    out = aggregate_tiles(lambda y0, x0, th, tw: field[..., y0 : y0 + th, x0 : x0 + tw], (45, 70), (24, 32), (6, 10))
    assert torch.allclose(out, field, atol=1e-6)
    with pytest.raises(ValueError, match=r"must return \[B,C,24,32\]"):
        aggregate_tiles(lambda y0, x0, th, tw: field[..., :3, :3], (45, 70), (24, 32), 4)


def test_pixel_plan_blend_matches_the_official_pixel_loop():
    """StableSR's pixel tiles (pipeline and CFW decode) go through the same blend_tiles: bit for bit
    the official ImageSpliterTh loop (float64 weights, float32 buffers, outer x inner y)."""
    from addsr_core.sampling.tiling import blend_tiles, pixel_tile_plan, pixel_tile_starts

    gen = torch.Generator().manual_seed(2)
    h, w, tile, stride = 40, 72, 32, 24
    preds = {}

    def fn(y0, x0, th, tw):
        preds[(y0, x0)] = torch.randn(1, 3, th, tw, generator=gen)
        return preds[(y0, x0)]

    plan = pixel_tile_plan(h, w, tile, stride)
    out = blend_tiles(fn, plan, device="cpu")
    ys, xs = pixel_tile_starts(h, tile, stride), pixel_tile_starts(w, tile, stride)
    assert plan.origins == tuple((y, x) for x in xs for y in ys) and plan.count == 6
    weights = gaussian_weights(tile, tile)
    result, total = torch.zeros(1, 3, h, w), torch.zeros(h, w)
    for x0 in xs:
        for y0 in ys:
            result[..., y0 : y0 + tile, x0 : x0 + tile] += preds[(y0, x0)] * weights
            total[y0 : y0 + tile, x0 : x0 + tile] += weights
    assert torch.equal(out, result / total)
    whole = torch.randn(1, 3, 20, 30, generator=gen)
    single = pixel_tile_plan(20, 30, 32, 24)
    assert single.single and blend_tiles(lambda *a: whole, single) is whole


@pytest.mark.parametrize("size,tile,overlap", [(256, 128, 32), (192, 128, 32), (129, 128, 32), (500, 64, 21),
                                               (77, 32, 10), (128, 128, 32), (40, 128, 32)])
def test_balanced_tile_keeps_the_count_and_covers_with_the_smallest_tile(size, tile, overlap):
    from addsr_core.sampling.tiling import axis_origins, balanced_tile

    n = len(axis_origins(size, min(tile, size), overlap))
    t = balanced_tile(size, tile, overlap)
    assert t <= min(tile, size)
    assert len(axis_origins(size, t, overlap)) == n, "same number of network calls"
    if n > 1:
        assert len(axis_origins(size, t - 1, overlap)) > n, "one smaller would need another tile"
        origins = axis_origins(size, t, overlap)
        strides = {b - a for a, b in zip(origins, origins[1:])}
        assert max(strides) - min(strides) <= 1 + (size + (n - 1) * overlap) % n, "tiles evenly spread"
    else:
        assert t == min(tile, size)


def test_latent_tiling_balanced_plan_and_calls():
    from addsr_core.stages import LatentTiling

    balanced, fixed = LatentTiling(1024, 256), LatentTiling(1024, 256, rule="stride")
    assert balanced.plan((128, 128)) is None and fixed.plan((128, 128)) is None  # one tile: untiled
    assert fixed.plan((256, 256)) == ((128, 128), 32)
    assert balanced.plan((256, 256)) == ((107, 107), 32)  # 3 x 107 instead of 3 x 128 per axis
    assert balanced.calls_per_step((256, 256)) == fixed.calls_per_step((256, 256)) == 9
    assert balanced.plan((100, 300)) == ((100, 122), 32)  # ceil((300 + 2 * 32) / 3)
