"""SeeSR sampling: parity with the official pipeline (tests/fixtures/seesr_small, recorded by
tools/record_seesr_parity.py), the DDPM schedule, seeding, start points, CFG and tiles."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from addsr_core.loading.models import load_vae
from addsr_core.loading.pack import load_addsr
from addsr_core.stages import AddSRModels, LRCondition
from addsr_core.sampling.ddpm import ddpm_schedule, ddpm_step, ddpm_timesteps
from addsr_core.sampling.noise import ReplayNoise, SeededNoise
from addsr_core.sampling.schedule import add_noise
from addsr_core.seesr.sampler import SeeSRSampling, sample_seesr, seesr_noise
from addsr_core.pipeline import run_sampling
from addsr_core.seesr.pipeline import SeeSROptions, count_network_calls


def seesr_sample(networks, cond, prompt, negative, options, **hooks):
    return run_sampling(networks, cond, prompt, negative, options, **hooks)  # the family from the options' type


def _calls(options, latent_hw):
    return count_network_calls(options, tuple(8 * s for s in latent_hw))
from addsr_core.addsr.tiny import write_tiny_addsr, write_tiny_sd2
from conftest import assert_matches

FIXTURE = Path(__file__).parent / "fixtures" / "seesr_small"
CASE = json.loads((FIXTURE / "case.json").read_text())

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tensors():
    return load_file(FIXTURE / "cases.safetensors")


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    """The recorded tiny weights, rebuilt from their seed and loaded through our real loaders."""
    root = tmp_path_factory.mktemp("seesr_small")
    seed = CASE["weights"]["seed"]
    unet, controlnet = load_addsr(write_tiny_addsr(root / "seesr", seed))
    vae = load_vae(write_tiny_sd2(root / "sd2", seed + 1))
    return AddSRModels(unet.eval(), controlnet.eval(), vae.eval(), ram=None)


def _fingerprint(module):
    flat = torch.cat([v.double().flatten() for _, v in sorted(module.state_dict().items())])
    return len(module.state_dict()), flat.numel(), flat.sum().item(), flat.abs().sum().item()


def test_rebuilt_weights_are_the_recorded_ones(networks):
    for name in ("unet", "controlnet", "vae"):
        want = CASE["weights"]["fingerprint"][name]
        n, numel, total, abs_total = _fingerprint(getattr(networks, name))
        assert (n, numel) == (want["tensors"], want["numel"]), name
        assert abs(abs_total - want["abs_sum"]) <= 1e-9 * want["abs_sum"] and abs(total - want["sum"]) <= 1e-6 * want["abs_sum"], name


def _case_options(call: dict) -> SeeSROptions:
    scheduler = CASE["schedulers"][call["scheduler"]]
    return SeeSROptions(
        steps=call["num_inference_steps"], guidance_scale=call["guidance_scale"], start_point=call["start_point"],
        start_steps=call.get("start_steps", 999), conditioning_scale=call["conditioning_scale"],
        timestep_spacing=scheduler.get("timestep_spacing", "leading"), latent_tile_px=call["latent_tiled_size"] * 8,
        latent_overlap_px=call["latent_tiled_overlap"] * 8, seed=call["seed"],
    )


def _cond(tensors, networks) -> LRCondition:
    control = tensors["inputs.cond_image_uint8"].permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        moments = networks.vae.encode_moments(control * 2 - 1)
    h, w = control.shape[-2:]
    return LRCondition(control, tensors["inputs.ram_encoder_hidden_states"], moments, (h // 4, w // 4), 4)


@pytest.mark.parametrize("name", sorted(CASE["cases"]))
def test_sampling_matches_official(tensors, networks, name):
    case = CASE["cases"][name]
    options = _case_options(case["call"])
    cond = _cond(tensors, networks)
    prefix = f"{name}.expected."
    expected = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    draws = {k[len(f"{name}.rng."):]: v for k, v in tensors.items() if k.startswith(f"{name}.rng.")}
    assert sorted(draws) == sorted(case["draw_order"])
    if "moments" in expected:  # the official VAE encoded the CFG-doubled image: every copy is the same
        for copy in expected["moments"]:
            assert_matches(cond.moments[0], copy, name="moments")
    assert options.sampling().timesteps() == case["timesteps_run"]
    traced = {}
    z0 = seesr_sample(networks, cond, tensors["inputs.prompt_embeds"], tensors["inputs.negative_prompt_embeds"],
                      options, noise=ReplayNoise(draws), trace=lambda k, v: traced.__setitem__(k, v.clone()))
    for key in sorted(k for k in expected if k not in ("image", "moments")):
        assert_matches(traced[key], expected[key], name=f"{name}.{key}")
    assert_matches(z0, expected["z0"], name=f"{name}.z0")
    if "image" in expected:  # the official 'pt' output: clamp(decode(z0 / sf) / 2 + 0.5, 0, 1)
        with torch.no_grad():
            image = (networks.vae.decode(z0 / networks.vae.scaling_factor) / 2 + 0.5).clamp(0, 1)
        assert_matches(image, expected["image"], name=f"{name}.image")


@pytest.mark.parametrize("name", sorted(CASE["cases"]))
def test_seeded_draws_are_the_official_streams(tensors, name):
    """seesr_noise(seed) gives the official generator's draws and the global RNG's posterior sample,
    bit for bit, when the official script runs on the CPU with the same seed."""
    case = CASE["cases"][name]
    noise = seesr_noise(case["call"]["seed"])
    for draw in case["draw_order"]:
        want = tensors[f"{name}.rng.{draw}"]
        got = noise.draw(draw, case["shapes"][draw], device="cpu", dtype=torch.float32)
        assert torch.equal(got, want), draw


# --- schedule ------------------------------------------------------------------------------------


def test_ddpm_timesteps_follow_sd2_and_sd_turbo_configs():
    ts = ddpm_timesteps(50)
    assert ts[:3] == [981, 961, 941] and ts[-1] == 1 and len(ts) == 50
    assert ddpm_timesteps(2, spacing="trailing") == [999, 499]
    assert ddpm_timesteps(4, spacing="linspace") == [999, 666, 333, 0]
    with pytest.raises(ValueError, match="spacing"):
        ddpm_timesteps(4, spacing="karras")


def test_ddpm_step_is_the_posterior_mean_plus_fixed_small_noise():
    s = ddpm_schedule(10)
    g = torch.Generator().manual_seed(0)
    x0, eps, z = (torch.randn(1, 4, 3, 3, generator=g) for _ in range(3))
    t = s.timesteps[3]
    a, a_prev = s.alphas_cumprod[t].double(), s.alphas_cumprod[t - s.step_ratio].double()
    x_t = add_noise(x0.double(), eps.double(), a)
    prev, pred = ddpm_step(s, eps.double(), t, x_t, z.double())
    beta = 1 - a / a_prev
    mean = a_prev.sqrt() * beta / (1 - a) * x0 + (1 - beta).sqrt() * (1 - a_prev) / (1 - a) * x_t
    assert torch.allclose(pred, x0.double(), atol=1e-9)
    assert torch.allclose(prev, mean + ((1 - a_prev) / (1 - a) * beta).sqrt() * z, atol=1e-9)
    with pytest.raises(ValueError, match="noise draw"):
        ddpm_step(s, eps, t, x_t.float())


# --- options, with a stub denoiser --------------------------------------------------------------


def _stub(calls=None):
    def denoise(z, t, image, tokens, embeds):
        if calls is not None:
            calls.append(z.shape[0])
        pooled = image.mean(dim=(1, 2, 3))[:, None, None, None] + embeds.mean(dim=(1, 2))[:, None, None, None]
        return 0.1 * z + pooled + tokens.mean() * 0.01 + t[:, None, None, None] * 1e-4

    return denoise


def _inputs(batch=1, h=32, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        control_image=torch.rand(batch, 3, h, w, generator=g), lr_tokens=torch.randn(1, 5, 8, generator=g),
        prompt_embeds=torch.randn(1, 3, 6, generator=g), negative_embeds=torch.randn(1, 3, 6, generator=g),
        moments=torch.randn(batch, 8, h // 8, w // 8, generator=g) * 0.5,
    )


def _run(options, seed=0, calls=None, **overrides):
    trace = {}
    kwargs = {**_inputs(), **overrides}
    z = sample_seesr(denoise=_stub(calls), options=options, noise=seesr_noise(seed),
                     trace=lambda k, v: trace.__setitem__(k, v.clone()), **kwargs)
    return z, trace


def test_seeded_and_reproducible():
    a, _ = _run(SeeSRSampling(steps=4), seed=1)
    b, _ = _run(SeeSRSampling(steps=4), seed=1)
    c, _ = _run(SeeSRSampling(steps=4), seed=2)
    assert torch.equal(a, b) and (a - c).abs().max() > 1e-3


def test_start_point_lr_noises_the_posterior_sample_and_noise_uses_the_noise():
    opts = SeeSRSampling(steps=3)
    _, trace = _run(opts, seed=4)
    inputs = _inputs()
    g = torch.Generator().manual_seed(4)
    initial = torch.randn(1, 4, 4, 5, generator=g)
    posterior = torch.randn(2, 4, 4, 5, generator=torch.Generator().manual_seed(4))[:1]  # CFG-doubled draw, item 0
    mean, logvar = inputs["moments"].chunk(2, dim=1)
    lr_latent = (mean + (0.5 * logvar.clamp(-30, 20)).exp() * posterior) * 0.18215
    assert torch.allclose(trace["lr_latent"], lr_latent, atol=1e-6)
    ac = opts.schedule().alphas_cumprod
    assert torch.allclose(trace["start_latent"], add_noise(lr_latent, initial, ac[999]), atol=1e-6)
    _, trace = _run(SeeSRSampling(steps=3, start_point="noise"), seed=4, moments=None)
    assert torch.equal(trace["start_latent"], initial) and "lr_latent" not in trace
    with pytest.raises(ValueError, match="moments"):
        _run(SeeSRSampling(steps=3), moments=None)


def test_start_steps_skips_the_timesteps_above_it():
    seen = []
    opts = SeeSRSampling(steps=10, start_steps=600)
    _run(opts, calls=seen)
    assert opts.timesteps() == [501, 401, 301, 201, 101, 1] and len(seen) == 6


def test_cfg_1_is_the_positive_branch_alone():
    calls = []
    with_negative, _ = _run(SeeSRSampling(steps=3, guidance_scale=1.0), calls=calls)
    assert set(calls) == {1}
    without, _ = _run(SeeSRSampling(steps=3, guidance_scale=1.0), negative_embeds=None)
    assert torch.equal(with_negative, without)
    calls.clear()
    _run(SeeSRSampling(steps=3), calls=calls)
    assert set(calls) == {2}  # one batched call on [negative; positive]
    with pytest.raises(ValueError, match="negative"):
        _run(SeeSRSampling(steps=3), negative_embeds=None)


def test_batches_start_from_their_own_lr_latent_unless_official():
    inputs = _inputs(batch=2)
    _, trace = _run(SeeSRSampling(steps=2), **inputs)
    _, official = _run(SeeSRSampling(steps=2, per_item_lr_latent=False), **inputs)
    g = torch.Generator().manual_seed(0)
    initial = torch.randn(2, 4, 4, 5, generator=g)
    ac999 = SeeSRSampling().schedule().alphas_cumprod[999]
    lr = trace["lr_latent"]
    assert torch.allclose(trace["start_latent"], add_noise(lr, initial, ac999), atol=1e-6)
    assert torch.allclose(official["start_latent"], add_noise(lr[0:1], initial, ac999), atol=1e-6)


# --- tiles ----------------------------------------------------------------------------------------


def test_official_tile_rule_is_by_area_with_square_tiles():
    opts = SeeSROptions()  # 96 latents, overlap 4
    assert opts.tiling.plan((50, 150)) is None  # 7500 <= 96^2: one call, as the official pipeline
    assert opts.tiling.plan((100, 100)) == (96, 4)
    assert _calls(opts, (100, 100)) == 4 * 50
    per_axis = SeeSROptions(official_tiles=False)
    assert per_axis.tiling.plan((50, 150)) == ((50, 77), 4)  # balanced: two equal 77-wide tiles, not 96 + 96
    assert _calls(per_axis, (50, 150)) == 2 * 50


def test_one_tile_is_exactly_untiled(networks, tensors):
    cond = _cond(tensors, networks)
    prompt, negative = tensors["inputs.prompt_embeds"], tensors["inputs.negative_prompt_embeds"]
    base = SeeSROptions(steps=2, seed=3)
    one_tile = SeeSROptions(steps=2, seed=3, official_tiles=False, latent_tile_px=8 * max(cond.moments.shape[-2:]))
    from addsr_core.sampling.denoisers import ControlNetDenoiser, TiledDenoiser

    latent_hw = cond.moments.shape[-2:]
    denoise = ControlNetDenoiser(networks.unet, networks.controlnet)
    assert not isinstance(base.tiling.wrap(denoise, latent_hw), TiledDenoiser)
    forced = TiledDenoiser(denoise, max(latent_hw), 4)  # one tile covers it
    untiled = seesr_sample(networks, cond, prompt, negative, base)
    with torch.no_grad():
        tiled = sample_seesr(
            denoise=forced, control_image=cond.control_image, lr_tokens=cond.lr_tokens, prompt_embeds=prompt,
            negative_embeds=negative, moments=cond.moments, options=base.sampling(), noise=seesr_noise(3),
        )
    assert torch.equal(untiled, tiled)
    assert torch.equal(untiled, seesr_sample(networks, cond, prompt, negative, one_tile))


def test_on_tile_and_on_step_report_progress():
    ticks, steps = [], []
    opts = SeeSRSampling(steps=3)
    from addsr_core.sampling.denoisers import TiledDenoiser

    denoise = TiledDenoiser(_stub(), 3, 1, on_tile=lambda: ticks.append(1), square=True)
    sample_seesr(denoise=denoise, options=opts, noise=seesr_noise(0), on_step=lambda i, n, x0: steps.append((i, n)),
                 **_inputs())
    assert steps == [(0, 3), (1, 3), (2, 3)]
    assert len(ticks) == 3 * 2 * 2  # latent 4x5, square tile 3, overlap 1: 2x2 tiles per step


def test_options_validate():
    for bad in (dict(steps=0), dict(start_point="lr_noised"), dict(start_steps=1000), dict(timestep_spacing="x")):
        with pytest.raises(ValueError):
            SeeSROptions(**bad).validate()
    turbo = SeeSROptions.turbo()
    assert turbo.sampling().timesteps() == [999, 499] and turbo.guidance_scale == 1.0


def test_seeded_noise_keeps_separate_streams():
    a = SeededNoise(5, separate=("x",))
    first = a.draw("y", (3,), device="cpu", dtype=torch.float32)
    side = a.draw("x", (3,), device="cpu", dtype=torch.float32)
    assert torch.equal(first, side)  # both streams start from the same seed
    assert torch.equal(SeededNoise(5).draw("y", (3,), device="cpu", dtype=torch.float32), first)


def test_sd15_wide_prompts_are_refused_before_any_work(networks, tensors):
    """The AddSR sampler's width check: a 768-wide (SD 1.x) prompt names the SD 2.x text encoder."""
    from addsr_core.text.conditioning import TextWidthError

    cond = _cond(tensors, networks)
    prompt = tensors["inputs.prompt_embeds"]
    sd15 = torch.randn(1, 77, 768)
    with pytest.raises(TextWidthError, match="prompt conditioning is 768 wide.*SD 2.x text encoder"):
        seesr_sample(networks, cond, sd15, prompt, SeeSROptions(steps=1))
    with pytest.raises(TextWidthError, match="negative prompt conditioning is 768 wide"):
        seesr_sample(networks, cond, prompt, sd15, SeeSROptions(steps=1))
    # Without CFG the negative is unused, so its width does not matter.
    seesr_sample(networks, cond, prompt, sd15, SeeSROptions(steps=1, guidance_scale=1.0))
