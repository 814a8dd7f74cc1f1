"""Tiled VAE encode/decode on the small parity VAE (random weights, real layout and code path)."""
import pytest
import torch
from torch import nn

from conftest import PARITY
from addsr_core.imaging.tiled_vae import (
    decoder_context,
    decoder_receptive_px,
    encoder_context,
    encoder_receptive_px,
    feather,
    fixed_group_norm_stats,
    plan_spans,
    decoder_trim_margins,
    record_group_norm_stats,
    tiled_decode,
    tiled_encode,
)
from addsr_core.loading.models import load_vae


@pytest.fixture(scope="module")
def vae():
    return load_vae(PARITY / "vae_small" / "vae")


def smooth_image(h, w):
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack([torch.sin(3 * xx + yy), 0.8 * torch.cos(2 * yy - xx), 1.6 * xx * yy - 0.8])[None]


@pytest.fixture(scope="module")
def smooth(vae):
    image = smooth_image(192, 256)
    with torch.no_grad():
        moments = vae.encode_moments(image)
        latent = moments[:, :4]
        return image, moments, latent, vae.decode(latent)


def _nothing_patched(vae):
    return all("forward" not in m.__dict__ for m in vae.modules())


def test_one_tile_is_bit_identical(vae):
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(1, 4, 8, 12, generator=g)
    image = torch.rand(1, 3, 64, 96, generator=g) * 2 - 1
    with torch.no_grad():
        assert torch.equal(tiled_decode(vae, latent, 96, 16), vae.decode(latent))
        assert torch.equal(tiled_encode(vae, image, 96, 16), vae.encode_moments(image))


def test_multi_tile_is_exact_when_the_whole_image_fits_the_statistics_pass(vae, smooth):
    """Halo = receptive field, grid-aligned tiles, whole-image GroupNorm statistics and attention keys:
    with nothing estimated, tiling reproduces the untiled VAE, attention included."""
    image, moments, latent, decoded = smooth
    ticks = []
    with torch.no_grad():
        # the context recorded explicitly at full size: tiles
        explicit_d = tiled_decode(vae, latent, 128, 32, context=decoder_context(vae, latent), on_tile=lambda: ticks.append(1))
        explicit_m = tiled_encode(vae, image, 128, 32, context=encoder_context(vae, image))
        # a statistics pass as large as the image would run it whole, so it is not tiled at all
        fits_d = tiled_decode(vae, latent, 128, 32, stats_px=256, on_tile=lambda: ticks.append(1))
        # by default the encoder's pass may hold a tile with its halo (304 px): this image fits
        default_m = tiled_encode(vae, image, 128, 32)
    assert len(ticks) == 2 * 3  # latent 24x32, tiles of 16 overlapping by 4; none for the whole runs
    assert torch.equal(fits_d, decoded) and torch.equal(default_m, moments)
    for ours, ref in [(explicit_d, decoded), (explicit_m, moments)]:
        assert ours.shape == ref.shape
        assert (ours - ref).abs().max() < 2e-5
    assert _nothing_patched(vae)


def test_default_statistics_pass_is_a_quarter_of_the_image_and_at_most_a_tile(vae, monkeypatch):
    """The default pass: a quarter of the input's area, at most what one tile computes at full
    resolution (a trimmed decoder tile: its core; an untrimmed one or an encoder tile: core and
    halo); an input no larger than that cap runs whole, even when wider than a tile."""
    from addsr_core.imaging.tiled_vae import codec

    areas = []
    for name in ("decoder_context", "encoder_context"):
        real = getattr(codec, name)
        monkeypatch.setattr(codec, name, lambda vae, x, area, _real=real: areas.append(area) or _real(vae, x, area))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # a 32 px halo (4 latents) keeps the untrimmed and encoder cases small
        for hw, trim, want in [((24, 32), True, 24 * 32 // 4), ((40, 40), True, 16 * 16),
                               ((40, 40), False, 40 * 40 // 4), ((50, 50), False, (16 + 2 * 4) ** 2)]:
            areas.clear()
            tiled_decode(vae, torch.randn(1, 4, *hw, generator=g), 128, 32, halo_px=32, trim=trim)
            assert areas == [want], (hw, trim)
        strip = torch.randn(1, 4, 8, 32, generator=g)  # 64x256 px: one tile's area, twice its width
        areas.clear()
        assert torch.equal(tiled_decode(vae, strip, 128, 32), vae.decode(strip)) and areas == []
        image = torch.rand(1, 3, 384, 512, generator=g) * 2 - 1
        for hw, want in [((384, 512), (128 + 2 * 32) ** 2), ((256, 320), 256 * 320 // 4)]:
            areas.clear()
            tiled_encode(vae, image[..., : hw[0], : hw[1]], 128, 32, halo_px=32)
            assert areas == [want], hw
        areas.clear()  # the encoder's own halo (88 px): a 304 px tile context holds this image whole
        assert torch.equal(tiled_encode(vae, image[..., :256, :320], 128, 32), vae.encode_moments(image[..., :256, :320]))
        assert areas == []


def test_trimmed_decoder_tiles_give_the_same_pixels_with_less_work(vae, smooth):
    """After each up block a tile keeps only its core plus the reach still to come: the same
    output as running the whole halo through every layer, and the untiled decode."""
    _, _, latent, decoded = smooth
    context = decoder_context(vae, latent)
    widths = []
    hook = vae.decoder.conv_out.register_forward_pre_hook(lambda m, args: widths.append(tuple(args[0].shape[-2:])))
    try:
        with torch.no_grad():
            full = tiled_decode(vae, latent, 128, 32, context=context, trim=False)
            n_full = len(widths)
            trimmed = tiled_decode(vae, latent, 128, 32, context=context)
    finally:
        hook.remove()
    assert (trimmed - full).abs().max() < 1e-5 and (trimmed - decoded).abs().max() < 2e-5
    area = lambda shapes: sum(h * w for h, w in shapes)  # noqa: E731  full-resolution pixels computed
    assert area(widths[n_full:]) < 0.8 * area(widths[:n_full])
    margins = decoder_trim_margins(vae)
    assert margins[-1] == (1, 1) and [scale for scale, _ in margins] == [4, 2, 1, 1]
    assert [reach for _, reach in margins] == sorted((reach for _, reach in margins), reverse=True)
    assert _nothing_patched(vae)


def test_multi_tile_difference_with_estimated_statistics_is_bounded(vae, smooth):
    """Statistics and attention keys from a 128 px shrunk copy (1/3 of the area), as for big images.

    Measured: decode max 0.90 / mean 0.135 (|decoded| <= 3.2), encode max 0.30 / mean 0.036
    (|moments| <= 3.6). This random VAE is a worst case: its attention is nearly uniform
    (maximally global) and its GroupNorms are very sensitive to their statistics.
    """
    image, moments, latent, decoded = smooth
    with torch.no_grad():
        tiled_d = tiled_decode(vae, latent, 128, 32, stats_px=128)
        tiled_m = tiled_encode(vae, image, 128, 32, stats_px=128)
    dec_err, enc_err = (tiled_d - decoded).abs(), (tiled_m - moments).abs()
    assert dec_err.max() < 1.0 and dec_err.mean() < 0.16
    assert enc_err.max() < 0.35 and enc_err.mean() < 0.045
    # the same statistics everywhere: no tile gets its own cast (per-64px-block error stays even)
    blocks = dec_err.mean(1)[0].unfold(0, 64, 64).unfold(1, 64, 64).mean((-1, -2))
    assert blocks.max() < 3 * blocks.mean()


def test_coarsened_recorded_tokens_keep_the_estimate_as_good(vae, smooth):
    """An estimated context keeps at most max_tokens attention tokens (cells averaged, each weighted
    by its area). Measured here: 234 tokens (decode max 0.89 / mean 0.139) -> 54 (0.76 / 0.134) ->
    12 (0.95 / 0.113); encode 0.29 / 0.038 -> 0.27 / 0.036 -> 0.26 / 0.035. A full-size (exact)
    context keeps every token."""
    image, moments, latent, decoded = smooth
    with torch.no_grad():
        context = decoder_context(vae, latent, (128 // 8) ** 2, max_tokens=16)
        assert all(t.grid_hw[0] * t.grid_hw[1] <= 16 for t in context.tokens.values())
        tiled_d = tiled_decode(vae, latent, 128, 32, context=context)
        tiled_m = tiled_encode(vae, image, 128, 32, context=encoder_context(vae, image, 128 ** 2, max_tokens=16))
        exact = decoder_context(vae, latent, max_tokens=16)
    dec_err, enc_err = (tiled_d - decoded).abs(), (tiled_m - moments).abs()
    assert dec_err.max() < 1.0 and dec_err.mean() < 0.16
    assert enc_err.max() < 0.35 and enc_err.mean() < 0.045
    assert [t.grid_hw for t in exact.tokens.values()] == [tuple(latent.shape[-2:])]


def test_shapes_for_sizes_not_multiple_of_tile(vae):
    g = torch.Generator().manual_seed(1)
    latent = torch.randn(2, 4, 21, 27, generator=g)
    image = torch.rand(2, 3, 168, 232, generator=g) * 2 - 1
    with torch.no_grad():
        assert tiled_decode(vae, latent, 96, 16, halo_px=32).shape == (2, 3, 168, 216)
        assert tiled_encode(vae, image, 96, 16, halo_px=32).shape == (2, 8, 21, 29)
        # the untiled fallback accepts any size; tiling needs the latent grid
        small = image[..., :60, :61]
        assert torch.equal(tiled_encode(vae, small, 64, 16), vae.encode_moments(small))
    with pytest.raises(ValueError, match="multiple of 8"):
        tiled_encode(vae, image[..., :, :228], 64, 16, halo_px=32)  # too big for the statistics pass
    with pytest.raises(ValueError, match="at least 8"):
        tiled_decode(vae, latent, 4, 0)
    with pytest.raises(ValueError, match="overlap"):
        tiled_decode(vae, latent, 64, -8)


def _max_activation(module, fn):
    """Largest output of any leaf module while ``fn`` runs."""
    biggest = [0]

    def hook(m, i, o):
        biggest[0] = max(biggest[0], o.numel())

    hooks = [m.register_forward_hook(hook) for m in module.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            fn()
    finally:
        for h in hooks:
            h.remove()
    return biggest[0]


def test_peak_activation_is_bounded_by_tile_not_image(vae):
    g = torch.Generator().manual_seed(2)
    tile_px, halo_px = 64, 32  # a small halo keeps this test fast; the bound is the same argument
    context = (tile_px + 2 * halo_px) // 8
    one_tile = _max_activation(vae, lambda: vae.decode(torch.randn(1, 4, context, context, generator=g)))
    peaks = []
    for hw in [(24, 24), (24, 40), (24, 72)]:
        latent = torch.randn(1, 4, *hw, generator=g)
        peaks.append(_max_activation(vae, lambda: tiled_decode(vae, latent, tile_px, 16, halo_px=halo_px)))
        assert peaks[-1] <= one_tile < _max_activation(vae, lambda: vae.decode(latent))
    # set by the tile (with its halo), not by the image: 3x the image, no larger an activation
    # (balanced, trimmed tiles can be smaller than one full tile with its halo)
    assert peaks[2] <= peaks[0] and max(peaks) > one_tile // 2

    side = tile_px + 2 * halo_px
    one_tile = _max_activation(vae, lambda: vae.encode_moments(torch.rand(1, 3, side, side, generator=g)))
    peaks = []
    for hw in [(192, 192), (192, 320)]:
        image = torch.rand(1, 3, *hw, generator=g)
        peaks.append(_max_activation(vae, lambda: tiled_encode(vae, image, tile_px, 16, halo_px=halo_px)))
        assert peaks[-1] <= one_tile < _max_activation(vae, lambda: vae.encode_moments(image))
    assert peaks[0] == peaks[1] == one_tile


def test_receptive_fields_from_config(vae):
    # tiny VAE: 4 levels, 1 layer per block -> decoder 8*9 + 4*5 + 2*5 + 5 + 1, encoder 1 + 4+8+16 + 8*7
    assert decoder_receptive_px(vae) == 108
    assert encoder_receptive_px(vae) == 85


def test_feather_and_spans():
    assert torch.equal(feather(4, 0, 0), torch.ones(4))
    left, right = feather(8, 0, 4), feather(8, 4, 0)
    assert torch.allclose(left[4:] + right[:4], torch.ones(4))  # neighbours' ramps sum to 1
    assert feather(8, 4, 4).min() > 0
    spans = plan_spans(21, 8, 2, 3, balanced=False)  # fixed stride: the last core mostly repeats the third
    assert [(s.start, s.end) for s in spans] == [(0, 8), (6, 14), (12, 20), (13, 21)]
    assert (spans[0].ctx_start, spans[0].ctx_end, spans[-1].ctx_start, spans[-1].ctx_end) == (0, 11, 10, 21)
    assert (spans[1].ramp_before, spans[1].ramp_after, spans[-1].ramp_before) == (2, 2, 7)
    spans = plan_spans(21, 8, 2, 3)  # balanced (default): as many cores, equal and smaller
    assert [(s.start, s.end) for s in spans] == [(0, 7), (5, 12), (10, 17), (14, 21)]
    assert [(s.ramp_before, s.ramp_after) for s in spans] == [(0, 2), (2, 2), (2, 3), (3, 0)]
    assert (spans[0].ctx_end, spans[-1].ctx_start) == (10, 11)
    assert [(s.start, s.end) for s in plan_spans(16, 8, 2, 3)] == [(0, 7), (5, 12), (9, 16)]
    assert len(plan_spans(16, 8, 2, 3, balanced=False)) == 3  # balancing never adds a tile
    assert [(s.start, s.end) for s in plan_spans(14, 8, 2, 3)] == [(0, 8), (6, 14)]  # already even: unchanged


def test_fixed_statistics_reproduce_the_module_and_reject_others(vae):
    latent = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        with record_group_norm_stats(vae.decoder) as stats:
            ref = vae.decode(latent)
        assert len(stats) == sum(isinstance(m, nn.GroupNorm) for m in vae.decoder.modules())
        with fixed_group_norm_stats(vae.decoder, stats):
            assert (vae.decode(latent) - ref).abs().max() < 1e-5
        other = load_vae(PARITY / "vae_small" / "vae")
        with pytest.raises(ValueError, match="another module"):
            with fixed_group_norm_stats(other.decoder, stats):
                pass
        with fixed_group_norm_stats(vae.decoder, stats), pytest.raises(ValueError, match="batch"):
            vae.decode(latent.expand(2, -1, -1, -1))
    assert _nothing_patched(vae)


def test_a_channels_last_vae_tiles_to_the_same_pixels(vae, smooth):
    """The precision policy makes the VAE NHWC on fp32 CPUs: tiles, trimming and the context keep
    their meaning (only the reduction order of the convs may differ)."""
    import copy

    image, moments, latent, decoded = smooth

    def exact_and_estimated(net):  # decode and encode with the exact context, then estimated (128 px pass)
        with torch.no_grad():
            return (tiled_decode(net, latent, 128, 32, context=decoder_context(net, latent)),
                    tiled_encode(net, image, 128, 32, context=encoder_context(net, image)),
                    tiled_decode(net, latent, 128, 32, stats_px=128), tiled_encode(net, image, 128, 32, stats_px=128))

    ref = exact_and_estimated(vae)
    got = exact_and_estimated(copy.deepcopy(vae).to(memory_format=torch.channels_last))
    for ours, want in zip(got, ref):
        assert ours.shape == want.shape and (ours - want).abs().max() < 1e-4
    assert (got[0] - decoded).abs().max() < 2e-5 and (got[1] - moments).abs().max() < 2e-5


def test_a_subpixel_decoder_tiles_to_the_same_pixels(vae, smooth):
    """``auto`` on a CPU: NHWC and the upsampling on the small grid (models/subpixel.py). It reaches the
    same pixels as the upsampled conv, so the halos, the trimming and the context keep their meaning."""
    import copy

    from addsr_core.precision import Precision, apply_layout

    _, _, latent, decoded = smooth
    net = apply_layout(copy.deepcopy(vae), Precision(torch.float32, channels_last=False, vae_channels_last=True,
                                                     vae_subpixel=True))
    with torch.no_grad():
        untiled = net.decode(latent)
        tiled = tiled_decode(net, latent, 128, 32, context=decoder_context(net, latent))
        full_halo = tiled_decode(net, latent, 128, 32, context=decoder_context(net, latent), trim=False)
    assert not torch.equal(untiled, decoded)  # the sub-pixel path ran
    assert (untiled - decoded).abs().max() < 2e-5
    assert (tiled - untiled).abs().max() < 2e-5 and (full_halo - tiled).abs().max() < 1e-5


def test_a_bf16_nhwc_vae_tiles_within_its_own_rounding(vae, smooth):
    """bf16 + NHWC, the policy's low precision: the tiles' float32 statistics (recorded by the native
    norm kernel, applied as an inference batch norm) and the flash attention over recorded keys
    stay within the error bf16 itself makes against float32 (measured: 0.94x decode, 0.26x encode;
    the bound 1.5x)."""
    import copy

    image, moments, latent, decoded = smooth
    net = copy.deepcopy(vae).to(torch.bfloat16, memory_format=torch.channels_last)
    with torch.no_grad():
        untiled = (net.decode(latent.bfloat16()).float(), net.encode_moments(image.bfloat16()).float())
        tiled = (tiled_decode(net, latent.bfloat16(), 128, 32, context=decoder_context(net, latent.bfloat16())),
                 tiled_encode(net, image.bfloat16(), 128, 32, context=encoder_context(net, image.bfloat16())))
    for got, own, fp32 in zip(tiled, untiled, (decoded, moments)):
        assert got.dtype == torch.bfloat16 and got.shape == fp32.shape
        bf16_error = (own - fp32).abs().max()
        assert (got.float() - own).abs().max() <= 1.5 * bf16_error


def test_float32_output_is_the_blend_itself_and_the_weights_sum_per_axis(vae, smooth):
    """``out_dtype=float32`` returns the tiles' float32 blend (what the VAE's dtype is rounded
    from); the blend's weights are normalised by per-axis sums, equal to the full weight plane."""
    import copy

    from addsr_core.imaging.tiled_vae.geometry import _feather_sum

    _, _, latent, _ = smooth
    low = copy.deepcopy(vae).to(torch.bfloat16)
    with torch.no_grad():
        native = tiled_decode(low, latent, 128, 32, stats_px=128)
        blend = tiled_decode(low, latent, 128, 32, stats_px=128, out_dtype=torch.float32)
        whole = tiled_decode(low, latent[..., :8, :8], 128, 32, out_dtype=torch.float32)  # one tile: untiled
    assert native.dtype == torch.bfloat16 and blend.dtype == torch.float32 and whole.dtype == torch.float32
    assert torch.equal(blend.to(torch.bfloat16), native)
    ys, xs = plan_spans(24, 16, 4, 6), plan_spans(32, 16, 4, 6)
    plane = torch.zeros(24 * 8, 32 * 8)
    for sy in ys:
        for sx in xs:
            f = lambda s: feather((s.end - s.start) * 8, s.ramp_before * 8, s.ramp_after * 8)  # noqa: E731
            plane[sy.start * 8 : sy.end * 8, sx.start * 8 : sx.end * 8] += torch.outer(f(sy), f(sx))
    separable = torch.outer(_feather_sum(ys, 8), _feather_sum(xs, 8))
    assert len(ys) > 1 and len(xs) > 1 and torch.allclose(separable, plane, atol=1e-6) and plane.min() > 0.99


@pytest.mark.parametrize("dtype, channels_last", [(torch.float32, False), (torch.bfloat16, True)])
def test_group_stats_a_group_at_a_time_equal_the_whole_map_statistics(dtype, channels_last):
    """The GPU statistics pass's per-group float32 statistics: the whole map's, a group at a time."""
    from addsr_core.imaging.tiled_vae import group_stats

    gn = torch.nn.GroupNorm(8, 32)
    x = torch.randn(2, 32, 12, 10, generator=torch.Generator().manual_seed(0)).mul(3).add(1).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    mean, var = group_stats(gn, x)
    ref_var, ref_mean = torch.var_mean(x.float().reshape(2, 8, -1), dim=-1, unbiased=False)
    assert mean.dtype == var.dtype == torch.float32 and mean.shape == (2, 8)
    torch.testing.assert_close(mean, ref_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(var, ref_var, rtol=1e-6, atol=1e-6)
