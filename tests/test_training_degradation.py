"""Real-ESRGAN degradation: kernels, JPEG, USM, noise and the full two-stage pipeline."""
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data as skdata

from addsr_core.training import degradation as D
from addsr_core.training import kernels as K
from addsr_core.training.config import DEGRADATION_PRESETS, DegradationConfig, config_from_dict
from addsr_core.training.jpeg import jpeg_roundtrip, quality_to_factor


@pytest.fixture(scope="module")
def astronaut():
    return torch.from_numpy(skdata.astronaut()).permute(2, 0, 1).float() / 255  # [3,512,512]


def _rngs(seed):
    return np.random.default_rng(seed), torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ kernels
def test_sinc_kernel_matches_scipy_bessel_formula():
    special = pytest.importorskip("scipy.special")
    cutoff, size = 1.3, 13
    ours = K.circular_lowpass_kernel(cutoff, size, pad_to=21)
    c = (size - 1) / 2
    x, y = np.meshgrid(np.arange(size) - c, np.arange(size) - c, indexing="ij")
    r = np.sqrt(x**2 + y**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = cutoff * special.j1(cutoff * r) / (2 * np.pi * r)
    ref[6, 6] = cutoff**2 / (4 * np.pi)
    ref = np.pad(ref / ref.sum(), 4)
    assert ours.shape == (21, 21)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    x = np.linspace(0, 45, 20001)  # cutoff <= pi, radius <= 10*sqrt(2)
    np.testing.assert_allclose(K.bessel_j1(x), special.j1(x), rtol=0, atol=2e-12)


def test_gaussian_and_plateau_kernels_follow_formulas():
    k = K.gaussian_kernel(7, 1.5)
    ax = np.arange(-3, 4.0)
    ref = np.exp(-(ax[None] ** 2 + ax[:, None] ** 2) / (2 * 1.5**2))
    np.testing.assert_allclose(k, ref / ref.sum(), atol=1e-15)
    # rotating an anisotropic kernel by 90 degrees swaps its axes
    a = K.gaussian_kernel(9, 2.0, 0.7, 0.0, isotropic=False)
    b = K.gaussian_kernel(9, 0.7, 2.0, math.pi / 2, isotropic=False)
    np.testing.assert_allclose(a, b, atol=1e-12)
    p = K.plateau_kernel(9, 1.2, 1.2, 0.0, 1.5)
    ax9 = np.arange(-4, 5.0)
    r2 = (ax9[None] ** 2 + ax9[:, None] ** 2) / 1.2**2
    q = 1 / (r2**1.5 + 1)
    np.testing.assert_allclose(p, q / q.sum(), atol=1e-15)


def test_random_kernels_are_normalised_21x21_and_seeded():
    cfg = DegradationConfig()
    for seed in range(12):
        k1 = K.random_blur_kernel(np.random.default_rng(seed), cfg, 1)
        k2 = K.random_blur_kernel(np.random.default_rng(seed), cfg, 1)
        assert k1.shape == (21, 21) and torch.equal(k1, k2)
        assert abs(float(k1.sum()) - 1) < 1e-5
    sinc = [K.random_final_sinc_kernel(np.random.default_rng(s), cfg) for s in range(30)]
    pulses = sum(int(k[10, 10] == 1 and k.sum() == 1) for k in sinc)
    assert 0 < pulses < 30  # final_sinc_prob 0.8: some pulses, mostly sinc


# ------------------------------------------------------------------------------------------------ jpeg
def test_quality_to_factor_is_libjpeg_scaling():
    q = torch.tensor([10.0, 49.0, 50.0, 75.0, 95.0])
    expected = torch.tensor([5.0, 5000 / 49 / 100, 1.0, 0.5, 0.1])
    assert torch.allclose(quality_to_factor(q), expected, rtol=1e-6)


def test_jpeg_roundtrip_is_jpeg_like(astronaut):
    x = astronaut[:, :200, :184][None]  # odd size: exercises the pad-to-16 path
    ref_u8 = (x[0].permute(1, 2, 0) * 255).round().byte().numpy()
    psnr = lambda a, b: 10 * math.log10(1 / float(((a - b) ** 2).mean()))  # noqa: E731
    last = 0.0
    for q in (30, 60, 95):
        ours = jpeg_roundtrip(x, q)
        assert ours.shape == x.shape and 0 <= float(ours.min()) and float(ours.max()) <= 1
        buf = io.BytesIO()
        Image.fromarray(ref_u8).save(buf, "JPEG", quality=q, subsampling=2)
        pil = torch.from_numpy(np.array(Image.open(buf))).permute(2, 0, 1)[None].float() / 255
        assert psnr(ours, pil) > 35  # same codec family as libjpeg at the same quality
        assert psnr(ours, x) > last  # higher quality, closer to the input
        last = psnr(ours, x)
    batch = jpeg_roundtrip(torch.cat([x, x]), torch.tensor([30.0, 95.0]))
    assert torch.equal(batch[0], jpeg_roundtrip(x, 30)[0]) and torch.equal(batch[1], jpeg_roundtrip(x, 95)[0])


# ------------------------------------------------------------------------------------------------ filters, USM, noise
def test_filter2d_pulse_is_identity_and_matches_conv(astronaut):
    x = astronaut[None, :, :64, :64]
    pulse = torch.zeros(21, 21)
    pulse[10, 10] = 1
    assert torch.equal(D.filter2d(x, pulse), x)
    k = K.random_blur_kernel(np.random.default_rng(3), DegradationConfig(), 1)
    ref = F.conv2d(F.pad(x, (10,) * 4, mode="reflect").reshape(3, 1, 84, 84), k.view(1, 1, 21, 21)).view(1, 3, 64, 64)
    assert torch.allclose(D.filter2d(x, k), ref, atol=1e-6)
    with pytest.raises(ValueError, match="too small"):
        D.filter2d(x[..., :8, :8], k)


def test_usm_sharpen_equals_2d_reference(astronaut):
    x = astronaut[None, :, 100:196, 200:296]
    g = D._gaussian_1d(51)
    assert abs(float(g.sum()) - 1) < 1e-12
    # cv2.getGaussianKernel(51, 0): sigma = 0.3 * ((51 - 1) / 2 - 1) + 0.8 = 8
    i = torch.arange(51, dtype=torch.float64) - 25
    assert torch.allclose(g, torch.exp(-(i**2) / 128) / torch.exp(-(i**2) / 128).sum())
    k2 = torch.outer(g, g).float()

    def blur(t):
        return F.conv2d(F.pad(t, (25,) * 4, mode="reflect").reshape(3, 1, 146, 146), k2.view(1, 1, 51, 51)).view(1, 3, 96, 96)

    res = x - blur(x)
    soft = blur((res.abs() * 255 > 10).float())
    ref = soft * (x + 0.5 * res).clamp(0, 1) + (1 - soft) * x
    assert torch.allclose(D.usm_sharpen(x), ref, atol=2e-6)


def test_noise_is_seeded_and_gray_noise_shares_channels(astronaut):
    x = astronaut[None, :, :32, :32]
    a = D.gaussian_noise(x, 10.0, False, torch.Generator().manual_seed(1))
    b = D.gaussian_noise(x, 10.0, False, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and abs(float(a.std()) - 10 / 255) < 3e-3
    gray = D.gaussian_noise(x, 10.0, True, torch.Generator().manual_seed(1))
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    p = D.poisson_noise(x, 1.0, True, torch.Generator().manual_seed(2))
    assert torch.equal(p[:, 0], p[:, 2]) and float(p.abs().max()) > 0


# ------------------------------------------------------------------------------------------------ pipeline
def test_degrade_full_size_shapes_ranges_and_8bit(astronaut):
    cfg = DegradationConfig()
    gt, lr = D.degrade(astronaut, cfg, *_rngs(0))
    assert gt.shape == (3, 512, 512) and lr.shape == (3, 128, 128)
    for t in (gt, lr):
        assert t.dtype == torch.float32 and 0 <= float(t.min()) and float(t.max()) <= 1
        assert torch.equal(t, (t * 255).round() / 255)  # 8-bit values, like the official PNG pairs
    # the GT is USM-sharpened (official make_paired_data): different from the input, same structure
    assert not torch.equal(gt, (astronaut * 255).round() / 255)
    assert float((gt - astronaut).abs().mean()) < 0.05
    # the LR still looks like the downscaled image
    small = F.interpolate(astronaut[None], size=(128, 128), mode="area")[0]
    assert float((lr - small).abs().mean()) < 0.15


def test_degrade_is_deterministic_per_seed_and_varies_across_seeds(astronaut):
    x = astronaut[:, 128:256, 192:320]  # 128 crop: fast, still exercises every stage
    cfg = DegradationConfig()
    outs = [D.degrade(x, cfg, *_rngs(s))[1] for s in (5, 5, 6)]
    assert outs[0].shape == (3, 32, 32)
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])


def test_degrade_without_usm_or_quantisation_and_preset(astronaut):
    x = astronaut[:, :128, :128]
    cfg = config_from_dict({"data": {"degradation": {"preset": "realesrgan_yml", "quantize_uint8": False}}}).data.degradation
    assert cfg.usm_sharpen_gt is False and cfg.noise_range == DEGRADATION_PRESETS["realesrgan_yml"]["noise_range"]
    gt, lr = D.degrade(x[None], cfg, *_rngs(1))
    assert torch.equal(gt, x[None])  # no sharpening, no quantisation: the target is the input
    assert lr.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="divisible"):
        D.degrade(x[:, :126], cfg, *_rngs(1))


def test_upsample_condition_is_clamped_bicubic():
    lr = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    up = D.upsample_condition(lr, (64, 64))
    ref = F.interpolate(lr[None], size=(64, 64), mode="bicubic")[0]
    assert up.shape == (3, 64, 64)
    assert torch.equal(up, torch.clamp((ref * 255).round(), 0, 255) / 255)
