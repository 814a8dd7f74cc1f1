"""The opt-in torch.compile switch: off changes nothing, bad modes fail clearly, a compiled tiny
UNet + ControlNet gives the eager output (within fp32 rounding), and the CLI passes --compile on."""
import pytest
import torch

from addsr_core import cli
from addsr_core.addsr.tiny import TINY_CONTROLNET, TINY_UNET, randomize
from addsr_core.compiling import COMPILE_MODES, compile_network
from addsr_core.errors import OptionsError
from addsr_core.models import ControlNetModel, UNet2DConditionModel, UNetConfig


def tiny_pair():
    g = torch.Generator().manual_seed(0)
    unet = randomize(UNet2DConditionModel(UNetConfig.from_diffusers(TINY_UNET)), g).eval().requires_grad_(False)
    controlnet = randomize(ControlNetModel(UNetConfig.from_diffusers(TINY_CONTROLNET)), g).eval().requires_grad_(False)
    return unet, controlnet


def eps(unet, controlnet):
    g = torch.Generator().manual_seed(1)
    z, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 7, 32, generator=g)
    tokens, cond = torch.randn(1, 145, 512, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    with torch.no_grad():
        down, mid, _, _ = controlnet(z, 999, ctx, cond, 1.0, image_encoder_hidden_states=tokens)
        return unet(z, 999, ctx, tokens, down, mid)


def test_off_leaves_the_module_as_it_is():
    unet, _ = tiny_pair()
    forward = unet.forward
    assert compile_network(unet, "off") is unet
    assert unet.forward == forward and getattr(unet, "_compiled_call_impl", None) is None


def test_unknown_mode_is_refused():
    unet, _ = tiny_pair()
    with pytest.raises(OptionsError, match="unknown compile mode 'fast'"):
        compile_network(unet, "fast")


def test_cli_compile_flag():
    parser = cli.build_parser()
    base = ["upscale", "in.png", "-o", "out", "--addsr", "a", "--ram", "r", "--sd2", "s"]
    assert parser.parse_args(base).compile == "off"
    assert parser.parse_args(base + ["--compile"]).compile == "inductor"
    assert parser.parse_args(base + ["--compile", "freezing"]).compile == "freezing"
    assert set(COMPILE_MODES) == {"off", "inductor", "freezing"}


@pytest.mark.slow
def test_compiled_pair_matches_eager():
    unet, controlnet = tiny_pair()
    expected = eps(unet, controlnet)
    for network in (unet, controlnet):
        compile_network(network, "inductor")
    assert isinstance(unet, UNet2DConditionModel)  # the class and its attributes stay
    torch.testing.assert_close(eps(unet, controlnet), expected, rtol=1e-4, atol=1e-5)
