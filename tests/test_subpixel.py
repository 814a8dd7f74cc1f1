"""The sub-pixel upsampling conv (addsr_core.models.subpixel): the same function as nearest 2x + 3x3 conv."""

import pytest
import torch
import torch.nn.functional as F

from addsr_core.models.layers import Upsample2D
from addsr_core.models.subpixel import phase_weights, upsample_conv


def _reference(x, weight, bias):
    return F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight, bias, padding=1)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("with_bias", [True, False])
def test_on_small_integers_it_is_exactly_the_upsampled_conv(fmt, with_bias):
    """Small integers make every sum exact in fp32, so any other answer is a wrong tap or phase."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-4, 5, (2, 5, 7, 9), generator=g).float().contiguous(memory_format=fmt)
    weight = torch.randint(-3, 4, (6, 5, 3, 3), generator=g).float()
    bias = torch.randint(-3, 4, (6,), generator=g).float() if with_bias else None
    out = upsample_conv(x, weight, bias)
    assert torch.equal(out, _reference(x, weight, bias))
    assert out.shape == (2, 6, 14, 18)
    assert out.is_contiguous(memory_format=fmt)


def test_on_random_floats_it_differs_only_by_rounding():
    g = torch.Generator().manual_seed(1)
    x, weight, bias = torch.randn(1, 16, 12, 10, generator=g), torch.randn(8, 16, 3, 3, generator=g), torch.randn(8, generator=g)
    reference = _reference(x, weight, bias)
    rel = float((upsample_conv(x, weight, bias) - reference).norm() / reference.norm())
    assert 0 < rel < 1e-6


def test_the_phase_kernels_hold_the_taps_each_phase_reaches():
    weight = torch.arange(9.0).reshape(1, 1, 3, 3)  # taps 0..8, row by row
    kernels = phase_weights(weight)[:, 0]
    # phase (0, 0): rows (0, 1+2) x columns (0, 1+2)
    assert kernels[0].tolist() == [[0, 1 + 2], [3 + 6, 4 + 5 + 7 + 8]]
    # phase (1, 1): rows (0+1, 2) x columns (0+1, 2)
    assert kernels[3].tolist() == [[0 + 1 + 3 + 4, 2 + 5], [6 + 7, 8]]
    assert kernels.shape == (4, 2, 2)


def test_bf16_taps_are_summed_in_fp32_and_rounded_once():
    weight = torch.zeros(1, 1, 3, 3)
    weight[0, 0, :2, :2] = torch.tensor([[1.0, 2 ** -8], [2 ** -8, 2 ** -8]])  # each exact in bf16
    tap = phase_weights(weight.to(torch.bfloat16))[3, 0, 0, 0]  # phase (1, 1) sums the four
    # 1 + 3 * 2^-8 rounded once to bf16 (steps of 2^-7 there); adding in bf16 would round 1 + 2^-8 back to 1
    assert tap.dtype == torch.bfloat16 and tap.item() == 1 + 2 ** -6


def test_the_layer_takes_the_path_only_when_asked_and_with_plain_convs():
    torch.manual_seed(0)
    layer = Upsample2D(4).eval()
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        reference = layer(x)
        layer.subpixel = True
        faster = layer(x)
        assert not torch.equal(faster, reference) and torch.allclose(faster, reference, atol=1e-5)
        assert torch.equal(layer(x, size=(12, 12)), reference)  # a target size (the UNet's odd skips): as before

        class HostConv(torch.nn.Conv2d):  # a host's layer class (ComfyUI's casts its weight per call)
            pass

        hosted = Upsample2D(4, operations=type("ops", (), {"Conv2d": HostConv}))
        hosted.load_state_dict(layer.state_dict())
        hosted.subpixel = True
        assert torch.equal(hosted(x), reference)
