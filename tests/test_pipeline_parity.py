"""The whole official sampling loop, replaying its recorded random draws."""
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from addsr_core.loading.models import load_controlnet, load_unet, load_vae
from addsr_core.addsr.sampler import AddSRSampling, sample_addsr
from addsr_core.sampling.denoisers import ControlNetDenoiser
from addsr_core.sampling.noise import ReplayNoise
from conftest import PARITY, assert_matches

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def ram_stub(weight, bias):
    """README §5: the RAM stand-in the fixtures were generated with."""

    def encode(x384):
        pooled = x384.mean(dim=(2, 3))[:, None]
        cells = F.adaptive_avg_pool2d(x384, 12).flatten(2).transpose(1, 2)
        return torch.cat([pooled, cells], 1) @ weight.T + bias

    def represent(image01):
        x = F.interpolate(image01, size=(384, 384), mode="bicubic", align_corners=False)
        return encode((x - IMAGENET_MEAN) / IMAGENET_STD)

    return represent


@pytest.fixture(scope="module")
def networks():
    unet = load_unet(PARITY / "unet_small")
    controlnet = load_controlnet(PARITY / "controlnet_small")
    vae = load_vae(PARITY / "vae_small")
    return unet, controlnet, vae


def replay_draws(inputs):
    names = {
        "rng.0.initial_latents": "initial_latents",
        "rng.1.posterior_eps": "posterior_eps",
        "rng.3.renoise_after_t999": "renoise_after_t999",
        "rng.4.renoise_after_t749": "renoise_after_t749",
        "rng.5.renoise_after_t499": "renoise_after_t499",
    }
    return ReplayNoise({ours: inputs[k] for k, ours in names.items() if k in inputs})


@pytest.mark.parametrize("fixture,steps", [("pipeline_small_4step", 4), ("pipeline_small_1step", 1)])
def test_pipeline_matches_official(networks, fixture, steps):
    unet, controlnet, vae = networks
    inputs = load_file(PARITY / fixture / "inputs.safetensors")
    expected = load_file(PARITY / fixture / "expected.safetensors")
    traced = {}
    cond = inputs["cond_image"]
    assert torch.equal(cond, inputs["cond_image_uint8"].permute(2, 0, 1)[None].float() / 255)
    with torch.no_grad():
        result = sample_addsr(
            denoise=ControlNetDenoiser(unet, controlnet),
            encode=vae.encode_moments,
            decode=vae.decode,
            represent=ram_stub(inputs["ram_stub.weight"], inputs["ram_stub.bias"]),
            control_image=cond,
            lr_tokens=inputs["ram_encoder_hidden_states"],
            prompt_embeds=inputs["prompt_embeds"],
            options=AddSRSampling.with_steps(steps, alphas_cumprod=inputs["alphas_cumprod"]),
            noise=replay_draws(inputs),
            trace=lambda name, value: traced.__setitem__(name, value),
        )
        decoded = vae.decode(result.z0 / 0.18215)
        image = (decoded / 2 + 0.5).clamp(0, 1)  # the official final decode: clamp(decode(z0 / sf) / 2 + 0.5, 0, 1)
    assert_matches(traced["lr_latent"], expected["lr_latent"], name="lr_latent")
    for key in sorted(k for k in expected if k.startswith(("step", "start_latent"))):
        if key.endswith("timestep"):
            assert torch.equal(traced[key], expected[key]), key
        else:
            assert_matches(traced[key], expected[key], name=key)
    assert_matches(result.z0, expected["z0"], name="z0")
    assert_matches(decoded, expected["decoded_raw"], name="decoded_raw")
    assert_matches(image, expected["image"], name="image")
    ours_u8 = (image[0].permute(1, 2, 0) * 255).round().to(torch.uint8)
    diff = (ours_u8.int() - expected["image_uint8"].int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3
