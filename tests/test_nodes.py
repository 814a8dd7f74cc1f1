"""Node contracts and every node run on tiny checkpoints, without ComfyUI installed."""

import pytest
import torch

import nodes
from nodes.common import AddSRInputError
from nodes.encode import AddSRCond
from nodes.loaders import AddSRModel, RAMModel
from nodekit import FakeComfyCLIP, FakeComfyVAE, make_kit

COMFY_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "IMAGE", "LATENT", "VAE", "CLIP", "CONDITIONING", "MASK", "MODEL"}


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("kit")
    paths = make_kit(root)
    mp = pytest.MonkeyPatch()
    mp.setenv("ADDSR_ADDSR_DIR", str(root / "addsr"))
    mp.setenv("ADDSR_RAM_DIR", str(root / "ram"))
    (root / "stablesr").mkdir()  # StableSR loaders list this folder (their files: tests/test_stablesr_nodes.py)
    (root / "stablesr" / "vqgan_cfw_00011.ckpt").touch()
    mp.setenv("ADDSR_STABLESR_DIR", str(root / "stablesr"))
    yield paths
    mp.undo()


@pytest.mark.parametrize("name", sorted(nodes.NODE_CLASS_MAPPINGS))
def test_node_contract(kit, name):
    cls = nodes.NODE_CLASS_MAPPINGS[name]
    assert name in nodes.NODE_DISPLAY_NAME_MAPPINGS
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"} and spec["required"]
    assert isinstance(cls.RETURN_TYPES, tuple) and cls.RETURN_TYPES
    assert len(getattr(cls, "OUTPUT_TOOLTIPS", cls.RETURN_TYPES)) == len(cls.RETURN_TYPES)
    assert callable(getattr(cls, cls.FUNCTION))
    assert cls.CATEGORY.startswith("AddSR") and cls.DESCRIPTION
    for section in ("required", "optional"):
        for inp, (kind, *opts) in spec.get(section, {}).items():
            options = opts[0] if opts else {}
            assert options.get("tooltip"), f"{name}.{inp} has no tooltip"
            if isinstance(kind, list):
                assert kind and options.get("default", kind[0]) in kind, f"{name}.{inp}"
            elif kind in ("INT", "FLOAT"):
                assert options["min"] <= options["default"] <= options["max"], f"{name}.{inp}"
            else:
                assert kind in COMFY_TYPES or kind.startswith("ADDSR_"), f"{name}.{inp}: {kind}"
    for out in cls.RETURN_TYPES:
        assert out in COMFY_TYPES or out.startswith("ADDSR_")


def test_loader_lists_release_folders_and_files(kit):
    spec = nodes.AddSRModelLoader.INPUT_TYPES()["required"]["model"][0]
    assert spec == ["AddSR-tiny"]
    ram_files = nodes.AddSRRAMLoader.INPUT_TYPES()["required"]["ram"][0]
    assert {"ram_base.pth", "DAPE.pth"} <= set(ram_files)
    assert "ram_tag_list.txt" in nodes.AddSRRAMLoader.INPUT_TYPES()["optional"]["tag_list"][0]


@pytest.fixture(scope="module")
def loaded(kit):
    (model,) = nodes.AddSRModelLoader().load("AddSR-tiny", "fp32")
    (ram,) = nodes.AddSRRAMLoader().load("ram_base.pth", "DAPE.pth", "fp32", tag_list="ram_tag_list.txt")
    return model, ram, FakeComfyVAE(kit["sd2"]), FakeComfyCLIP(kit["sd2"])


def lr_image(batch=1, h=24, w=32, channels=3, seed=0):
    return torch.rand(batch, h, w, channels, generator=torch.Generator().manual_seed(seed))


def test_modular_graph(loaded):
    model, ram, vae, clip = loaded
    assert isinstance(model, AddSRModel) and isinstance(ram, RAMModel)
    image = lr_image(batch=2, h=36, w=150)
    (cond,) = nodes.AddSREncodeLR().encode(image, vae, ram, scale=2, vae_tile_size=256, min_size=80)
    assert isinstance(cond, AddSRCond)
    # 36 is below min_size//2 = 40: official upsizing to a 40 short side (int() truncation), then x2, then //8*8.
    assert tuple(cond.cond.control_image.shape) == (2, 3, 80, 328)
    assert tuple(cond.cond.moments.shape) == (2, 8, 10, 41)
    assert cond.cond.output_size == (72, 300)
    positive, negative = clip.conditioning("a dog"), clip.conditioning("blur")
    (latent,) = nodes.AddSRSampler().sample(model, cond, positive, negative, seed=3, steps=2, psr_weight=0.4,
                                            cfg=0.0, tile_size=256, tile_overlap=64)
    assert latent["samples"].shape == (2, 4, 10, 41) and torch.isfinite(latent["samples"]).all()
    (again,) = nodes.AddSRSampler().sample(model, cond, positive, negative, seed=3, steps=2, psr_weight=0.4,
                                           cfg=0.0, tile_size=256, tile_overlap=64)
    assert torch.equal(latent["samples"], again["samples"]), "same seed, same result"
    (decoded,) = nodes.AddSRTiledVAEDecode().decode(latent, vae, tile_size=256, overlap=32)
    assert decoded.shape == (2, 80, 328, 3) and 0 <= decoded.min() and decoded.max() <= 1
    (finished,) = nodes.AddSRFinish().finish(decoded, cond, "adain")
    assert finished.shape == (2, 72, 300, 3), "Finish gives the exact size, LR x scale"
    (fixed,) = nodes.AddSRColorFix().fix(decoded, image, "adain")
    assert fixed.shape == decoded.shape
    # AdaIN: the per-channel means now follow the reference.
    assert torch.allclose(fixed.mean(dim=(1, 2)), image.mean(dim=(1, 2)), atol=0.03)
    (wave,) = nodes.AddSRColorFix().fix(decoded, image, "wavelet")
    assert wave.shape == decoded.shape
    (tags,) = nodes.AddSRTagger().tag(image, ram)
    assert len(tags.split("\n")) == 2 and all(t for t in tags.split("\n"))
    (encoded,) = nodes.AddSRTiledVAEEncode().encode(decoded, vae, tile_size=256, overlap=32)
    assert encoded["samples"].shape == (2, 4, 10, 41)


def test_cfg_uses_negative_and_changes_result(loaded):
    model, ram, vae, clip = loaded
    (cond,) = nodes.AddSREncodeLR().encode(lr_image(), vae, ram, scale=2, vae_tile_size=1024, min_size=64)
    pos, neg = clip.conditioning("a dog"), clip.conditioning("blur")
    run = lambda cfg: nodes.AddSRSampler().sample(model, cond, pos, neg, seed=1, steps=1, cfg=cfg)[0]["samples"]
    assert not torch.allclose(run(0.0), run(4.0))


def test_all_in_one_rgba_and_grayscale(loaded):
    model, ram, vae, clip = loaded
    rgba = lr_image(h=20, w=20, channels=4)
    (out,) = nodes.AddSRUpscale().upscale(rgba, model, ram, vae, clip, prompt="a cat", seed=0, steps=1, scale=4,
                                          tile_size=256, min_size=64)
    assert out.shape == (1, 80, 80, 4)
    alpha = torch.nn.functional.interpolate(rgba[..., 3][:, None], size=(80, 80), mode="bicubic", antialias=True)
    assert (out[..., 3] - alpha[:, 0].clamp(0, 1)).abs().max() < 1e-5, "alpha upscaled separately"
    gray = lr_image(h=16, w=24, channels=1)
    (out,) = nodes.AddSRUpscale().upscale(gray, model, ram, vae, clip, seed=0, steps=1, scale=2, tile_size=256,
                                          min_size=64)
    assert out.shape == (1, 32, 48, 3)


def test_all_in_one_tags_every_image_of_a_batch(loaded, monkeypatch):
    """Regression: encoding the first image switched tagging off for the rest of the batch, so the
    second prompt came out as ", a cat,clean, ..." with no tags."""
    import nodes.upscale

    model, ram, vae, clip = loaded
    prompts = []
    real = nodes.upscale.encode_prompts
    monkeypatch.setattr(nodes.upscale, "encode_prompts", lambda c, texts: prompts.extend(texts) or real(c, texts))
    batch = lr_image(batch=2, h=20, w=20)
    nodes.AddSRUpscale().upscale(batch, model, ram, vae, clip, prompt="a cat", seed=0, steps=1, scale=2,
                                 tile_size=256, min_size=64)
    (tags,) = nodes.AddSRTagger().tag(batch, ram)
    expected = tags.split("\n")
    assert len(prompts) == 2 and all(expected)
    for prompt, tag in zip(prompts, expected):
        assert prompt.startswith(tag) and "a cat" in prompt, prompts


def test_bad_inputs_give_readable_errors(loaded):
    model, ram, vae, clip = loaded
    with pytest.raises(AddSRInputError, match="at least 8 px"):
        nodes.AddSREncodeLR().encode(lr_image(h=4, w=40), vae, ram)
    with pytest.raises(AddSRInputError, match="not a VAE"):
        nodes.AddSREncodeLR().encode(lr_image(), object(), ram)
    with pytest.raises(AddSRInputError, match="AddSR Load Model"):
        nodes.AddSRSampler().sample(ram, None, None, None)
    (cond,) = nodes.AddSREncodeLR().encode(lr_image(), vae, ram, min_size=64)
    with pytest.raises(AddSRInputError, match="CLIP Text Encode"):
        nodes.AddSRSampler().sample(model, cond, "not conditioning", None)
    nan = lr_image()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(AddSRInputError, match="NaN"):
        nodes.AddSREncodeLR().encode(nan, vae, ram)
    with pytest.raises(FileNotFoundError, match="not found"):
        nodes.AddSRModelLoader().load("missing-model", "fp32")
    no_tags = RAMModel(ram.encoder, None, "x")
    with pytest.raises(AddSRInputError, match="tag list"):
        nodes.AddSRTagger().tag(lr_image(), no_tags)


def test_cancel_stops_within_one_network_call(loaded, monkeypatch):
    model, ram, vae, clip = loaded
    (cond,) = nodes.AddSREncodeLR().encode(lr_image(h=40, w=80), vae, ram, scale=4, min_size=64)
    calls = []

    class Interrupted(Exception):
        pass

    def interrupt():
        calls.append(1)
        if len(calls) >= 2:
            raise Interrupted()

    monkeypatch.setattr(nodes.comfy_bridge, "check_interrupt", interrupt)
    with pytest.raises(Interrupted):
        nodes.AddSRSampler().sample(model, cond, clip.conditioning("x"), clip.conditioning("y"), steps=4, tile_size=256,
                                    tile_overlap=64)
    assert len(calls) == 2


def test_oom_halves_the_tile_then_gives_up(loaded, monkeypatch):
    from addsr_core.addsr import pipeline

    model, ram, vae, clip = loaded
    (cond,) = nodes.AddSREncodeLR().encode(lr_image(), vae, ram, min_size=64)
    tiles = []

    def fake_sample(models, c, pos, neg, options, **kw):
        tiles.append((options.latent_tile_px, options.vae_decode_tile_px))
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(pipeline, "sample", fake_sample)
    with pytest.raises(AddSRInputError, match="out of memory even with 256px tiles"):
        nodes.AddSRSampler().sample(model, cond, clip.conditioning("x"), clip.conditioning("y"), tile_size=1024)
    assert tiles == [(1024, 1024), (512, 512), (256, 256)]  # the refinement decodes' VAE tile halves too


def test_retry_smaller_on_oom_shrinks_to_the_floor_then_raises():
    from nodes import comfy_bridge

    tried = []

    def run(tile):
        tried.append(tile)
        if tile > 300:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return tile

    halving = comfy_bridge.halving(256)
    assert comfy_bridge.retry_smaller_on_oom(run, 1024, smaller=halving, what="test") == 256 and tried == [1024, 512, 256]
    tried.clear()
    with pytest.raises(torch.OutOfMemoryError):  # 1280 -> 640 -> 320; 160 is below the floor
        comfy_bridge.retry_smaller_on_oom(run, 1280, smaller=halving, what="test")
    assert tried == [1280, 640, 320]
    assert [halving(t) for t in (1280, 520, 511)] == [640, 256, None]  # multiples of 8, never below the floor
    with pytest.raises(ValueError, match="gave up at 320") as info:
        comfy_bridge.retry_smaller_on_oom(run, 640, smaller=halving, what="test",
                                          exhausted=lambda t: ValueError(f"gave up at {t}"))
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)
    with pytest.raises(KeyError):  # anything but an OOM passes straight through, untried again
        comfy_bridge.retry_smaller_on_oom(lambda t: {}["x"], 1024, smaller=halving, what="test")


@pytest.mark.parametrize("tile", [256, 512, 1024, 2048])
def test_upscale_and_sampler_nodes_use_one_overlap_rule(loaded, monkeypatch, tile):
    """AddSR Upscale (no overlap input) and AddSR Sampler (default overlap) give the diffusion the same
    overlap for the same tile: the one rule, addsr_core.stages.tile_overlap_px (64 px at every tile here)."""
    import nodes.upscale as upscale_mod
    from addsr_core.addsr import pipeline as addsr
    from addsr_core.stages import DEFAULT_LATENT_OVERLAP_PX, tile_overlap_px

    model, ram, vae, clip = loaded

    class Stop(Exception):
        pass

    seen = {}

    def capture(key):
        def run(*args, **kwargs):
            options = next(a for a in args if isinstance(a, addsr.AddSROptions))
            seen[key] = (options.tiling.tile_px, options.tiling.overlap_px)
            raise Stop

        return run

    monkeypatch.setattr(upscale_mod, "upscale", capture("upscale"))
    monkeypatch.setattr(addsr, "sample", capture("sampler"))
    image = lr_image()
    with pytest.raises(Stop):
        nodes.AddSRUpscale().upscale(image, model, ram, vae, clip, tile_size=tile, min_size=64)
    (cond,) = nodes.AddSREncodeLR().encode(image, vae, ram, min_size=64)
    with pytest.raises(Stop):
        nodes.AddSRSampler().sample(model, cond, clip.conditioning("x"), clip.conditioning("y"), tile_size=tile)
    assert seen["upscale"] == seen["sampler"] == (tile, tile_overlap_px(tile, DEFAULT_LATENT_OVERLAP_PX)) == (tile, 64)
    # at most half the tile, a multiple of 8 (a latent pixel), so a tile always steps forward
    assert (tile_overlap_px(128, 64), tile_overlap_px(96, 64), tile_overlap_px(1024, 700), tile_overlap_px(100, 64)) == \
        (64, 48, 512, 48)


def test_auto_tiles_of_the_nodes_follow_comfyuis_free_memory(loaded, monkeypatch):
    """Tile widgets at 0 (auto): the library's GPU choice (memory.gpu_tiles) from what ComfyUI reports free;
    where it reports nothing (a CPU) the measured defaults. Explicit tiles are kept."""
    import nodes.upscale as upscale_mod
    from addsr_core.addsr import pipeline as addsr
    from addsr_core.memory import gpu_tiles
    from addsr_core.stages import DEFAULT_LATENT_TILE_PX, DEFAULT_VAE_TILE_PX

    model, ram, vae, clip = loaded
    GiB = 2**30

    class Stop(Exception):
        pass

    seen = []

    def capture(*args, **kwargs):
        options = next(a for a in args if isinstance(a, addsr.AddSROptions))
        seen.append((options.latent_tile_px, options.vae_encode_tile_px, options.vae_decode_tile_px))
        raise Stop

    monkeypatch.setattr(upscale_mod, "upscale", capture)
    monkeypatch.setattr(addsr, "sample", capture)
    image = lr_image(h=96, w=128)  # 4x: 384 x 512 px
    chosen = {}
    for free in (None, 2 * GiB, 80 * GiB):
        monkeypatch.setattr(nodes.comfy_bridge, "free_memory", lambda device, free=free: free)
        seen.clear()
        with pytest.raises(Stop):
            nodes.AddSRUpscale().upscale(image, model, ram, vae, clip, min_size=64)
        (cond,) = nodes.AddSREncodeLR().encode(image, vae, ram, min_size=64)
        with pytest.raises(Stop):
            nodes.AddSRSampler().sample(model, cond, clip.conditioning("x"), clip.conditioning("y"))
        if free is None:
            expected = (DEFAULT_LATENT_TILE_PX, DEFAULT_VAE_TILE_PX, DEFAULT_VAE_TILE_PX)
        else:
            tiles = gpu_tiles(free, torch.float32, 384 * 512, max_latent_tile_px=DEFAULT_LATENT_TILE_PX)
            expected = (tiles.latent_tile_px, tiles.vae_encode_tile_px, tiles.vae_decode_tile_px)
        upscale_tiles, sampler_tiles = seen
        assert upscale_tiles == expected, free
        # Encode LR keeps the widget's 0; the sampler picks its refinement decodes' tile where it runs
        assert cond.vae_tile_px == 0 and (sampler_tiles[0], sampler_tiles[2]) == (expected[0], expected[2]), free
        chosen[free] = expected
    assert len(set(chosen.values())) == 3  # at 384 x 512 px the three memories give three sets of VAE tiles
    seen.clear()
    with pytest.raises(Stop):  # explicit widgets are kept whatever the memory
        nodes.AddSRUpscale().upscale(image, model, ram, vae, clip, min_size=64, tile_size=512, vae_tile_size=256)
    assert seen == [(512, 256, 256)]


def test_free_memory_asks_comfyuis_model_management_on_cuda_only(monkeypatch):
    from types import SimpleNamespace

    from nodes import comfy_bridge

    asked = []
    mm = SimpleNamespace(get_free_memory=lambda device: asked.append(device) or 5 * 2**30)
    monkeypatch.setattr(comfy_bridge, "_model_management", lambda: mm)
    assert comfy_bridge.free_memory(torch.device("cuda", 0)) == 5 * 2**30 and asked == [torch.device("cuda", 0)]
    assert comfy_bridge.free_memory(torch.device("cpu")) is None and len(asked) == 1
