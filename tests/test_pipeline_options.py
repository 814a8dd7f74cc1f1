"""Our sampler options beyond the official behaviour, on the fixture networks."""
import pytest
import torch
from safetensors.torch import load_file

from addsr_core.loading.models import load_controlnet, load_unet, load_vae
from addsr_core.addsr.sampler import AddSRSampling, sample_addsr
from addsr_core.sampling.denoisers import ControlNetDenoiser, TiledDenoiser
from addsr_core.sampling.noise import SeededNoise
from conftest import PARITY
from test_pipeline_parity import ram_stub


@pytest.fixture(scope="module")
def setup():
    inputs = load_file(PARITY / "pipeline_small_4step/inputs.safetensors")
    unet, controlnet, vae = load_unet(PARITY / "unet_small"), load_controlnet(PARITY / "controlnet_small"), load_vae(PARITY / "vae_small")
    return dict(
        denoise=ControlNetDenoiser(unet, controlnet), encode=vae.encode_moments, decode=vae.decode,
        represent=ram_stub(inputs["ram_stub.weight"], inputs["ram_stub.bias"]), control_image=inputs["cond_image"],
        lr_tokens=inputs["ram_encoder_hidden_states"], prompt_embeds=inputs["prompt_embeds"],
    )


def run(setup, seed=0, trace=None, **options):
    with torch.no_grad():
        return sample_addsr(**setup, options=AddSRSampling(**options), noise=SeededNoise(seed), trace=trace)


def traced(setup, **options):
    record = {}
    result = run(setup, trace=lambda k, v: record.__setitem__(k, v), **options)
    return result, record


def test_step_subsets_and_validation(setup):
    result, record = traced(setup, timesteps=(999, 499))
    assert [int(record[f"step{k}.timestep"][0]) for k in range(2)] == [999, 499]
    assert AddSRSampling.with_steps(3).timesteps == (999, 749, 499)
    # Starting below 999 crashes officially (UnboundLocalError); here it works.
    late, record = traced(setup, timesteps=(749, 249))
    assert int(record["step0.timestep"][0]) == 749 and torch.isfinite(late.z0).all()
    for bad in [(), (999, 999), (499, 999), (998,), (999, 749, 499, 249, 249)]:
        with pytest.raises(ValueError):
            AddSRSampling(timesteps=bad).validate()
    with pytest.raises(ValueError, match="psr_weight"):
        AddSRSampling(psr_weight=1.5).validate()


def test_psr_weight_is_honoured(setup):
    _, w0 = traced(setup, psr_weight=0.0)
    _, w4 = traced(setup, psr_weight=0.4)
    _, w9 = traced(setup, psr_weight=0.9)
    lr = setup["control_image"]
    assert torch.equal(w0["step1.controlnet_cond"], lr)  # weight 0: the condition stays the LR
    decoded = (w4["step1.psr_decode_raw"].clamp(-1, 1) / 2 + 0.5)
    assert torch.allclose(w4["step1.controlnet_cond"], 0.4 * decoded + 0.6 * lr)
    assert not torch.allclose(w4["step3.pred_z0"], w9["step3.pred_z0"])


def test_token_reuse(setup):
    _, record = traced(setup, recompute_tokens=False)
    for k in range(4):
        assert torch.equal(record[f"step{k}.ram_embeds"], setup["lr_tokens"])
    _, recomputed = traced(setup)
    assert not torch.allclose(recomputed["step1.ram_embeds"], setup["lr_tokens"])


def test_classifier_free_guidance(setup):
    negative = setup["prompt_embeds"].flip(1)
    g = 3.0
    with torch.no_grad():
        _, record = traced({**setup, "negative_embeds": negative}, timesteps=(999,), guidance_scale=g)
        z, t = record["step0.latent_in"], record["step0.timestep"]
        args = (z, t, setup["control_image"], setup["lr_tokens"])
        expected = setup["denoise"](*args, negative) + g * (setup["denoise"](*args, setup["prompt_embeds"]) - setup["denoise"](*args, negative))
    assert record["step0.noise_pred"].shape == (1, 4, 16, 16)  # official CFG doubles the batch; ours does not
    assert torch.allclose(record["step0.noise_pred"], expected, atol=1e-5)
    four, _ = traced({**setup, "negative_embeds": negative}, guidance_scale=g)  # official crashes at step 2
    assert four.z0.shape == (1, 4, 16, 16)
    with pytest.raises(ValueError, match="negative"):
        run(setup, guidance_scale=2.0)


def test_seeded_noise_is_reproducible(setup):
    a, b, c = run(setup, seed=5).z0, run(setup, seed=5).z0, run(setup, seed=6).z0
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_batch_items_start_from_their_own_lr(setup):
    batch = {**setup, "control_image": torch.cat([setup["control_image"], setup["control_image"].flip(-1)])}
    _, own = traced(batch, timesteps=(999,))
    _, official = traced(batch, timesteps=(999,), per_item_lr_latent=False)
    lr = own["lr_latent"]
    assert not torch.allclose(lr[0], lr[1])
    # Same noise draws in both runs: only the LR latent of item 1 differs.
    assert torch.allclose(official["start_latent"][1] - own["start_latent"][1], (lr[0] - lr[1]) * 0.00466009509**0.5, atol=1e-5)


def test_one_tile_equals_untiled_and_tiles_cover_everything(setup):
    untiled = run(setup, seed=1).z0
    one_tile = run({**setup, "denoise": TiledDenoiser(setup["denoise"], tile=16, overlap=4)}, seed=1).z0
    assert torch.equal(one_tile, untiled)
    calls = []
    tiled = run({**setup, "denoise": TiledDenoiser(setup["denoise"], tile=8, overlap=4, on_tile=lambda: calls.append(1))}, seed=1).z0
    assert tiled.shape == untiled.shape and torch.isfinite(tiled).all()
    assert len(calls) == 4 * 9  # 3x3 tiles of 8 over 16 latents with overlap 4, at each of 4 steps
    with pytest.raises(ValueError, match="larger than the overlap"):
        TiledDenoiser(setup["denoise"], tile=4, overlap=4)


def test_cfg_denoiser_wraps_the_tiled_denoiser():
    """CFG is one wrapper (addsr_core.sampling.denoisers.CFGDenoiser) around any denoiser, tiled or not:
    one batched [negative; positive] call, neg + s * (pos - neg); scale 1 is a plain call."""
    from addsr_core.sampling.denoisers import CFGDenoiser

    gen = torch.Generator().manual_seed(3)

    def stub(z, t, image, tokens, embeds):
        return z * embeds.mean(dim=(1, 2))[:, None, None, None] + image[..., ::8, ::8].mean(1, keepdim=True) + t[:, None, None, None]

    z, t = torch.randn(2, 4, 12, 20, generator=gen), torch.tensor([5, 5])
    image, tokens = torch.rand(2, 3, 96, 160, generator=gen), torch.randn(2, 3, 8, generator=gen)
    pos, neg = torch.randn(2, 7, 8, generator=gen), torch.randn(2, 7, 8, generator=gen)
    tiled = TiledDenoiser(stub, tile=8, overlap=4)
    guided = CFGDenoiser(tiled, 7.5, neg)(z, t, image, tokens, pos)
    eps_pos, eps_neg = tiled(z, t, image, tokens, pos), tiled(z, t, image, tokens, neg)
    assert torch.allclose(guided, eps_neg + 7.5 * (eps_pos - eps_neg), atol=1e-5)
    assert torch.equal(CFGDenoiser(tiled, 1.0)(z, t, image, tokens, pos), eps_pos)
    with pytest.raises(ValueError, match="negative"):
        CFGDenoiser(tiled, 2.0)


def test_psr_written_into_the_decode_gives_the_same_bits(setup):
    """``owns_decodes``: the PSR condition is written into the decode (a trace may keep the decode,
    so the pipeline only does it untraced): the same condition, the same z0, input untouched."""
    from addsr_core.addsr.sampler import psr_condition

    g = torch.Generator().manual_seed(4)
    decoded, lr = torch.randn(1, 3, 40, 48, generator=g) * 1.2, torch.rand(1, 3, 40, 48, generator=g)
    kept, lr_before = decoded.clone(), lr.clone()
    expected = psr_condition(decoded, lr, 0.4)
    written = psr_condition(decoded, lr, 0.4, in_place=True)
    assert written is decoded and torch.equal(written, expected) and torch.equal(lr, lr_before)
    assert not torch.equal(decoded, kept)
    control = setup["control_image"].clone()
    with torch.no_grad():
        plain = sample_addsr(**setup, options=AddSRSampling(), noise=SeededNoise(0)).z0
        owned = sample_addsr(**setup, options=AddSRSampling(), noise=SeededNoise(0), owns_decodes=True).z0
    assert torch.equal(plain, owned) and torch.equal(setup["control_image"], control)


def test_psr_blend_of_an_8bit_lr_in_strips_gives_the_float_bits(monkeypatch):
    """The pipeline holds the LR condition as uint8: the in-place blend reads it a strip of rows at
    a time (here 7 rows: strips that do not divide the image), the bits of the float LR blended whole."""
    from addsr_core.addsr import sampler

    g = torch.Generator().manual_seed(5)
    decoded = torch.randn(1, 3, 40, 48, generator=g) * 1.2
    lr8 = torch.randint(0, 256, (1, 3, 40, 48), generator=g, dtype=torch.uint8)
    expected = sampler.psr_condition(decoded, lr8.float() / 255, 0.4)
    monkeypatch.setattr(sampler, "PSR_STRIP_PX", 7 * 48)
    assert torch.equal(sampler.psr_condition(decoded, lr8, 0.4), expected)
    nhwc = decoded.to(memory_format=torch.channels_last)  # a decode's layout
    assert torch.equal(sampler.psr_condition(nhwc, lr8, 0.4, in_place=True), expected)
