"""StableSR parity with the official code (tests/fixtures/stablesr_*, recorded by tools/record_stablesr_parity.py).

``stablesr_modules``: the time-aware encoder, the SFT UNet's eps, the CFW encode and decode at
w = 0, 0.5 and 1, and the colour fixes, called directly on the official classes.
``stablesr_loops``: the official canvas-tile script run end to end (DDPM-200, Turbo-4 over 2x3
canvas tiles, Turbo-4 in two pixel tiles, v-prediction), replayed here with its recorded draws:
the prepared LR, the LR latent, x_T, the per-step latents / blended model outputs / x0, every
canvas tile's model output, the final latent, the CFW decode with the colour fix, and the image.
"""
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import addsr_core.stablesr.pipeline as stablesr_pipeline
from addsr_core.imaging.colorfix import adain_color_fix, wavelet_color_fix
from addsr_core.models.config import UNetConfig
from addsr_core.sampling.noise import ReplayNoise
from addsr_core.sampling.tiling import tile_origins
from addsr_core.stablesr import StableSRDenoiser, load_cfw_vae, load_stablesr, respaced_schedule, sample_stablesr
from addsr_core.stablesr.encoder import TimeAwareEncoderConfig
from addsr_core.stablesr.model import StableSRConfig, StableSRModel
from addsr_core.pipeline import upscale
from addsr_core.stablesr.pipeline import StableSRModels, StableSROptions, decode_cfw, encode_lr, prepare_lr
from addsr_core.stablesr.tiny import ldm_cfw_state, ldm_stablesr_state, seeded_weights, tiny_cfw, tiny_stablesr
from conftest import assert_matches

FIXTURES = Path(__file__).parent / "fixtures"
MODULES = json.loads((FIXTURES / "stablesr_modules" / "case.json").read_text())
LOOPS = json.loads((FIXTURES / "stablesr_loops" / "case.json").read_text())
COLOR_FIX = {"adain": "adain", "wavelet": "wavelet", "nofix": "none"}

pytestmark = pytest.mark.usefixtures("single_thread")


def _fingerprint(*modules):
    params = [p for m in modules for p in m.parameters()]
    flat = torch.cat([p.detach().double().flatten() for p in params])
    return len(params), flat.numel(), flat.sum().item(), flat.abs().sum().item()


def _assert_fingerprint(want: dict, *modules):
    n, numel, total, abs_total = _fingerprint(*modules)
    assert (n, numel) == (want["tensors"], want["numel"])
    assert abs(abs_total - want["abs_sum"]) <= 1e-9 * want["abs_sum"] and abs(total - want["sum"]) <= 1e-6 * want["abs_sum"]


# --- the networks -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def modules_fixture():
    return load_file(FIXTURES / "stablesr_modules" / "cases.safetensors")


@pytest.fixture(scope="module")
def tiny_networks():
    seeds = MODULES["weights"]["seeds"]
    model, cfw = tiny_stablesr(seeds["stablesr"]), tiny_cfw(seeds["cfw"])
    _assert_fingerprint(MODULES["weights"]["fingerprint"]["stablesr"], model.unet, model.struct_encoder)
    _assert_fingerprint(MODULES["weights"]["fingerprint"]["cfw"], cfw)
    return model, cfw


def test_stablesr_parity_time_aware_encoder_features(modules_fixture, tiny_networks):
    model, _ = tiny_networks
    f = modules_fixture
    with torch.no_grad():
        features = model.struct_encoder(f["inputs.lr_latent"], f["inputs.timesteps"])
    expected = {k[len("expected.encoder."):]: v for k, v in f.items() if k.startswith("expected.encoder.")}
    assert sorted(features) == sorted(expected) == ["12", "24", "3", "6"]
    for width, feature in features.items():
        assert_matches(feature, expected[width], name=f"encoder feature {width}")


def test_stablesr_parity_sft_unet_eps(modules_fixture, tiny_networks):
    """Two timesteps in one batch: the UNet and its SFT layers see the official encoder features."""
    model, _ = tiny_networks
    f = modules_fixture
    with torch.no_grad():
        eps = model(f["inputs.z_t"], f["inputs.timesteps"], f["inputs.lr_latent"], f["inputs.context"])
    assert_matches(eps, f["expected.eps"], name="eps")


def test_stablesr_parity_cfw_encode(modules_fixture, tiny_networks):
    _, cfw = tiny_networks
    with torch.no_grad():
        moments, _ = cfw.encode_with_features(modules_fixture["inputs.image"])
    assert_matches(moments, modules_fixture["expected.cfw.moments"], name="moments")


@pytest.mark.parametrize("fidelity", [0.0, 0.5, 1.0])
def test_stablesr_parity_cfw_decode(modules_fixture, tiny_networks, fidelity):
    _, cfw = tiny_networks
    f = modules_fixture
    with torch.no_grad():
        decoded = cfw.decode(f["inputs.latent"], cfw.lr_features(f["inputs.image"]), fidelity)
    assert_matches(decoded, f[f"expected.cfw.decode_w{fidelity}"], name=f"CFW decode w={fidelity}")


@pytest.mark.parametrize("method,fix", [("adain", adain_color_fix), ("wavelet", wavelet_color_fix)])
def test_stablesr_parity_color_fix(modules_fixture, method, fix):
    """The scripts' tensor colour fixes on the [-1,1] CFW output against the [-1,1] upscaled LR."""
    f = modules_fixture
    target = f["expected.cfw.decode_w0.5"]
    assert_matches(fix(target, f["inputs.image"]), f[f"expected.colorfix.{method}"], name=method)
    before = target.clone()
    assert_matches(fix(target.clone(), f["inputs.image"], in_place=True), f[f"expected.colorfix.{method}"], name=f"{method} in place")
    assert torch.equal(target, before)


# --- the sampling script ------------------------------------------------------------------------------


def _config(recorded: dict) -> StableSRConfig:
    tuples = lambda d: {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}  # noqa: E731
    return StableSRConfig(unet=UNetConfig(**tuples(recorded["unet"])), encoder=TimeAwareEncoderConfig(**tuples(recorded["encoder"])),
                          prediction_type=recorded["prediction_type"])


@pytest.fixture(scope="module")
def loops_fixture():
    return load_file(FIXTURES / "stablesr_loops" / "cases.safetensors")


@pytest.fixture(scope="module")
def loop_networks(tmp_path_factory):
    """The recorded weights rebuilt from their seeds, written in the release layout
    (stablesr_000117.ckpt / vqgan_cfw_00011.ckpt) and read back through our loaders."""
    root = tmp_path_factory.mktemp("stablesr_loops")
    weights = LOOPS["weights"]
    cfw = tiny_cfw(weights["seeds"]["cfw"])
    plain, fusion = ldm_cfw_state(cfw)
    torch.save({"state_dict": {**plain, **fusion}}, root / "vqgan_cfw_tiny.ckpt")
    vae = load_cfw_vae(root / "vqgan_cfw_tiny.ckpt")
    _assert_fingerprint(weights["fingerprint"]["cfw"], vae)
    models = {}
    for prediction, recorded in weights["configs"].items():
        config = _config(recorded)
        built = seeded_weights(StableSRModel(config), weights["seeds"][prediction])
        path = root / f"stablesr_tiny_{prediction}.ckpt"
        torch.save({"state_dict": {**ldm_stablesr_state(built), **{"first_stage_model." + k: v for k, v in plain.items()}}}, path)
        model = load_stablesr(path, config=config, prediction_type=prediction).eval()
        _assert_fingerprint(weights["fingerprint"][prediction], model.unet, model.struct_encoder)
        models[prediction] = StableSRModels(model, vae)
    return models


def _options(case: dict) -> StableSROptions:
    """The script's arguments as our options: its --input_size is both the minimum size and the canvas
    tile (input_size / 8 latents), its overlaps are in latents, its pixel tiles by size and stride."""
    args = case["args"]
    tile, stride = args.get("vqgantile_size", 1280), args.get("vqgantile_stride", 1000)
    return StableSROptions(
        scale=args["upscale"], steps=args["ddpm_steps"], seed=args["seed"], fidelity=args["dec_w"],
        color_fix=COLOR_FIX[args["colorfix_type"]], min_size=args["input_size"], latent_tile_px=args["input_size"],
        latent_overlap_px=args["tile_overlap"] * 8, pixel_tile_px=tile, pixel_overlap_px=tile - stride,
    )


def _lr(tensors, name) -> torch.Tensor:
    return tensors[f"{name}.inputs.lr_uint8"].permute(2, 0, 1)[None].float() / 255


def _tile_records(tensors, name: str, j: int) -> tuple[dict, dict]:
    prefix = f"{name}.tile{j}."
    draws = {k[len(prefix) + 4:]: v for k, v in tensors.items() if k.startswith(prefix + "rng.")}
    expected = {k[len(prefix) + 9:]: v for k, v in tensors.items() if k.startswith(prefix + "expected.")}
    return draws, expected


class _TileOutputs:
    """The per-tile denoiser, recording each canvas tile's model output by (original) timestep."""

    def __init__(self, denoise):
        self.denoise, self.outputs = denoise, {}

    def __call__(self, z, t, lr_latent, context):
        out = self.denoise(z, t, lr_latent, context)
        self.outputs.setdefault(int(t[0]), []).append(out.clone())
        return out


@pytest.mark.parametrize("name", sorted(LOOPS["cases"]))
def test_stablesr_parity_sampling_script(loops_fixture, loop_networks, name):
    """Every pixel tile of the official script, stage by stage, with the official draws replayed."""
    case = LOOPS["cases"][name]
    options = _options(case)
    networks = loop_networks[case["prediction_type"]]
    context = loops_fixture["inputs.context"]
    prepared = prepare_lr(_lr(loops_fixture, name), options)
    plan = options.pixel_plan(*prepared.control_image.shape[-2:])
    assert plan.count == len(case["pixel_tiles"])
    tile, overlap = options.tiling.plan((1, 1))
    schedule = respaced_schedule(options.steps)
    for j, ((y0, x0), recorded) in enumerate(zip(plan.origins, case["pixel_tiles"])):
        draws, expected = _tile_records(loops_fixture, name, j)
        assert list(reversed(schedule.timesteps)) == recorded["timesteps_run"]
        image = prepared.control_image[..., y0 : y0 + plan.tile_h, x0 : x0 + plan.tile_w]
        if "image" in expected:
            assert_matches(image, expected["image"], name=f"{name}: prepared LR")
        noise = ReplayNoise(draws)
        lr_latent = encode_lr(networks.vae, image, noise)
        assert_matches(lr_latent, expected["lr_latent"], name=f"{name}: LR latent")
        per_tile = _TileOutputs(StableSRDenoiser(networks.model))
        traced = {}
        with torch.no_grad():
            z0 = sample_stablesr(
                denoise=options.tiling.wrap(per_tile, lr_latent.shape[-2:], scale=1), lr_latent=lr_latent, context=context,
                options=options.sampling(networks.model.config.prediction_type), noise=noise,
                trace=lambda key, value: traced.__setitem__(key, value.clone()),
            )
        assert len(tile_origins(*lr_latent.shape[-2:], tile, overlap)) == recorded["canvas_tiles_per_step"]
        for key in sorted(k for k in expected if k.startswith("t") or k == "x_T"):
            if ".tile" in key:  # t{t}.tile{k}.model_out: the k-th canvas tile, in the official visit order
                t, k = key.split(".")[0][1:], key.split(".")[1][4:]
                assert_matches(per_tile.outputs[int(t)][int(k)], expected[key], name=f"{name}: {key}")
            else:
                assert_matches(traced[key], expected[key], name=f"{name}: {key}")
        assert_matches(z0, expected["z0"], name=f"{name}: z0")
        result = decode_cfw(networks.vae, z0, image, options.fidelity, options.color_fix)
        assert_matches(result, expected["color_fixed" if "color_fixed" in expected else "decoded"], name=f"{name}: result")


def _official_blend(tensors, name: str) -> torch.Tensor:
    """The script's [-1,1] result before its finish: ImageSpliterTh.gather() or the one tile's."""
    if f"{name}.expected.gathered" in tensors:
        return tensors[f"{name}.expected.gathered"]
    _, expected = _tile_records(tensors, name, 0)
    return expected["color_fixed" if "color_fixed" in expected else "decoded"]


def _official_image(tensors, name: str, prepared) -> torch.Tensor:
    """The script's image: its ``im_sr`` cropped to the unpadded upscaled size. The fixture holds
    ``im_sr`` where the script resized it; elsewhere it is ``clamp((blend + 1) / 2)`` (script lines 375, 393)."""
    key = f"{name}.expected.final"
    final = tensors[key] if key in tensors else ((_official_blend(tensors, name) + 1) / 2).clamp(0, 1)
    return final[..., : prepared.upscaled_hw[0], : prepared.upscaled_hw[1]]


@pytest.mark.parametrize("name", sorted(LOOPS["cases"]))
def test_stablesr_parity_finish(loops_fixture, name):
    """``official_finish`` is the script's finish; the default crops the padding before resizing,
    which differs only when the factor was raised to reach input_size (the script then keeps the padding)."""
    case = LOOPS["cases"][name]
    options = _options(case)
    prepared = prepare_lr(_lr(loops_fixture, name), options)
    official = _official_image(loops_fixture, name, prepared)
    blend = _official_blend(loops_fixture, name)
    assert_matches(stablesr_pipeline.finish(blend.clone(), prepared, replace(options, official_finish=True)), official,
                   name=f"{name}: official finish")
    ours = stablesr_pipeline.finish(blend.clone(), prepared, options)
    h, w = case["lr_hw"]
    assert tuple(ours.shape[-2:]) == (h * 4, w * 4)
    if prepared.official_hw:  # 12x13 LR: upscaled 64x69, padded 96x96, resized to 72x72, "cropped" to 64x69
        assert tuple(official.shape[-2:]) == (64, 69) and tuple(loops_fixture[f"{name}.expected.png"].shape) == (64, 69, 3)
    else:
        assert torch.equal(ours, official)


# DDPM-200 is left out: the same stages as test_stablesr_parity_sampling_script, twice the test time.
@pytest.mark.parametrize("name", sorted(n for n in LOOPS["cases"] if LOOPS["cases"][n]["args"]["ddpm_steps"] < 200))
def test_stablesr_parity_upscale_is_the_official_image(loops_fixture, loop_networks, name, monkeypatch):
    """``upscale`` with ``official_finish`` (prepare, pixel tiles, Gaussian blend, finish: the library's
    default procedure) is the script's image and PNG, each pixel tile given that tile's official draws
    (the script reseeds per tile)."""
    case = LOOPS["cases"][name]
    options = replace(_options(case), official_finish=True)
    tiles = iter(range(len(case["pixel_tiles"])))
    monkeypatch.setattr(stablesr_pipeline, "SeededNoise", lambda seed: ReplayNoise(_tile_records(loops_fixture, name, next(tiles))[0]))
    lr = _lr(loops_fixture, name)
    networks = loop_networks[case["prediction_type"]]
    context = loops_fixture["inputs.context"]
    models = StableSRModels(networks.model, networks.vae, text=lambda prompts: context if prompts == [""] else None)
    with torch.no_grad():
        ours = upscale(models, lr, options)
    assert next(tiles, None) is None
    assert_matches(ours, _official_image(loops_fixture, name, prepare_lr(lr, options)), name=f"{name}: image")
    png = loops_fixture[f"{name}.expected.png"].permute(2, 0, 1)[None].float()
    assert (ours * 255).floor().sub(png).abs().max() <= 1  # the script writes (x * 255).astype(uint8)


def test_stablesr_parity_turbo_steps_are_999_666_333_0():
    assert respaced_schedule(4).timesteps == (0, 333, 666, 999)
    assert LOOPS["cases"]["turbo4_canvas"]["pixel_tiles"][0]["timesteps_run"] == [999, 666, 333, 0]
    assert len(LOOPS["cases"]["ddpm200"]["pixel_tiles"][0]["timesteps_run"]) == 200
