"""StableSR nodes on tiny seeded files in the release layouts, without ComfyUI; and the StableSR workflows.

StableSR Sampler / CFW Decode (``StableSRSamplerV2`` / ``StableSRCFWDecodeV2``: tiles in output pixels) and
the deprecated ``StableSRSampler`` / ``StableSRCFWDecode`` (latent-pixel tiles) that saved workflows hold."""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import nodes
import addsr_core.stablesr.pipeline as stablesr
from addsr_core.pipeline import upscale
from addsr_core.sampling.noise import SeededNoise
from addsr_core.stablesr.pipeline import StableSRModels, StableSROptions, TileLatents, encode_lr, prepare_lr
from addsr_core.stablesr.sampling import StableSRDenoiser, StableSRSampling, native_latent_tile, sample_stablesr
from addsr_core.stablesr.tiny import write_tiny_stablesr_files
from addsr_core.addsr.tiny import TEXT_WIDTH, write_tiny_sd2
from addsr_core.stages import LRCondition
from nodekit import module_from_state_dict
from nodes.common import AddSRInputError
from nodes.stablesr_loaders import CFWHandle, StableSRCFWLoader, StableSRHandle, StableSRModelLoader
from nodes.stablesr_sampler import StableSRCFWDecode, StableSRCFWDecodeV2, StableSRSampler, StableSRSamplerV2

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = ("stablesr_turbo_4x", "stablesr_quality_200")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("stablesr_models")
    written = write_tiny_stablesr_files(root, context_dim=TEXT_WIDTH)  # the text width of nodekit's tiny CLIP
    mp = pytest.MonkeyPatch()
    mp.setenv("ADDSR_STABLESR_DIR", str(root / "stablesr"))
    mp.setenv("ADDSR_VAE_DIR", str(root / "vae_missing"))
    yield written
    mp.undo()


class FakeComfyModel:
    """Like comfy's ModelPatcher for an SD2 checkpoint: model.diffusion_model in LDM layout, model.model_type."""

    def __init__(self, checkpoint: Path, model_type: str = "EPS"):
        prefix = "model.diffusion_model."
        sd = {k[len(prefix):]: v for k, v in load_file(str(checkpoint)).items() if k.startswith(prefix)}
        self.model = SimpleNamespace(diffusion_model=module_from_state_dict(sd), model_type=SimpleNamespace(name=model_type))


class FakeComfyVAE:
    """Like comfy.sd.VAE: an LDM-layout first_stage_model."""

    def __init__(self, checkpoint: Path):
        prefix = "first_stage_model."
        sd = {k[len(prefix):]: v for k, v in load_file(str(checkpoint)).items() if k.startswith(prefix)}
        self.first_stage_model = module_from_state_dict(sd)


def conditioning(seed=0, width=TEXT_WIDTH):
    return [[torch.randn(1, 77, width, generator=torch.Generator().manual_seed(seed)), {"pooled_output": None}]]


def lr_image(batch=1, h=16, w=16, seed=0):
    return torch.rand(batch, h, w, 3, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def loaded(files):
    (model,) = StableSRModelLoader().load(files["StableSRModelLoader"]["model"], "auto", "fp32")
    (cfw,) = StableSRCFWLoader().load(files["StableSRCFWLoader"]["cfw_file"], "fp32")
    return model, cfw


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- loaders ---------------------------------------------------------------------------------------


def test_loaders_list_and_load_every_release_layout(files, loaded):
    model, cfw = loaded
    names = files["files"]
    listed = StableSRModelLoader.INPUT_TYPES()["required"]["model"][0]
    assert {p.name for k, p in names.items() if k != "base"} <= set(listed)
    assert isinstance(model, StableSRHandle) and model.model.config.prediction_type == "epsilon"
    assert isinstance(cfw, CFWHandle) and model.model.dtype == cfw.vae.dtype == torch.float32
    (v,) = StableSRModelLoader().load(names["full_768v"].name, "auto", "fp32")
    assert v.model.config.prediction_type == "v_prediction"  # by the release name
    # webui SR module on the MODEL from Load Checkpoint = the full file (the UNet is frozen in StableSR)
    base = FakeComfyModel(names["base"])
    (module,) = StableSRModelLoader().load(names["sr_module"].name, "auto", "fp32", base_model=base)
    assert _same_weights(module.model, model.model) and module.model.config.prediction_type == "epsilon"
    (module_v,) = StableSRModelLoader().load(names["sr_module"].name, "auto", "fp32",
                                             base_model=FakeComfyModel(names["base"], "V_PREDICTION"))
    assert module_v.model.config.prediction_type == "v_prediction"  # auto follows the base model's type
    # CFW: official file == split pair == CFW-only + the VAE from Load Checkpoint
    (split,) = StableSRCFWLoader().load(names["cfw_vae_only"].name, "fp32", fusion_file=names["cfw_only"].name)
    (reused,) = StableSRCFWLoader().load(names["cfw_only"].name, "fp32", vae=FakeComfyVAE(names["base"]))
    assert _same_weights(split.vae, cfw.vae) and _same_weights(reused.vae, cfw.vae)


def test_loader_errors_are_readable(files):
    names = files["files"]
    with pytest.raises(AddSRInputError, match="SR module.*base model"):
        StableSRModelLoader().load(names["sr_module"].name, "auto", "fp32")
    with pytest.raises(AddSRInputError, match="not found in models/stablesr"):
        StableSRModelLoader().load("stablesr_000117.ckpt", "auto", "fp32")
    with pytest.raises(AddSRInputError, match="not a MODEL"):
        StableSRModelLoader().load(names["sr_module"].name, "auto", "fp32", base_model=object())
    with pytest.raises(AddSRInputError, match="plain VAE without CFW fusion layers"):
        StableSRCFWLoader().load(names["cfw_vae_only"].name, "fp32")
    with pytest.raises(AddSRInputError, match="only CFW fusion layers"):
        StableSRCFWLoader().load(names["cfw_only"].name, "fp32")
    with pytest.raises(AddSRInputError, match="pick the CFW file"):
        StableSRCFWLoader().load("none", "fp32")
    with pytest.raises(AddSRInputError, match="not a VAE"):
        StableSRCFWLoader().load(names["cfw_only"].name, "fp32", vae=object())


# --- sampler and decode ----------------------------------------------------------------------------

PROCEDURES = ("official", "whole_latent")


def library(model, cfw, positive):
    """The library's StableSR networks over the nodes' weights, the text stage giving ``positive``'s embedding."""
    return StableSRModels(model.model, cfw.vae, text=lambda prompts: positive[0][0])


def handmade_latent(control_image, latent, options, lr_size, scale=4.0):
    """StableSR Sampler's LATENT around a given upscaled LR (no padding) and latent."""
    from nodes.stablesr_sampler import latent_output

    cond = LRCondition(control_image, None, None, lr_size, scale, upscaled_hw=tuple(control_image.shape[-2:]))
    return latent_output(cond, latent, options, 0.18215)


@pytest.mark.parametrize("procedure", PROCEDURES)
def test_sampler_and_decode_equal_the_library_upscale_for_a_batch(loaded, procedure):
    model, cfw = loaded
    image, positive = lr_image(batch=2, h=12, w=16), conditioning(1)
    (latent,) = StableSRSamplerV2().sample(model, cfw, image, positive, seed=3, steps=1, scale=4.0, procedure=procedure,
                                           min_size=64)
    # 4x = 48x64 px has a short side < 64: enlarged x64/12 to 64x85, padded to 96x96 (official: 85 is no
    # multiple of 32, so each side goes to the next multiple above it and 64 gets 32 more)
    info = latent["stablesr"]
    assert latent["samples"].shape == (2, 4, 12, 12) and torch.isfinite(latent["samples"]).all()
    assert info.cond.upscaled_hw == (64, 85) and info.cond.output_size == (48, 64)
    # tiles 0 on a CPU: the official ones, the model's 512 px canvas tile and the 1280 px pixel tile
    assert (info.options.latent_tile_px, info.options.pixel_tile_px) == (512, 1280)
    assert isinstance(info.latent, TileLatents) == (procedure == "official")
    (out,) = StableSRCFWDecodeV2().decode(latent, cfw, fidelity=0.5, color_fix="adain")
    assert out.shape == (2, 48, 64, 3) and 0 <= out.min() and out.max() <= 1
    expected = upscale(library(model, cfw, positive), image.permute(0, 3, 1, 2),
                       StableSROptions(steps=1, seed=3, scale=4.0, min_size=64, procedure=procedure))
    assert (out - expected.permute(0, 2, 3, 1)).abs().max() < 1e-4
    assert (out[0] - out[1]).abs().mean() > 1e-2, "two images stay two"
    (plain,) = StableSRCFWDecodeV2().decode(latent, cfw, fidelity=0.0, color_fix="adain")
    assert (plain - out).abs().mean() > 1e-4, "fidelity reaches the decoder"


@pytest.mark.parametrize("procedure", PROCEDURES)
def test_tiles_on_equal_off_when_one_tile_covers(loaded, procedure):
    model, cfw = loaded
    image, positive = lr_image(h=16, w=16, seed=2), conditioning(2)

    def run(tile):
        return StableSRSamplerV2().sample(model, cfw, image, positive, seed=5, steps=1, procedure=procedure, tile_size=tile,
                                          tile_overlap=32, min_size=128)[0]

    # 128x128 px, a 16x16 latent: one tile either way (512 px clamped to the latent, or exactly 128 px)
    native, exact = run(0), run(128)
    assert native["samples"].shape == (1, 4, 16, 16)
    assert torch.equal(native["samples"], exact["samples"])
    noise = SeededNoise(5)
    with torch.no_grad():  # the plain, untiled sampler on the whole image's LR latent
        lr_latent = encode_lr(cfw.vae, prepare_lr(image.permute(0, 3, 1, 2), StableSROptions(min_size=128)).control_image, noise)
        untiled = sample_stablesr(denoise=StableSRDenoiser(model.model), lr_latent=lr_latent, context=positive[0][0],
                                  options=StableSRSampling(steps=1), noise=noise)
    z = native["stablesr"].latent
    assert torch.equal(z.latents[0] if procedure == "official" else z, untiled)  # one pixel tile: the whole image
    assert (native["samples"] - untiled / cfw.vae.scaling_factor).abs().max() < 1e-5  # the LATENT is unscaled


@pytest.mark.parametrize("release, tile_px, latent_hw", [("full", 512, (64, 64)), ("full_768v", 768, (96, 96))])
def test_native_tiles_are_512_px_or_768_px_for_768v(files, loaded, monkeypatch, release, tile_px, latent_hw):
    _, cfw = loaded
    (handle,) = StableSRModelLoader().load(files["files"][release].name, "auto", "fp32")
    assert native_latent_tile(handle.model.config.prediction_type) * 8 == tile_px  # 64 latents, or 96 for 768-v
    seen = []

    def spy(model, lr_latent, context, options, **kwargs):
        seen.append((options.latent_tile_px, options.tiling.plan(lr_latent.shape[-2:]), tuple(lr_latent.shape[-2:])))
        return torch.zeros_like(lr_latent)

    monkeypatch.setattr(stablesr, "sample_latent", spy)
    monkeypatch.setattr(stablesr, "encode_moments",
                        lambda vae, image, device=None: torch.zeros(image.shape[0], 8, *(s // 8 for s in image.shape[-2:])))
    StableSRSamplerV2().sample(handle, cfw, lr_image(h=16, w=16), conditioning(), steps=1)  # tile_size 0: auto
    StableSRSampler().sample(handle, cfw, lr_image(h=16, w=16), conditioning(), steps=1)  # deprecated, tile_size 0
    # min_size 0: the 16 px LR enlarged to the model's 512 (768) px, one pixel tile; canvas tiles of the
    # model's size overlapping by the official 32 latents
    assert seen == [(tile_px, (tile_px // 8, 32), latent_hw)] * 2


def position_image(height, width, seed=4):
    """[1,3,H,W] in [-1,1]: channel 0 the row / 1000, channel 1 the column / 1000, channel 2 noise; a
    crop's first pixel says where it was cut."""
    rows = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width) / 1000
    cols = torch.arange(width, dtype=torch.float32)[None, :].expand(height, width) / 1000
    noise = torch.rand(height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return torch.stack([rows, cols, noise])[None]


def position_latent(height, width):
    """A whole latent for ``position_image(8 * height, 8 * width)``: channels 0 and 1 the pixel row and
    column / 1000 of each latent pixel."""
    latent = torch.zeros(1, 4, height, width)
    latent[0, 0] = torch.arange(height)[:, None] * 8 / 1000
    latent[0, 1] = torch.arange(width)[None, :] * 8 / 1000
    return latent


def where(crop):
    return round(crop[0, 0, 0, 0].item() * 1000), round(crop[0, 1, 0, 0].item() * 1000)


@pytest.mark.parametrize("overlap, rows, cols", [(56, [0, 200, 256], [0, 200, 384]),  # stride 200
                                                 (100, [0, 152, 256], [0, 152, 304, 384])])  # 104: whole latents
def test_decode_in_official_pixel_tiles(loaded, monkeypatch, overlap, rows, cols):
    """A whole latent (the whole_latent procedure) is decoded in the sampler's pixel tiles, each tile's
    latent its crop; the deprecated decode node does it in its own tiles (in pixels, as before)."""
    _, cfw = loaded
    image = position_image(512, 640)
    calls = []

    def spy(vae, z0, crop, fidelity, color_fix, device=None):
        calls.append((where(crop), where(z0), tuple(z0.shape[-2:]), tuple(crop.shape[-2:]), fidelity, color_fix))
        return crop.clone()  # identity tiles must blend back to the LR image

    monkeypatch.setattr(stablesr, "decode_cfw", spy)
    whole = StableSROptions(procedure="whole_latent", pixel_tile_px=256, pixel_overlap_px=overlap)
    (out,) = StableSRCFWDecodeV2().decode(handmade_latent(image, position_latent(64, 80), whole, (16, 20)), cfw,
                                          fidelity=0.25, color_fix="wavelet")
    # 512x640 px in 256 px tiles: the overflowing starts flush to the far edge
    assert sorted(c[0] for c in calls) == [(y, x) for y in rows for x in cols] == sorted(c[1] for c in calls)
    assert all(c[0] == c[1] for c in calls), "each tile's latent is the crop under its pixels"
    assert {c[2:] for c in calls} == {((32, 32), (256, 256), 0.25, "wavelet")} and len(calls) == len(rows) * len(cols)
    expected = F.interpolate(((image + 1) / 2).clamp(0, 1), size=(64, 80), mode="bicubic").clamp(0, 1)
    assert out.shape == (1, 64, 80, 3) and (out - expected.permute(0, 2, 3, 1)).abs().max() < 1e-5
    first = list(calls)
    calls.clear()
    old_latent = handmade_latent(image, position_latent(64, 80), StableSROptions(procedure="whole_latent"), (16, 20))
    (old,) = StableSRCFWDecode().decode(old_latent, cfw, fidelity=0.25, color_fix="wavelet", tile_size=256,
                                        tile_overlap=overlap)
    assert calls == first and torch.equal(old, out)


def test_decode_gives_each_official_pixel_tile_its_own_latent(loaded, monkeypatch):
    _, cfw = loaded
    image = position_image(512, 640)
    options = StableSROptions(pixel_tile_px=256, pixel_overlap_px=56)
    plan = options.pixel_plan(512, 640)
    latents = TileLatents(plan, tuple(torch.full((1, 4, 32, 32), float(i)) for i in range(plan.count)))
    seen = {}

    def spy(vae, z0, crop, fidelity, color_fix, device=None):
        seen[where(crop)] = z0[0, 0, 0, 0].item()
        return crop.clone()

    monkeypatch.setattr(stablesr, "decode_cfw", spy)
    (out,) = StableSRCFWDecodeV2().decode(handmade_latent(image, latents, options, (16, 20)), cfw)
    assert plan.count == 9 and seen == {origin: float(i) for i, origin in enumerate(plan.origins)}
    expected = F.interpolate(((image + 1) / 2).clamp(0, 1), size=(64, 80), mode="bicubic").clamp(0, 1)
    assert (out - expected.permute(0, 2, 3, 1)).abs().max() < 1e-5
    seen.clear()  # the deprecated decode's tile widgets cannot re-cut latents sampled per pixel tile
    (old,) = StableSRCFWDecode().decode(handmade_latent(image, latents, options, (16, 20)), cfw, tile_size=1280)
    assert seen == {origin: float(i) for i, origin in enumerate(plan.origins)} and torch.equal(old, out)


@pytest.mark.parametrize("case", ["defaults", "small_tiles"])
def test_deprecated_nodes_give_the_v2_image_of_the_same_tiles_in_pixels(loaded, case):
    """Saved workflows keep their meaning: the old nodes' latent-pixel tiles (and their decode's own
    pixel tiles) are the new nodes' tiles x 8 in the whole-latent procedure, the same image bit for bit."""
    model, cfw = loaded
    positive = conditioning(4)
    if case == "defaults":  # the old widgets' defaults: 64-latent tiles overlapping by 32, 1280 px decode tiles by 280
        image, old_sampler, old_decode = lr_image(h=16, w=16, seed=6), dict(min_size=128), {}
        new = dict(tile_size=512, tile_overlap=256, pixel_tile_size=1280, pixel_tile_overlap=280, start_point="lr",
                   min_size=128)
    else:  # 128x320 px: 16-latent tiles by 4 (3 per step), 256 px decode tiles by 64 (2), the older start
        image = lr_image(h=16, w=40, seed=7)
        old_sampler = dict(tile_size=16, tile_overlap=4, start="noise", min_size=128)
        old_decode = dict(tile_size=256, tile_overlap=64)
        new = dict(tile_size=128, tile_overlap=32, pixel_tile_size=256, pixel_tile_overlap=64, start_point="noise",
                   min_size=128)
    (old_latent,) = StableSRSampler().sample(model, cfw, image, positive, seed=8, steps=2, **old_sampler)
    (old_image,) = StableSRCFWDecode().decode(old_latent, cfw, 0.5, "adain", **old_decode)
    (new_latent,) = StableSRSamplerV2().sample(model, cfw, image, positive, seed=8, steps=2, procedure="whole_latent", **new)
    (new_image,) = StableSRCFWDecodeV2().decode(new_latent, cfw, 0.5, "adain")
    assert torch.equal(old_latent["samples"], new_latent["samples"])
    assert old_image.shape == new_image.shape == (1, 64, 4 * image.shape[2], 3) and old_image.std() > 0.01
    assert torch.equal(old_image, new_image)


def test_sampler_and_decode_errors_are_readable(loaded):
    model, cfw = loaded
    image, positive = lr_image(), conditioning()
    for sampler in (StableSRSamplerV2(), StableSRSampler()):
        with pytest.raises(AddSRInputError, match="StableSR Model Loader"):
            sampler.sample(cfw, cfw, image, positive)
        with pytest.raises(AddSRInputError, match="CFW VAE Loader"):
            sampler.sample(model, object(), image, positive)
        with pytest.raises(AddSRInputError, match="768 wide.*SD 2.x"):
            sampler.sample(model, cfw, image, conditioning(width=768))
        with pytest.raises(AddSRInputError, match="CLIP Text Encode"):
            sampler.sample(model, cfw, image, "a prompt")
        with pytest.raises(AddSRInputError, match="cfg > 1 needs a negative prompt"):
            sampler.sample(model, cfw, image, positive, cfg=3.0)
        with pytest.raises(AddSRInputError, match="at least 8 px"):
            sampler.sample(model, cfw, lr_image(h=4, w=16), positive)
    new = StableSRSamplerV2()
    with pytest.raises(AddSRInputError, match="latent_tile_px must be a multiple of 8 and >= 64, got 100"):
        new.sample(model, cfw, image, positive, tile_size=100)
    with pytest.raises(AddSRInputError, match="pixel_tile_px must be a multiple of 8 and >= 64, got 60"):
        new.sample(model, cfw, image, positive, pixel_tile_size=60)
    with pytest.raises(AddSRInputError, match="procedure must be one of"):
        new.sample(model, cfw, image, positive, procedure="fast")
    with pytest.raises(AddSRInputError, match="start_point must be one of"):
        new.sample(model, cfw, image, positive, start_point="lr_noised")
    with pytest.raises(AddSRInputError, match="tile_overlap.*below the latent tile"):
        StableSRSampler().sample(model, cfw, image, positive, tile_size=32, tile_overlap=32)
    for decode in (StableSRCFWDecodeV2(), StableSRCFWDecode()):
        with pytest.raises(AddSRInputError, match="not a LATENT"):
            decode.decode(torch.zeros(1, 4, 8, 8), cfw)
        with pytest.raises(AddSRInputError, match="did not come from StableSR Sampler"):
            decode.decode({"samples": torch.zeros(1, 4, 8, 8)}, cfw)
        latent = handmade_latent(torch.zeros(1, 3, 128, 128), torch.zeros(1, 4, 16, 16), StableSROptions(), (32, 32))
        with pytest.raises(AddSRInputError, match="does not match the LR image"):
            decode.decode({**latent, "samples": torch.zeros(1, 4, 8, 8)}, cfw)
        with pytest.raises(AddSRInputError, match="CFW VAE Loader"):
            decode.decode(latent, object())
        with pytest.raises(AddSRInputError, match="fidelity must be between 0 and 1, got 2"):
            decode.decode(latent, cfw, fidelity=2.0)
        with pytest.raises(AddSRInputError, match="color_fix must be one of"):
            decode.decode(latent, cfw, color_fix="hist")


@pytest.mark.parametrize("procedure", PROCEDURES)
def test_cancel_stops_within_one_network_call(loaded, monkeypatch, procedure):
    model, cfw = loaded
    calls, cancelled = [], []

    class Interrupted(Exception):
        pass

    real = StableSRDenoiser.__call__

    def network(self, *args):
        calls.append(1)
        if len(calls) == 2:
            cancelled.append(1)  # Cancel pressed while the second network call runs
        return real(self, *args)

    def interrupt():
        if cancelled:
            raise Interrupted()

    monkeypatch.setattr(StableSRDenoiser, "__call__", network)
    monkeypatch.setattr(nodes.comfy_bridge, "check_interrupt", interrupt)
    with pytest.raises(Interrupted):
        StableSRSamplerV2().sample(model, cfw, lr_image(h=16, w=20), conditioning(), steps=200, procedure=procedure,
                                   tile_size=128, tile_overlap=32, min_size=128)
    assert len(calls) == 2  # a 16x20 latent in two 16-latent tiles x 200 steps: none after the one running


@pytest.mark.parametrize("sampler", [StableSRSamplerV2, StableSRSampler])
def test_oom_halves_the_diffusion_tile_then_gives_up(loaded, monkeypatch, sampler):
    model, cfw = loaded
    tiles = []

    def oom(model, lr_latent, context, options, **kwargs):
        tiles.append((options.tiling.tile_px, options.tiling.overlap_px))
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(stablesr, "sample_latent", oom)
    with pytest.raises(AddSRInputError, match="out of memory even with 128px diffusion tiles"):
        sampler().sample(model, cfw, lr_image(), conditioning(), steps=4, min_size=64)
    assert tiles == [(512, 256), (256, 128), (128, 64)]  # 64, 32, 16 latents, overlapping by half


def test_a_retry_after_oom_draws_the_seed_afresh(loaded, monkeypatch):
    model, cfw = loaded
    image, positive = lr_image(h=16, w=16, seed=3), conditioning(3)
    run = lambda tile: StableSRSamplerV2().sample(model, cfw, image, positive, seed=2, steps=2, tile_size=tile,  # noqa: E731
                                                  min_size=128)[0]
    direct = run(256)
    real, tiles = stablesr.sample_latent, []

    def oom_once(model, lr_latent, context, options, **kwargs):
        tiles.append(options.latent_tile_px)
        if len(tiles) == 1:
            kwargs["noise"].draw("posterior_eps", (1, 4, 1, 1), device="cpu", dtype=torch.float32)  # a draw made, then OOM
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, lr_latent, context, options, **kwargs)

    monkeypatch.setattr(stablesr, "sample_latent", oom_once)
    retried = run(512)
    assert tiles == [512, 256] and torch.equal(retried["samples"], direct["samples"])


def test_decode_oom_halves_a_whole_latents_pixel_tiles_then_gives_up(loaded, monkeypatch):
    _, cfw = loaded
    sizes = []

    def oom(vae, z0, crop, fidelity, color_fix, device=None):
        sizes.append(tuple(crop.shape[-2:]))
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(stablesr, "decode_cfw", oom)
    whole = handmade_latent(torch.zeros(1, 3, 1280, 1280), torch.zeros(1, 4, 160, 160),
                            StableSROptions(procedure="whole_latent"), (320, 320))
    with pytest.raises(AddSRInputError, match="out of memory decoding 320px pixel tiles: lower the scale") as err:
        StableSRCFWDecodeV2().decode(whole, cfw)
    assert "whole_latent" not in str(err.value)  # it is one already
    assert sizes == [(1280, 1280), (640, 640), (320, 320)]  # then 160 px: below the 256 px floor
    sizes.clear()  # latents sampled per pixel tile are decoded in those tiles: nothing to halve
    options = StableSROptions(pixel_tile_px=256, pixel_overlap_px=64)
    plan = options.pixel_plan(512, 512)
    tiles = handmade_latent(torch.zeros(1, 3, 512, 512), TileLatents(plan, (torch.zeros(1, 4, 32, 32),) * plan.count),
                            options, (128, 128))
    with pytest.raises(AddSRInputError, match="out of memory decoding 256px pixel tiles: lower pixel_tile_size"):
        StableSRCFWDecodeV2().decode(tiles, cfw)
    assert sizes == [(256, 256)]


# --- workflows ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", WORKFLOWS)
def test_shipped_workflow_is_what_the_builder_writes(name):
    from tools.workflows import stablesr as builder

    shipped = json.loads((REPO / "workflows" / f"{name}.json").read_text())
    assert shipped == builder.WORKFLOWS[name]()
    thumbnail = REPO / "workflows" / f"{name}.png"
    assert thumbnail.is_file() and thumbnail.stat().st_size < 200_000
    types = [n["type"] for n in shipped["nodes"]]
    assert types.count("StableSRSamplerV2") == types.count("StableSRCFWDecodeV2") == 1
    assert "StableSRSampler" not in types and "StableSRCFWDecode" not in types, "no deprecated node in a shipped workflow"
    loaders = [n for n in shipped["nodes"] if n["type"] in ("StableSRModelLoader", "StableSRCFWLoader", "CheckpointLoaderSimple")]
    assert len(loaders) == 3
    notes = "\n".join(n["widgets_values"][0] for n in shipped["nodes"] if n["type"] == "MarkdownNote")
    folders = {"CheckpointLoaderSimple": "checkpoints", "StableSRModelLoader": "stablesr", "StableSRCFWLoader": "stablesr"}
    for node in loaders:  # missing files show their expected name, and the Note says where they go
        assert node["widgets_values"][0] in notes and f"models/{folders[node['type']]}/" in notes
    # The missing-models dialog downloads only .safetensors (tests/test_workflows.py): the .ckpt files are in the Note.
    assert [n["type"] for n in loaders if n["properties"].get("models")] == ["CheckpointLoaderSimple"]


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_runs_in_process_on_tiny_files(name, files, tmp_path, monkeypatch):
    """The shipped graph, executed node by node with the core stand-ins (tests/comfy_host/standins.py),
    on the tiny files under the names the workflow asks for; 2 steps instead of 4 / 200."""
    import shutil

    from PIL import Image

    from comfy_host.standins import core_standins, saved_files
    from comfy_host.workflow_graph import execute_api_prompt, ui_to_api_prompt

    workflow = json.loads((REPO / "workflows" / f"{name}.json").read_text())
    models, inputs, outputs = tmp_path / "models", tmp_path / "input", tmp_path / "output"
    wanted = {n["type"]: n["widgets_values"][0] for n in workflow["nodes"] if "Loader" in n["type"]}
    (models / "stablesr").mkdir(parents=True)
    shutil.copyfile(files["files"]["full"], models / "stablesr" / wanted["StableSRModelLoader"])
    shutil.copyfile(files["files"]["cfw"], models / "stablesr" / wanted["StableSRCFWLoader"])
    write_tiny_sd2(models / "checkpoints" / wanted["CheckpointLoaderSimple"])  # the stand-in's CLIP + VAE
    monkeypatch.setenv("ADDSR_STABLESR_DIR", str(models / "stablesr"))
    inputs.mkdir()
    lr = Image.fromarray((lr_image(h=32, w=40, seed=9)[0].numpy() * 255).astype(np.uint8))
    lr.save(inputs / "example.png")
    definitions = {**core_standins(models, inputs, outputs), **nodes.NODE_CLASS_MAPPINGS}
    prompt = ui_to_api_prompt(workflow, definitions)
    by_type = {n["class_type"]: n["inputs"] for n in prompt.values()}
    sampler, decode = by_type["StableSRSamplerV2"], by_type["StableSRCFWDecodeV2"]
    # the official run: its pixel-tile procedure, the model's tiles (0: auto), an empty prompt's 4 / 200 steps
    assert sampler["steps"] == (4 if "turbo" in name else 200)
    assert (sampler["procedure"], sampler["tile_size"], sampler["pixel_tile_size"]) == ("official", 0, 0)
    assert decode["fidelity"] == 0.5 and decode["color_fix"] == "adain"
    assert ("base_model" in by_type["StableSRModelLoader"]) == ("turbo" in name)
    sampler.update(steps=2, min_size=64)  # plumbing, not quality: keep the test short
    result = execute_api_prompt(prompt, definitions)
    saved = {node_id: saved_files(ui, outputs) for node_id, ui in result.ui.items()}
    assert len(saved) == 2 and all(len(files) == 1 for files in saved.values())  # SaveImage and PreviewImage
    for (path,) in saved.values():
        with Image.open(path) as png:
            assert png.size == (160, 128)
            array = np.asarray(png.convert("RGB"), dtype=np.float64) / 255
        assert array.std() > 0.02
