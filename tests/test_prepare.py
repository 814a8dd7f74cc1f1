"""Input normalisation and the official condition-image preparation (reference README §5)."""
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import PARITY
from addsr_core.imaging.prepare import (
    condition_sizes,
    load_image,
    official_condition_image,
    official_condition_pil,
    official_final_resize,
    output_size,
    resize_pil,
    resize_to,
    save_image,
    to_rgb_float,
)


def _rand_uint8(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def test_condition_image_reproduces_official_fixture():
    inputs = load_file(PARITY / "pipeline_small_4step" / "inputs.safetensors")
    lr = to_rgb_float(inputs["lr_image_uint8"].numpy()).rgb
    cond = official_condition_image(lr, scale=4, min_size=128)
    assert torch.equal(cond, inputs["cond_image"])  # = cond_image_uint8 / 255, bit for bit
    assert torch.equal(cond.mul(255).round().to(torch.uint8)[0].permute(1, 2, 0), inputs["cond_image_uint8"])


def test_condition_sizes_follow_test_addsr():
    assert condition_sizes((32, 32), 4, 128) == [(128, 128), (128, 128)]
    # short side below 512//4: the short side goes to 128, the other int()-truncated (426.66 -> 426)
    assert condition_sizes((30, 100), 4, 512) == [(128, 426), (512, 1704), (512, 1704)]
    assert condition_sizes((33, 45), 4, 128) == [(132, 180), (128, 176)]  # to multiples of 8
    assert condition_sizes((600, 800)) == [(2400, 3200), (2400, 3200)]
    with pytest.raises(ValueError, match="empty"):
        condition_sizes((0, 10))
    with pytest.raises(ValueError, match="smaller than 8"):
        condition_sizes((1, 1), 4, 4)


def test_pil_chain_equals_test_addsr_steps():
    lr = Image.fromarray(_rand_uint8(30, 47, seed=1))
    # test_addsr.py's own steps, written out
    s = (512 // 4) / min(47, 30)
    expected = lr.resize((int(s * 47), int(s * 30)))
    expected = expected.resize((expected.size[0] * 4, expected.size[1] * 4))
    expected = expected.resize((expected.size[0] // 8 * 8, expected.size[1] // 8 * 8))
    ours = official_condition_pil(lr, 4, 512)
    assert ours.size == expected.size == (800, 512)
    assert np.array_equal(np.asarray(ours), np.asarray(expected))
    as_tensor = official_condition_image(to_rgb_float(lr).rgb, 4, 512)
    assert torch.equal(as_tensor.mul(255).round().to(torch.uint8)[0].permute(1, 2, 0), torch.from_numpy(np.array(expected)))


def test_torch_path_is_close_to_pil():
    lr = to_rgb_float(_rand_uint8(33, 45, seed=2)).rgb
    pil = official_condition_image(lr, 4, 128)
    fast = official_condition_image(lr, 4, 128, method="torch")
    assert fast.shape == pil.shape == (1, 3, 128, 176)
    diff = (fast - pil).abs()
    # Rounding between PIL's passes plus PIL's 2-step chain: small on average, a few levels at worst.
    assert diff.mean() < 2 / 255 and diff.max() < 24 / 255
    with pytest.raises(ValueError, match="method"):
        official_condition_image(lr, method="lanczos")


def test_resize_to_matches_pil_float_resize():
    arr = np.random.default_rng(3).random((21, 34), dtype=np.float32)
    for size in [(50, 80), (9, 13)]:  # up and down
        pil = np.asarray(Image.fromarray(arr, "F").resize(size[::-1], Image.BICUBIC))
        ours = resize_to(torch.from_numpy(arr)[None, None], size)[0, 0].numpy()
        assert np.abs(ours - pil).max() < 1e-5
    x = torch.rand(1, 3, 8, 8)
    assert resize_to(x, (8, 8)) is x
    assert resize_to(x.double(), (4, 4)).dtype == torch.float64


def test_final_resize_to_lr_times_scale():
    assert output_size((33, 45), 4) == (132, 180)
    out = torch.rand(2, 3, 128, 176)
    assert official_final_resize(out, (33, 45), 4).shape == (2, 3, 132, 180)
    pil = official_final_resize(out, (33, 45), 4, method="pil", rounding="truncate")
    trunc = Image.fromarray(out[1].mul(255).to(torch.uint8).permute(1, 2, 0).numpy()).resize((180, 132))
    assert torch.equal(pil[1].mul(255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(np.array(trunc)))
    assert resize_pil(out, (4, 4)).shape == (2, 3, 4, 4)


@pytest.mark.parametrize(
    "data,bits",
    [
        (np.array([[0, 128], [255, 7]], dtype=np.uint8), 8),
        (np.array([[0, 32896], [65535, 1799]], dtype=np.uint16), 16),
        (np.array([[0.0, 128 / 255], [1.0, 7 / 255]], dtype=np.float64), 32),
    ],
)
def test_grayscale_depths_become_rgb_float(data, bits):
    img = to_rgb_float(data)
    assert img.rgb.dtype == torch.float32 and img.rgb.shape == (1, 3, 2, 2) and img.alpha is None
    assert img.source_bits == bits
    expected = torch.tensor([[0.0, 128 / 255], [1.0, 7 / 255]])
    assert torch.allclose(img.rgb[0, 1], expected, atol=1e-6)
    assert torch.equal(img.rgb[0, 0], img.rgb[0, 2])


def test_pil_modes():
    rgba = Image.fromarray(_rand_uint8(6, 5, 4, seed=4), "RGBA")
    img = to_rgb_float(rgba)
    assert img.rgb.shape == (1, 3, 6, 5) and img.alpha.shape == (1, 1, 6, 5)
    assert torch.equal(img.alpha[0, 0], torch.from_numpy(np.array(rgba)[..., 3]).float() / 255)
    assert to_rgb_float(rgba.convert("LA")).alpha is not None
    palette = rgba.convert("RGB").convert("P")
    assert to_rgb_float(palette).alpha is None and to_rgb_float(palette).rgb.shape == (1, 3, 6, 5)
    i16 = Image.fromarray(np.array([[0, 65535]], dtype=np.uint16))
    assert i16.mode.startswith("I")
    got = to_rgb_float(i16)
    assert got.source_bits == 16 and got.rgb[0, :, 0, 1].tolist() == [1.0, 1.0, 1.0]
    assert to_rgb_float(rgba.convert("CMYK")).rgb.shape == (1, 3, 6, 5)


def test_tensor_layouts_and_clamping():
    chw = torch.rand(3, 4, 5)
    assert torch.equal(to_rgb_float(chw).rgb[0], chw)
    bhwc = torch.rand(2, 4, 5, 4)  # ComfyUI layout with alpha
    img = to_rgb_float(bhwc, channels_last=True)
    assert img.rgb.shape == (2, 3, 4, 5) and torch.equal(img.alpha[:, 0], bhwc[..., 3])
    clamped = to_rgb_float(torch.tensor([[-0.5, 1.5]])).rgb
    assert clamped[0, :, 0].tolist() == [[0.0, 1.0]] * 3
    assert to_rgb_float(torch.full((3, 2, 2), 255, dtype=torch.uint8)).rgb.min() == 1.0


def test_clear_errors():
    with pytest.raises(ValueError, match="empty"):
        to_rgb_float(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        to_rgb_float(torch.zeros(1, 3, 0, 4))
    with pytest.raises(ValueError, match="5 channels"):
        to_rgb_float(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        to_rgb_float(torch.tensor([[0.5, float("nan")]]))
    with pytest.raises(ValueError, match="16-bit"):
        to_rgb_float(np.array([[0, 70000]], dtype=np.int32))
    with pytest.raises(ValueError, match="unsupported image type"):
        to_rgb_float([[0, 1]])
    with pytest.raises(ValueError, match="NaN"):
        official_condition_image(torch.full((1, 3, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="positive"):
        resize_to(torch.rand(1, 3, 4, 4), (0, 4))


def test_alpha_upscaled_separately_and_reattached(tmp_path):
    rgba = _rand_uint8(10, 12, 4, seed=5)
    rgba[..., 3] = np.where(np.arange(12) < 6, 255, 0)[None, :].astype(np.uint8)  # hard left/right split
    path = tmp_path / "in.png"
    Image.fromarray(rgba, "RGBA").save(path)
    loaded = load_image(path)
    assert loaded.alpha is not None and loaded.size == (10, 12)
    up = loaded.upscaled_alpha((40, 48))
    assert up.shape == (1, 1, 40, 48) and up.min() >= 0 and up.max() <= 1
    assert up[0, 0, :, :20].min() > 1 - 1e-6 and up[0, 0, :, 28:].max() < 1e-6
    sr = torch.rand(1, 3, 40, 48)
    assert loaded.reattach_alpha(sr).shape == (1, 4, 40, 48)
    out = tmp_path / "out.png"
    save_image(sr, out, alpha=up)
    back = load_image(out)
    assert torch.allclose(back.rgb, sr, atol=0.5 / 255 + 1e-6)
    assert torch.allclose(back.alpha, up, atol=0.5 / 255 + 1e-6)
    with pytest.raises(ValueError, match="cannot read"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="one image"):
        save_image(torch.rand(2, 3, 4, 4), out)


def test_uint8_conversion_in_strips_gives_the_same_bits(monkeypatch, tmp_path):
    """to_uint8_round converts a few rows at a time (bounded float temporaries): the same bytes
    as the whole conversion, for a batch, one image, and a saved RGBA PNG."""
    from PIL import Image

    from addsr_core.imaging import prepare

    monkeypatch.setattr(prepare, "UINT8_STRIP_PIXELS", 7 * 13)  # 7 rows of 13 px per strip, uneven
    g = torch.Generator().manual_seed(5)
    images = torch.rand(2, 3, 30, 13, generator=g) * 1.2 - 0.1
    whole = images.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1)
    assert torch.equal(prepare.to_uint8_round(images), whole)
    assert torch.equal(prepare.to_uint8_round(images[0]), whole[0])
    alpha = torch.rand(1, 1, 30, 13, generator=g)
    prepare.save_image(images[:1], tmp_path / "out.png", alpha=alpha)
    saved = np.asarray(Image.open(tmp_path / "out.png"))
    assert saved.shape == (30, 13, 4)
    assert np.array_equal(saved[..., :3], whole[0].numpy())
    assert np.array_equal(saved[..., 3], alpha[0, 0].mul(255).round().to(torch.uint8).numpy())
