"""Our networks loaded from the official fixture folders reproduce the official outputs."""
import pytest
import torch
from safetensors.torch import load_file

from addsr_core.loading.models import load_controlnet, load_unet, load_vae
from addsr_core.models import sample_posterior, split_moments
from conftest import PARITY, assert_matches


@pytest.fixture(scope="module")
def unet_case():
    return load_unet(PARITY / "unet_small"), load_file(PARITY / "unet_small/inputs.safetensors"), load_file(
        PARITY / "unet_small/expected.safetensors"
    )


@pytest.mark.parametrize("case", ["a", "b", "c"])
def test_unet_matches_official(unet_case, case):
    unet, inputs, expected = unet_case
    get = lambda name: inputs[f"{case}.{name}"]
    timestep = 500 if case == "b" else get("timestep")
    residuals = None
    if case == "a":
        residuals = [inputs[f"a.down_block_additional_residuals.{i}"] for i in range(4)]
    with torch.no_grad():
        out = unet(
            get("sample"), timestep, get("encoder_hidden_states"), get("image_encoder_hidden_states"),
            down_block_additional_residuals=residuals,
            mid_block_additional_residual=inputs["a.mid_block_additional_residual"] if case == "a" else None,
        )
    assert_matches(out, expected[f"{case}.sample"], name=f"unet {case}")


def test_unet_accepts_0d_timestep(unet_case):
    unet, inputs, expected = unet_case
    with torch.no_grad():
        out = unet(inputs["b.sample"], torch.tensor(500), inputs["b.encoder_hidden_states"], inputs["b.image_encoder_hidden_states"])
    assert_matches(out, expected["b.sample"])


@pytest.mark.parametrize("case,scale", [("scale_1", 1.0), ("scale_0p5", 0.5)])
def test_controlnet_matches_official(case, scale):
    net = load_controlnet(PARITY / "controlnet_small")
    inputs = load_file(PARITY / "controlnet_small/inputs.safetensors")
    expected = load_file(PARITY / "controlnet_small/expected.safetensors")
    with torch.no_grad():
        out = net(
            inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"], inputs["controlnet_cond"],
            conditioning_scale=scale, image_encoder_hidden_states=inputs["image_encoder_hidden_states"],
        )
    down, mid, cond_embedding, features = out
    assert len(down) == 4
    for i, tensor in enumerate(down):
        assert_matches(tensor, expected[f"{case}.down_block_res_samples.{i}"], name=f"down {i}")
    assert_matches(mid, expected[f"{case}.mid_block_res_sample"], name="mid")
    assert_matches(cond_embedding, expected["cond_embedding"], name="cond_embedding")
    assert [tuple(f.shape) for f in features] == [(2, 32, 64, 64), (2, 96, 32, 32), (2, 256, 16, 16)]


def test_controlnet_rejects_condition_of_wrong_size():
    net = load_controlnet(PARITY / "controlnet_small")
    inputs = load_file(PARITY / "controlnet_small/inputs.safetensors")
    with pytest.raises(ValueError, match="8x the latent"):
        net(inputs["sample"], 999, inputs["encoder_hidden_states"], inputs["controlnet_cond"][..., :64, :64],
            image_encoder_hidden_states=inputs["image_encoder_hidden_states"])


def test_vae_matches_official():
    vae = load_vae(PARITY / "vae_small")
    inputs = load_file(PARITY / "vae_small/inputs.safetensors")
    expected = load_file(PARITY / "vae_small/expected.safetensors")
    with torch.no_grad():
        moments = vae.encode_moments(inputs["image"])
        mean, logvar = split_moments(moments)
        assert_matches(moments, expected["moments"], name="moments")
        assert_matches(mean, expected["mean"], name="mean")
        assert_matches(logvar, expected["logvar"], name="logvar")
        assert_matches(torch.exp(0.5 * logvar), expected["std"], name="std")
        assert_matches(sample_posterior(moments, inputs["posterior_eps"]), expected["posterior_sample_with_eps"])
        assert_matches(vae.decode(inputs["latent"]), expected["decode"], name="decode")
        assert_matches(vae.decode(inputs["latent_nonsquare"]), expected["decode_nonsquare"], name="decode_nonsquare")
        assert_matches(vae.decode(mean), expected["decode_of_mean"], name="decode_of_mean")


def test_resnet_block_in_place_inference_gives_the_autograd_bits():
    """Without autograd the block's SiLUs and skip run in place: the same bits, its input untouched."""
    from addsr_core.models.layers import ResnetBlock2D

    torch.manual_seed(0)
    for cin, cout, temb in ((8, 8, None), (8, 16, 12)):
        block = ResnetBlock2D(cin, cout, temb, 4, 1e-6)
        x = torch.randn(2, cin, 6, 5)
        t = torch.randn(2, temb) if temb else None
        kept = x.clone()
        with torch.no_grad():
            fast = block(x, t)
        slow = block(x, t)  # autograd on: the out-of-place path
        assert slow.requires_grad and torch.equal(fast, slow.detach()) and torch.equal(x, kept)
        slow.sum().backward()
        assert block.conv1.weight.grad is not None
