"""The precision policy (addsr_core.precision) and the low-precision path it picks."""

import pytest
import torch

from addsr_core import precision
from addsr_core.cli_upscale import resolve_dtype
from addsr_core.pipeline import AddSROptions, upscale
from addsr_core.stages import DEFAULT_VAE_TILE_PX, vae_decode, vae_encode
from addsr_core.precision import Precision, apply_precision, auto_precision, resolve_precision
from addsr_core.addsr.tiny import write_tiny_kit
from addsr_core.selfcheck import load_tiny_models

# bf16+channels_last vs fp32 on the [0,1] output. Measured: on the tiny kit below (2x of a 32x24 LR,
# 4 steps) max |diff| 0.014, 51.6 dB; on the full-size networks (bench/bench_precision_accuracy.py,
# 4x of a 128 px photo, 4 steps) 0.014, 52.2 dB. The bounds leave about 3x margin on each.
BF16_MAX_ABS = 0.05
BF16_MIN_PSNR_DB = 45.0
# Each network's own relative error in bf16, fp32 inputs. Full-size (bench/bench_precision_accuracy.py):
# VAE encode 0.17 %, RAM tokens 0.41 %, ControlNet residuals 0.65 %, UNet eps 0.41 %, VAE decode 0.40 %.
# The tiny kit's networks, with larger weights and noise inputs, measured 1.4, 1.0, 1.2, 1.6 and 2.4 %:
# the bounds are 3x those.
VAE_TILE = (DEFAULT_VAE_TILE_PX, 32)  # (tile, overlap): the test images fit in one tile
BF16_STAGE_REL = {"vae_encode": 0.04, "ram": 0.03, "controlnet": 0.036, "unet": 0.048, "vae_decode": 0.072}


@pytest.fixture
def cpu_with(monkeypatch):
    def set_flags(*flags, mkldnn_bf16=True):
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: mkldnn_bf16, raising=False)
    return set_flags


@pytest.mark.parametrize("flag", ["amx_bf16", "avx512_bf16"])
def test_auto_is_bf16_channels_last_on_cpus_with_native_bf16(cpu_with, flag):
    cpu_with("avx2", flag)
    assert auto_precision(torch.device("cpu")) == Precision(torch.bfloat16, channels_last=True)  # no sub-pixel: slower in bf16


def test_auto_is_fp32_where_bf16_would_be_emulated(cpu_with):
    cpu_with("avx", "avx2", "fma")  # e.g. an AVX2-only AMD EPYC: bf16 matmuls ~180x slower than fp32
    # fp32, with only the VAE NHWC (faster and lighter there in fp32 too: measured, docs/performance.md)
    # and the decoder's upsampling sub-pixel (4/9 of its work, rounding-level difference)
    assert auto_precision(torch.device("cpu")) == Precision(torch.float32, channels_last=False, vae_channels_last=True,
                                                            vae_subpixel=True)
    assert auto_precision(torch.device("cpu")).name == "fp32+vae_channels_last+vae_subpixel"
    cpu_with("avx512_bf16", mkldnn_bf16=False)  # the flag alone is not enough: oneDNN must use it
    assert auto_precision(torch.device("cpu")).dtype == torch.float32


def test_other_devices_stay_fp32():
    assert auto_precision(torch.device("meta")) == Precision(torch.float32, channels_last=False)


def test_explicit_choices_and_errors():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == Precision(torch.float32, channels_last=False)
    assert resolve_precision("bf16", cpu) == Precision(torch.bfloat16, channels_last=True)
    assert resolve_precision("fp16", cpu).name == "fp16+channels_last"
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        resolve_precision("int8", cpu)


def test_the_cli_follows_the_policy(cpu_with):
    cpu_with("amx_bf16")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16
    cpu_with("avx2")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16


def test_apply_precision_casts_and_makes_convs_nhwc():
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3), torch.nn.GroupNorm(2, 8), torch.nn.Linear(6, 6))
    apply_precision(net, Precision(torch.bfloat16, channels_last=True))
    assert all(p.dtype == torch.bfloat16 for p in net.parameters())
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not net[0].weight.is_contiguous()
    apply_precision(net, Precision(torch.float32, channels_last=False))
    assert net[0].weight.dtype == torch.float32


def test_vae_channels_last_makes_only_the_vae_nhwc(tiny_kit):
    models = load_tiny_models(tiny_kit)
    prec = Precision(torch.float32, channels_last=False, vae_channels_last=True)
    for network in (models.unet, models.controlnet, models.vae):
        apply_precision(network, prec)
    assert models.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not models.vae.decoder.conv_in.weight.is_contiguous()
    assert models.unet.conv_in.weight.is_contiguous() and models.controlnet.conv_in.weight.is_contiguous()


def _layouts(*tensors):
    return ["nhwc" if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous() else "nchw"
            for t in tensors]


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_networks_run_in_their_weights_layout_whatever_their_inputs_layout(tiny_kit, channels_last):
    """An NHWC latent (a channels_last VAE's encode) into an NCHW UNet would make every conv reorder its
    weight at every call: the networks take their inputs in their own layout, so the outputs are the same
    bits in the weights' layout either way."""
    from addsr_core.stablesr.tiny import tiny_stablesr

    models = load_tiny_models(tiny_kit)
    stablesr = tiny_stablesr()
    for network in (models.unet, models.controlnet, stablesr):
        apply_precision(network, Precision(torch.float32, channels_last=channels_last))
    g = torch.Generator().manual_seed(5)
    z, image = torch.randn(1, 4, 8, 8, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    sr_z, sr_context = torch.randn(1, 4, 32, 32, generator=g), torch.randn(1, 77, 16, generator=g)
    embeds = torch.randn(1, 77, models.unet.config.cross_attention_dim, generator=g)
    tokens = models.ram.represent(image)
    t = torch.tensor([999])
    expected = "nhwc" if channels_last else "nchw"
    outputs = []
    with torch.no_grad():
        for fmt in (torch.contiguous_format, torch.channels_last):
            zf, imagef = z.contiguous(memory_format=fmt), image.contiguous(memory_format=fmt)
            down, mid, _, _ = models.controlnet(zf, t, embeds, imagef, 1.0, image_encoder_hidden_states=tokens)
            eps = models.unet(zf, t, embeds, tokens, down, mid)
            sr_zf = sr_z.contiguous(memory_format=fmt)
            sr_eps = stablesr(sr_zf, t, sr_zf, sr_context)
            assert _layouts(*down, mid, eps, sr_eps) == [expected] * (len(down) + 3)
            outputs.append([*down, mid, eps, sr_eps])
    assert all(torch.equal(a, b) for a, b in zip(*outputs))


@pytest.fixture(scope="module")
def tiny_kit(tmp_path_factory):
    return write_tiny_kit(tmp_path_factory.mktemp("precision"))


def _upscale(paths, prec: Precision) -> torch.Tensor:
    models = load_tiny_models(paths, dtype=prec.dtype)
    for network in (models.unet, models.controlnet, models.vae, models.ram):
        apply_precision(network, prec)
    lr = torch.rand(1, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return upscale(models, lr, AddSROptions(scale=2, min_size=64, use_tags=False))


def test_bf16_channels_last_pipeline_stays_close_to_fp32(tiny_kit):
    reference = _upscale(tiny_kit, Precision(torch.float32, channels_last=False))
    low = _upscale(tiny_kit, Precision(torch.bfloat16, channels_last=True))
    assert low.dtype == torch.float32 and low.shape == reference.shape  # colour fix and output in fp32
    assert (low - reference).abs().max() <= BF16_MAX_ABS
    psnr = 10 * torch.log10(1 / ((low - reference) ** 2).mean())
    assert psnr >= BF16_MIN_PSNR_DB
    assert not torch.equal(low, reference)  # the low-precision path really ran


def test_channels_last_alone_changes_nothing_beyond_reduction_order(tiny_kit):
    reference = _upscale(tiny_kit, Precision(torch.float32, channels_last=False))
    nhwc = _upscale(tiny_kit, Precision(torch.float32, channels_last=True))
    assert (nhwc - reference).abs().max() <= 1e-5
    vae_nhwc = _upscale(tiny_kit, Precision(torch.float32, channels_last=False, vae_channels_last=True))
    assert (vae_nhwc - reference).abs().max() <= 1e-5 and vae_nhwc.is_contiguous()


def test_the_vae_subpixel_option_changes_nothing_beyond_rounding(tiny_kit):
    reference = _upscale(tiny_kit, Precision(torch.float32, channels_last=False))
    auto_fp32 = _upscale(tiny_kit, Precision(torch.float32, channels_last=False, vae_channels_last=True, vae_subpixel=True))
    assert not torch.equal(auto_fp32, reference)  # the sub-pixel decode really ran
    assert (auto_fp32 - reference).abs().max() <= 1e-5


def test_only_the_vae_upsamples_subpixel(tiny_kit):
    from addsr_core.models.layers import Upsample2D

    models = load_tiny_models(tiny_kit)
    for network in (models.unet, models.vae):
        apply_precision(network, Precision(torch.float32, channels_last=False, vae_subpixel=True))
    flags = lambda net: {m.subpixel for m in net.modules() if isinstance(m, Upsample2D)}  # noqa: E731
    assert flags(models.vae) == {True} and flags(models.unet) == {False}
    apply_precision(models.vae, resolve_precision("fp32", torch.device("cpu")))  # an explicit fp32: the reference path
    assert flags(models.vae) == {False}


def _relative(low: torch.Tensor, ref: torch.Tensor) -> float:
    return float((low.float() - ref.float()).norm() / ref.float().norm())


def test_each_network_in_bf16_stays_within_its_measured_error(tiny_kit):
    """Every network, as the pipeline calls it (the VAE through its tiled path, one tile here), gets
    the same fp32 inputs in both precisions: each error is its own."""
    ref, low = load_tiny_models(tiny_kit), load_tiny_models(tiny_kit, dtype=torch.bfloat16)
    bf16 = Precision(torch.bfloat16, channels_last=True)
    for network in (low.unet, low.controlnet, low.vae, low.ram):
        apply_precision(network, bf16)
    g = torch.Generator().manual_seed(3)
    image = torch.rand(1, 3, 64, 64, generator=g)
    z = torch.randn(1, 4, 8, 8, generator=g)
    embeds = torch.randn(1, 77, ref.unet.config.cross_attention_dim, generator=g)
    t = torch.tensor([999])
    errors = {}
    with torch.no_grad():
        errors["vae_encode"] = _relative(vae_encode(low.vae, (image * 2 - 1).bfloat16(), *VAE_TILE)[:, :4],
                                         vae_encode(ref.vae, image * 2 - 1, *VAE_TILE)[:, :4])
        tokens = ref.ram.represent(image)
        errors["ram"] = _relative(low.ram.represent(image), tokens)
        down, mid, _, _ = ref.controlnet(z, t, embeds, image, 1.0, image_encoder_hidden_states=tokens)
        b = [x.bfloat16() for x in (z, embeds, image, tokens)]
        low_down, low_mid, _, _ = low.controlnet(b[0], t, b[1], b[2], 1.0, image_encoder_hidden_states=b[3])
        errors["controlnet"] = _relative(torch.cat([r.flatten() for r in (*low_down, low_mid)]),
                                         torch.cat([r.flatten() for r in (*down, mid)]))
        eps = ref.unet(z, t, embeds, tokens, down, mid)
        errors["unet"] = _relative(low.unet(b[0], t, b[1], b[3], [d.bfloat16() for d in down], mid.bfloat16()), eps)
        errors["vae_decode"] = _relative(vae_decode(low.vae, z.bfloat16(), *VAE_TILE), vae_decode(ref.vae, z, *VAE_TILE))
    assert low.unet.conv_in.weight.dtype == torch.bfloat16
    for stage, error in errors.items():
        assert 0 < error <= BF16_STAGE_REL[stage], (stage, error)


def test_comfyui_managed_networks_take_the_layout_for_the_dtype_comfyui_picked():
    """ComfyUI picks the dtype (its flags); our wrapper sets the memory format the policy gives it."""
    from addsr_core.addsr.tiny import TINY_VAE
    from addsr_core.models import AutoencoderKL
    from addsr_core.models.config import VAEConfig
    from nodes.comfy_bridge import ManagedModule

    def nhwc(module):
        return next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d)).weight.is_contiguous(memory_format=torch.channels_last)

    def managed(module, device="cpu"):
        return ManagedModule(module, load_device=torch.device(device)).module

    net = lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 3))  # noqa: E731
    assert nhwc(managed(net().to(torch.bfloat16))) and nhwc(managed(net().half(), "meta"))  # low precision: NHWC anywhere
    assert not nhwc(managed(net())) and not nhwc(managed(net(), "meta"))  # fp32 UNet-like: contiguous
    vae = AutoencoderKL(VAEConfig.from_diffusers(TINY_VAE))
    assert nhwc(managed(vae))  # the VAE NHWC on a CPU in fp32, as `auto`
    assert not nhwc(managed(AutoencoderKL(VAEConfig.from_diffusers(TINY_VAE)), "meta"))
