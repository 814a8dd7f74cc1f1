"""Issue 10: one upscale path. The modular node graph, AddSR Upscale (all-in-one) and the CLI call
the same library stages in the same order, so for the same seed and inputs they give the same
image, bit for bit, on the tiny models (no ComfyUI needed)."""
import numpy as np
import pytest
import torch
from PIL import Image

import nodes
from addsr_core.imaging.prepare import to_uint8_round
from addsr_core.pipeline import AddSRModels, AddSROptions
from addsr_core.stages import DEFAULT_LATENT_OVERLAP_PX, tile_overlap_px
from nodekit import FakeComfyCLIP, FakeComfyVAE, make_kit
from nodes.common import as_addsr_vae, encode_prompts, image_to_bchw

NEGATIVE = "dotted, noise, blur, lowres, smooth"


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_path")
    paths = make_kit(root)
    mp = pytest.MonkeyPatch()
    mp.setenv("ADDSR_ADDSR_DIR", str(root / "addsr"))
    mp.setenv("ADDSR_RAM_DIR", str(root / "ram"))
    (model,) = nodes.AddSRModelLoader().load("AddSR-tiny", "fp32")
    (ram,) = nodes.AddSRRAMLoader().load("ram_base.pth", "DAPE.pth", "fp32", tag_list="ram_tag_list.txt")
    yield model, ram, FakeComfyVAE(paths["sd2"]), FakeComfyCLIP(paths["sd2"])
    mp.undo()


def lr_batch(batch, h, w, channels=3, seed=0):
    """8-bit levels, as a PNG holds them (so the CLI reads back exactly this)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, h, w, channels), generator=g).float() / 255


def modular(image, model, ram, vae, clip, *, seed, steps, psr_weight, cfg, tile, vae_tile, prompt, scale=4,
            min_size=64, color_fix="adain"):
    """The shipped workflows' graph: Encode LR, Tagger, Prompt (+ CLIP Text Encode for the negative),
    Sampler, Tiled VAE Decode, Finish."""
    (cond,) = nodes.AddSREncodeLR().encode(image, vae, ram, scale=scale, vae_tile_size=vae_tile, min_size=min_size)
    (tags,) = nodes.AddSRTagger().tag(image, ram)
    (positive,) = nodes.AddSRPrompt().encode(clip, prompt=prompt, tags=tags)
    negative = clip.conditioning(NEGATIVE)  # core CLIP Text Encode
    (latent,) = nodes.AddSRSampler().sample(model, cond, positive, negative, seed=seed, steps=steps,
                                            psr_weight=psr_weight, cfg=cfg, tile_size=tile)  # the node's default overlap
    (decoded,) = nodes.AddSRTiledVAEDecode().decode(latent, vae, tile_size=vae_tile, overlap=64)
    (finished,) = nodes.AddSRFinish().finish(decoded, cond, color_fix)
    return finished, tags


def all_in_one(image, model, ram, vae, clip, *, seed, steps, psr_weight, cfg, tile, vae_tile, prompt, scale=4,
               min_size=64, color_fix="adain"):
    (out,) = nodes.AddSRUpscale().upscale(
        image, model, ram, vae, clip, prompt=prompt, seed=seed, steps=steps, scale=scale, psr_weight=psr_weight,
        color_fix=color_fix, tile_size=tile, use_tags=True, cfg=cfg, negative_prompt=NEGATIVE, min_size=min_size,
        vae_tile_size=vae_tile)
    return out


CASES = {
    # 20x36 LR -> 80x144: one diffusion tile of 1024 px covers it.
    "untiled": dict(shape=(20, 36), steps=2, cfg=0.0, tile=1024, vae_tile=1024),
    # 40x72 LR -> 160x288 with 256 px tiles (32 latents, overlap 8): 2 diffusion tiles per step and
    # tiled VAE encode / PSR decodes / final decode; CFG on, so the negative path is the same too.
    "tiled_cfg": dict(shape=(40, 72), steps=2, cfg=3.0, tile=256, vae_tile=256),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_modular_graph_equals_all_in_one_bit_for_bit(loaded, name):
    case = CASES[name]
    model, ram, vae, clip = loaded
    image = lr_batch(2, *case["shape"], channels=4)  # a batch of 2, with alpha
    knobs = dict(seed=7, steps=case["steps"], psr_weight=0.4, cfg=case["cfg"], tile=case["tile"],
                 vae_tile=case["vae_tile"], prompt="a photo")
    ours, tags = modular(image, model, ram, vae, clip, **knobs)
    one = all_in_one(image, model, ram, vae, clip, **knobs)
    lines = tags.split("\n")
    assert len(lines) == 2 and all(lines), "each image of the batch is tagged"
    h, w = case["shape"]
    assert ours.shape == one.shape == (2, 4 * h, 4 * w, 4)
    assert torch.equal(ours, one), f"max |diff| {(ours - one).abs().max().item():.3e}"
    assert not torch.equal(ours[0], ours[1]), "two different images stay different"


def test_tiled_case_really_tiles():
    from addsr_core.stages import LatentTiling

    h, w = CASES["tiled_cfg"]["shape"]
    tiling = LatentTiling(256, tile_overlap_px(256, DEFAULT_LATENT_OVERLAP_PX))
    assert tiling.calls_per_step((4 * h // 8, 4 * w // 8)) == 2
    assert LatentTiling(1024, 256).calls_per_step((4 * 20 // 8, 4 * 36 // 8)) == 1


def test_batch_items_come_out_as_when_alone(loaded):
    """Each image of a batch is sampled from the seed on its own (the same draws as alone), so
    batching changes it only by the float rounding of batched convolutions, not by other noise."""
    model, ram, vae, clip = loaded
    image = lr_batch(2, 20, 36, seed=3)
    knobs = dict(seed=5, steps=1, psr_weight=0.4, cfg=0.0, tile=1024, vae_tile=1024, prompt="")
    both = all_in_one(image, model, ram, vae, clip, **knobs)
    second = all_in_one(image[1:], model, ram, vae, clip, **knobs)
    diff = (both[1:] - second).abs().max().item()
    assert diff < 1e-4, diff  # a different seed or draw order moves values by ~0.1
    other = all_in_one(image[1:], model, ram, vae, clip, **{**knobs, "seed": 6})
    assert (other - second).abs().max().item() > 100 * diff


def test_cli_gives_the_all_in_one_image_given_the_same_embeddings(loaded, tmp_path):
    """``addsr upscale`` (upscale_file -> pipeline.upscale -> PNG) with the node's networks and the
    same text embeddings writes the all-in-one node's image, rounded to 8 bits."""
    from tqdm import tqdm

    from addsr_core.cli_upscale import upscale_file

    model, ram, vae, clip = loaded
    image = lr_batch(1, 40, 72, seed=11)
    knobs = dict(seed=2, steps=2, psr_weight=0.4, cfg=0.0, tile=256, vae_tile=256, prompt="a photo")
    one = all_in_one(image, model, ram, vae, clip, **knobs)
    src, dst = tmp_path / "lr.png", tmp_path / "out.png"
    Image.fromarray(to_uint8_round(image_to_bchw(image))[0].numpy()).save(src)
    models = AddSRModels(model.unet.module, model.controlnet.module, as_addsr_vae(vae).vae, ram.encoder.module,
                         tagger=ram.tagger, text=lambda prompts: encode_prompts(clip, prompts))
    options = AddSROptions(seed=2, steps=2, prompt="a photo", latent_tile_px=256, vae_encode_tile_px=256,
                           vae_decode_tile_px=256, min_size=64)
    upscale_file(models, src, dst, options, torch.device("cpu"), tqdm)
    written = np.asarray(Image.open(dst))
    expected = to_uint8_round(image_to_bchw(one))[0].numpy()
    assert written.shape == expected.shape == (160, 288, 3)
    assert np.array_equal(written, expected), f"{(written != expected).mean():.1%} of the values differ"


def test_upscale_tags_from_the_condition_tokens_without_a_second_ram_pass(loaded):
    """The LR's RAM tokens (official step 1) already hold what the tagger needs: one Swin pass, same tags."""
    from addsr_core.stages import ConditionOptions, condition_from_lr, tag_images

    model, ram, vae, clip = loaded
    lr = image_to_bchw(lr_batch(2, 20, 36, seed=4))
    network = ram.encoder.module
    cond = condition_from_lr(as_addsr_vae(vae).vae, network, lr, ConditionOptions(scale=4, min_size=64))
    calls = []
    real = network.forward
    network.forward = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        reused = tag_images(ram.tagger, lr, cond, ram=network)
        assert calls == [], "no second RAM pass"
        assert reused == tag_images(ram.tagger, lr) == ram.tagger.tags(lr) and len(calls) == 2
    finally:
        del network.forward


@pytest.mark.parametrize("color_fix", ["adain", "wavelet"])
def test_the_8bit_condition_gives_the_float_conditions_image_bit_for_bit(loaded, color_fix):
    """The condition image is held as the 8-bit image it is (a quarter of the float's memory) and
    read as float per tile, per PSR strip and at the colour fix: every stage sees the bits the
    float condition gave (tiled case: 4 steps, so the PSR decodes and the tiled VAE run too)."""
    import dataclasses

    from addsr_core.imaging.prepare import official_condition_image, unit_float
    from addsr_core.pipeline import run_sampling
    from addsr_core.stages import condition_from_lr, decode, finish, unscaled

    model, ram, vae, clip = loaded
    lr = image_to_bchw(lr_batch(1, 40, 72, seed=5))
    models = AddSRModels(model.unet.module, model.controlnet.module, as_addsr_vae(vae).vae, ram.encoder.module)
    options = AddSROptions(steps=4, min_size=64, color_fix=color_fix, latent_tile_px=256,
                           latent_overlap_px=64, vae_encode_tile_px=256, vae_decode_tile_px=256)
    cond = condition_from_lr(models.vae, models.ram, lr, options.condition)
    float_cond = dataclasses.replace(cond, control_image=unit_float(cond.control_image))
    assert cond.control_image.dtype == torch.uint8
    assert torch.equal(float_cond.control_image, official_condition_image(lr, 4, 64))
    width = models.unet.config.cross_attention_dim
    prompt = torch.randn(1, 77, width, generator=torch.Generator().manual_seed(6))

    def image_of(c):
        z0 = run_sampling(models, c, prompt, None, options)
        return finish(decode(models.vae, unscaled(models.vae, z0), options.decoding), c, options.finishing, in_place=True)

    held = image_of(cond)
    assert torch.equal(held, image_of(float_cond))
    assert held.shape == (1, 3, 160, 288) and held.std() > 0


# --- StableSR ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stablesr_loaded(tmp_path_factory):
    """Tiny StableSR files in the release layouts, loaded through the loader nodes, and a tiny SD2 CLIP
    whose width they take."""
    from addsr_core.addsr.tiny import TEXT_WIDTH, write_tiny_sd2
    from addsr_core.stablesr.tiny import write_tiny_stablesr_files
    from nodes.stablesr_loaders import StableSRCFWLoader, StableSRModelLoader

    root = tmp_path_factory.mktemp("one_path_stablesr")
    written = write_tiny_stablesr_files(root, context_dim=TEXT_WIDTH)
    clip = FakeComfyCLIP(write_tiny_sd2(root / "sd2"))
    mp = pytest.MonkeyPatch()
    mp.setenv("ADDSR_STABLESR_DIR", str(root / "stablesr"))
    (model,) = StableSRModelLoader().load(written["StableSRModelLoader"]["model"], "auto", "fp32")
    (cfw,) = StableSRCFWLoader().load(written["StableSRCFWLoader"]["cfw_file"], "fp32")
    yield model, cfw, clip
    mp.undo()


# 40x56 LR, 4x with min_size 192: enlarged x4.8 to 192x268, reflect-padded to 224x288, resized back to
# 160x224 at the end. 192 px pixel tiles overlapping by 96: 4 pixel tiles; 128 px diffusion tiles
# overlapping by 64: 4 per 24x24 pixel-tile latent per step (official), or 12 over the whole 28x36
# latent (whole_latent); 2 steps.
STABLESR_KNOBS = dict(seed=7, steps=2, scale=4.0, min_size=192, tile_size=128, tile_overlap=64, pixel_tile_size=192,
                      pixel_tile_overlap=96, fidelity=0.5, color_fix="adain")


def stablesr_options(procedure, knobs=STABLESR_KNOBS):
    from addsr_core.pipeline import StableSROptions

    return StableSROptions(seed=knobs["seed"], steps=knobs["steps"], scale=knobs["scale"], min_size=knobs["min_size"],
                           latent_tile_px=knobs["tile_size"], latent_overlap_px=knobs["tile_overlap"],
                           pixel_tile_px=knobs["pixel_tile_size"], pixel_overlap_px=knobs["pixel_tile_overlap"],
                           fidelity=knobs["fidelity"], color_fix=knobs["color_fix"], procedure=procedure, prompt="")


def test_stablesr_case_really_tiles():
    from addsr_core.stablesr.pipeline import count_network_calls

    official, whole = stablesr_options("official"), stablesr_options("whole_latent")
    hw = official.processing_hw((40, 56))
    assert hw == (224, 288) and official.pixel_plan(*hw).count == 4
    assert count_network_calls(official, hw) == 4 * 4 * 2 and count_network_calls(whole, hw) == 12 * 2


@pytest.mark.parametrize("procedure", ["official", "whole_latent"])
def test_stablesr_nodes_library_and_cli_give_the_same_image_bit_for_bit(stablesr_loaded, tmp_path, procedure):
    """StableSR Sampler -> StableSR CFW Decode, ``pipeline.upscale`` with the equivalent options and
    the same text embedding, and ``addsr upscale --method stablesr`` (upscale_file): one image, in
    several pixel tiles and several diffusion tiles per step."""
    from tqdm import tqdm

    from addsr_core.cli_upscale import upscale_file
    from addsr_core.pipeline import StableSRModels, upscale

    model, cfw, clip = stablesr_loaded
    k = STABLESR_KNOBS
    image = lr_batch(1, 40, 56, seed=13)
    positive = clip.conditioning("")  # core CLIP Text Encode of the official empty prompt
    (latent,) = nodes.StableSRSamplerV2().sample(
        model, cfw, image, positive, seed=k["seed"], steps=k["steps"], scale=k["scale"], procedure=procedure,
        tile_size=k["tile_size"], tile_overlap=k["tile_overlap"], pixel_tile_size=k["pixel_tile_size"],
        pixel_tile_overlap=k["pixel_tile_overlap"], min_size=k["min_size"])
    (ours,) = nodes.StableSRCFWDecodeV2().decode(latent, cfw, fidelity=k["fidelity"], color_fix=k["color_fix"])

    models = StableSRModels(model.model, cfw.vae, text=lambda prompts: encode_prompts(clip, prompts))
    options = stablesr_options(procedure)
    calls = []
    library = upscale(models, image_to_bchw(image), options, on_tile=lambda: calls.append(1))
    assert len(calls) == (4 * 4 if procedure == "official" else 12) * k["steps"]  # test_stablesr_case_really_tiles
    tiles = latent["stablesr"].latent
    assert len(tiles.latents) == 4 if procedure == "official" else tiles.shape == (1, 4, 28, 36)
    assert ours.shape == (1, 160, 224, 3) and library.shape == (1, 3, 160, 224)
    assert library.std() > 0.01
    assert torch.equal(ours, library.permute(0, 2, 3, 1)), f"max |diff| {(ours - library.permute(0, 2, 3, 1)).abs().max():.3e}"

    src, dst = tmp_path / "lr.png", tmp_path / "out.png"
    Image.fromarray(to_uint8_round(image_to_bchw(image))[0].numpy()).save(src)
    upscale_file(models, src, dst, options, torch.device("cpu"), tqdm)
    written = np.asarray(Image.open(dst))
    expected = to_uint8_round(library)[0].numpy()
    assert written.shape == expected.shape == (160, 224, 3)
    assert np.array_equal(written, expected), f"{(written != expected).mean():.1%} of the values differ"
