"""Colour fix against the official outputs (reference README §7)."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import PARITY, assert_matches
from addsr_core.imaging.colorfix import (
    adain_color_fix,
    apply_color_fix,
    color_fix_uint8,
    tensor_to_uint8_truncate,
    uint8_hwc_to_tensor,
    wavelet_color_fix,
    wavelet_decomposition,
)


@pytest.fixture(scope="module")
def case():
    return load_file(PARITY / "colorfix" / "inputs.safetensors"), load_file(PARITY / "colorfix" / "expected.safetensors")


def test_to_tensor_matches_stored_float_inputs(case):
    inputs, _ = case
    for name in ("target", "source", "source_small"):
        assert torch.equal(uint8_hwc_to_tensor(inputs[f"{name}_uint8"].numpy()), inputs[name])


def test_adain_float(case):
    inputs, expected = case
    assert_matches(adain_color_fix(inputs["target"], inputs["source"]), expected["adain_float"], name="adain_float")


def test_adain_with_smaller_reference(case):
    inputs, expected = case
    out = adain_color_fix(inputs["target"], inputs["source_small"])
    assert_matches(out, expected["adain_mismatch_float"], name="adain_mismatch_float")
    ours = color_fix_uint8(inputs["target_uint8"].numpy(), inputs["source_small_uint8"].numpy(), "adain")
    assert np.array_equal(ours, expected["adain_mismatch_uint8"].numpy())


def test_wavelet_bands_and_float(case):
    inputs, expected = case
    high, low = wavelet_decomposition(inputs["target"])
    assert_matches(high, expected["wavelet_target_high"], name="wavelet_target_high")
    assert_matches(low, expected["wavelet_target_low"], name="wavelet_target_low")
    assert_matches(wavelet_color_fix(inputs["target"], inputs["source"]), expected["wavelet_float"], name="wavelet_float")


@pytest.mark.parametrize("method", ["adain", "wavelet"])
def test_uint8_outputs_exact(case, method):
    inputs, expected = case
    ours = color_fix_uint8(inputs["target_uint8"].numpy(), inputs["source_uint8"].numpy(), method)
    assert ours.dtype == np.uint8 and ours.shape == (48, 64, 3)
    assert np.array_equal(ours, expected[f"{method}_uint8"].numpy())


def test_uint8_conversion_truncates_and_clamps():
    x = torch.tensor([-0.5, 0.0, 0.999 / 255, 1.999 / 255, 0.5, 1.0, 2.0]).view(1, 1, 1, 7)
    assert tensor_to_uint8_truncate(x).flatten().tolist() == [0, 0, 0, 1, 127, 255, 255]


def test_wavelet_with_other_size_reference():
    """Our extension: a reference of another size stands in for its upscaled version."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 64), indexing="ij")
    smooth = torch.stack([0.2 + 0.6 * xx, 0.5 + 0.3 * torch.sin(3 * yy), 0.3 + 0.4 * xx * yy])[None]
    small = torch.nn.functional.interpolate(smooth, size=(12, 16), mode="bilinear", antialias=True)
    target = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    exact = wavelet_color_fix(target, smooth)
    approx = wavelet_color_fix(target, small)
    assert approx.shape == target.shape
    assert (approx - exact).abs().max() < 0.02
    # The detail is the target's: the result minus the upscaled reference's low band is the target's high band.
    upscaled = torch.nn.functional.interpolate(small, size=(48, 64), mode="bicubic", antialias=True)
    high, _ = wavelet_decomposition(target)
    assert torch.allclose(approx - wavelet_decomposition(upscaled)[1], high, atol=1e-6)


def test_batch_broadcast_and_dtype():
    g = torch.Generator().manual_seed(0)
    target, source = torch.rand(3, 3, 20, 24, generator=g), torch.rand(1, 3, 10, 12, generator=g)
    out = adain_color_fix(target.half(), source)
    assert out.dtype == torch.float16 and out.shape == target.shape
    for i in range(3):
        assert torch.allclose(adain_color_fix(target[i : i + 1], source), out[i : i + 1].float(), atol=2e-3)
    assert wavelet_color_fix(target, source).shape == target.shape


def test_bad_inputs_raise_clear_errors():
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="channels"):
        adain_color_fix(x, torch.rand(1, 4, 8, 8))
    with pytest.raises(ValueError, match="batch"):
        adain_color_fix(x, torch.rand(3, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\[B,C,H,W\]"):
        wavelet_color_fix(x[0], x)
    with pytest.raises(ValueError, match="unknown colour fix"):
        apply_color_fix("histogram", x, x)
    assert apply_color_fix("none", x, x) is x


def test_adain_in_place_arithmetic_is_the_official_expression():
    """The in-place AdaIN (one full-size temporary) gives the official expression's values exactly."""
    from addsr_core.imaging.colorfix import channel_mean_std

    g = torch.Generator().manual_seed(5)
    target, source = torch.rand(2, 3, 37, 53, generator=g), torch.rand(1, 3, 20, 30, generator=g)
    t_mean, t_std = channel_mean_std(target)
    s_mean, s_std = channel_mean_std(source)
    official = (target - t_mean) / t_std * s_std + s_mean
    assert torch.equal(adain_color_fix(target, source), official)


def test_adain_in_place_gives_the_same_bits_and_finish_leaves_the_caller_tensor():
    """``in_place`` (the pipeline's own decode): adain written into the target, the same bits;
    without it the caller's tensor is never touched."""
    from addsr_core.imaging.colorfix import adain_color_fix, apply_color_fix
    from addsr_core.stages import FinishOptions, LRCondition, finish

    g = torch.Generator().manual_seed(2)
    target, source = torch.rand(2, 3, 32, 40, generator=g) * 1.1, torch.rand(1, 3, 32, 40, generator=g)
    expected = adain_color_fix(target, source.expand_as(target))
    copy = target.clone()
    assert apply_color_fix("adain", copy, source.expand_as(copy), in_place=True) is copy
    assert torch.equal(copy, expected)
    cond = LRCondition(source, torch.zeros(1, 145, 512), torch.zeros(1, 8, 4, 5), (8, 10), 4)
    for fix in ("adain", "wavelet", "none"):
        before = target.clone()
        kept = finish(target, cond, FinishOptions(fix))
        assert torch.equal(target, before), fix
        assert torch.equal(finish(target.clone(), cond, FinishOptions(fix), in_place=True), kept), fix
