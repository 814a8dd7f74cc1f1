"""StableSR nodes on tiny seeded files in the release layouts, without ComfyUI; and the StableSR workflows."""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import nodes
from addsr_core.sampling.noise import SeededNoise
from addsr_core.stablesr.pipeline import StableSRModels, StableSROptions, encode_lr, prepare_lr, upscale
from addsr_core.stablesr.sampling import StableSRDenoiser, StableSRSampling, native_latent_tile, sample_stablesr
from addsr_core.stablesr.tiny import write_tiny_stablesr_files
from addsr_core.addsr.tiny import TEXT_WIDTH, write_tiny_sd2
from nodekit import module_from_state_dict
from nodes.common import AddSRInputError
from nodes.stablesr_loaders import CFWHandle, StableSRCFWLoader, StableSRHandle, StableSRModelLoader
from nodes.stablesr_sampler import StableSRCFWDecode, StableSRSampler

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


def test_sampler_and_decode_equal_the_core_pipeline_for_a_batch(loaded):
    model, cfw = loaded
    image, positive = lr_image(batch=2, h=12, w=16), conditioning(1)
    (latent,) = StableSRSampler().sample(model, cfw, image, positive, seed=3, steps=1, scale=4.0, min_size=64)
    # 4x = 48x64 px has a short side < 64: enlarged x64/12 to 64x85, padded to 96x96 (official: 85 is no
    # multiple of 32, so each side goes to the next multiple above it and 64 gets 32 more)
    assert latent["samples"].shape == (2, 4, 12, 12) and torch.isfinite(latent["samples"]).all()
    assert latent["stablesr"]["upscaled_hw"] == (64, 85) and latent["stablesr"]["output_hw"] == (48, 64)
    (out,) = StableSRCFWDecode().decode(latent, cfw, fidelity=0.5, color_fix="adain")
    assert out.shape == (2, 48, 64, 3) and 0 <= out.min() and out.max() <= 1
    expected = upscale(StableSRModels(model.model, cfw.vae), image.permute(0, 3, 1, 2), positive[0][0],
                       StableSROptions(steps=1, seed=3, scale=4.0, input_size=64, latent_tile=64))
    assert (out - expected.permute(0, 2, 3, 1)).abs().max() < 1e-4  # the LATENT is unscaled and rescaled
    (plain,) = StableSRCFWDecode().decode(latent, cfw, fidelity=0.0, color_fix="adain")
    assert (plain - out).abs().mean() > 1e-4, "fidelity reaches the decoder"


def test_tiles_on_equal_off_when_one_tile_covers(loaded):
    model, cfw = loaded
    image, positive = lr_image(h=16, w=16, seed=2), conditioning(2)
    run = lambda tile: StableSRSampler().sample(model, cfw, image, positive, seed=5, steps=1, tile_size=tile,  # noqa: E731
                                                tile_overlap=4, min_size=128)[0]["samples"]
    native, exact = run(0), run(16)  # a 16x16 latent: one tile either way (64 clamped to the latent, or exactly 16)
    options = StableSROptions(steps=1, seed=5, input_size=128, tile_overlap=4)
    noise = SeededNoise(5)
    with torch.no_grad():
        lr_latent = encode_lr(cfw.vae, prepare_lr(image.permute(0, 3, 1, 2), options).image, noise)
        untiled = sample_stablesr(denoise=StableSRDenoiser(model.model), lr_latent=lr_latent, context=positive[0][0],
                                  options=StableSRSampling(steps=1), noise=noise)
    assert native.shape == (1, 4, 16, 16)
    assert torch.equal(native, exact)
    assert (native - untiled / cfw.vae.scaling_factor).abs().max() < 1e-5  # and the plain, untiled sampler


def test_native_tiles_are_64_or_96_latent_for_768v(files, loaded, monkeypatch):
    import nodes.stablesr_sampler as mod

    _, cfw = loaded
    (v,) = StableSRModelLoader().load(files["files"]["full_768v"].name, "auto", "fp32")
    assert native_latent_tile("epsilon") == 64 and native_latent_tile("v_prediction") == 96
    seen = {}

    def spy(model, lr_latent, context, options, **kwargs):
        seen.update(tile=options.tile, overlap=options.tile_overlap, hw=tuple(lr_latent.shape[-2:]))
        return torch.zeros_like(lr_latent)

    monkeypatch.setattr(mod, "sample_latent", spy)
    monkeypatch.setattr(mod, "encode_lr", lambda vae, image, noise: torch.zeros(image.shape[0], 4, *(s // 8 for s in image.shape[-2:])))
    StableSRSampler().sample(v, cfw, lr_image(h=16, w=16), conditioning(), steps=1)
    assert seen == {"tile": 96, "overlap": 32, "hw": (96, 96)}  # the 768-v model enlarges to 768 px


def test_decode_in_official_pixel_tiles(loaded, monkeypatch):
    import nodes.stablesr_sampler as mod

    _, cfw = loaded
    lr = torch.rand(1, 3, 512, 640, generator=torch.Generator().manual_seed(4)) * 2 - 1
    latent = {"samples": torch.zeros(1, 4, 64, 80), "stablesr": {"lr_image": lr, "upscaled_hw": (512, 640), "output_hw": (64, 80)}}
    calls = []

    def spy(vae, z0, image, fidelity, color_fix):
        calls.append((tuple(z0.shape[-2:]), tuple(image.shape[-2:]), fidelity, color_fix))
        return image  # identity tiles must blend back to the LR image

    monkeypatch.setattr(mod, "decode_cfw", spy)
    (out,) = StableSRCFWDecode().decode(latent, cfw, fidelity=0.25, color_fix="wavelet", tile_size=256, tile_overlap=56)
    # 512x640 px, tile 256, stride 200: rows 0,200,256 and columns 0,200,384 (last flush to the edge)
    assert len(calls) == 9 and set(calls) == {((32, 32), (256, 256), 0.25, "wavelet")}
    expected = ((latent["stablesr"]["lr_image"] + 1) / 2).clamp(0, 1)
    expected = torch.nn.functional.interpolate(expected, size=(64, 80), mode="bicubic").clamp(0, 1)
    assert (out - expected.permute(0, 2, 3, 1)).abs().max() < 1e-5


def test_sampler_errors_are_readable(loaded):
    model, cfw = loaded
    image, positive = lr_image(), conditioning()
    with pytest.raises(AddSRInputError, match="StableSR Model Loader"):
        StableSRSampler().sample(cfw, cfw, image, positive)
    with pytest.raises(AddSRInputError, match="CFW VAE Loader"):
        StableSRSampler().sample(model, object(), image, positive)
    with pytest.raises(AddSRInputError, match="768 wide.*SD 2.x"):
        StableSRSampler().sample(model, cfw, image, conditioning(width=768))
    with pytest.raises(AddSRInputError, match="CLIP Text Encode"):
        StableSRSampler().sample(model, cfw, image, "a prompt")
    with pytest.raises(AddSRInputError, match="negative"):
        StableSRSampler().sample(model, cfw, image, positive, cfg=3.0)
    with pytest.raises(AddSRInputError, match="tile_overlap.*below the latent tile"):
        StableSRSampler().sample(model, cfw, image, positive, tile_size=32, tile_overlap=32)
    with pytest.raises(AddSRInputError, match="at least 8 px"):
        StableSRSampler().sample(model, cfw, lr_image(h=4, w=16), positive)
    with pytest.raises(AddSRInputError, match="did not come from StableSR Sampler"):
        StableSRCFWDecode().decode({"samples": torch.zeros(1, 4, 8, 8)}, cfw)
    with pytest.raises(AddSRInputError, match="does not match the LR image"):
        StableSRCFWDecode().decode({"samples": torch.zeros(1, 4, 8, 8), "stablesr": {"lr_image": torch.zeros(1, 3, 128, 128)}}, cfw)


def test_cancel_stops_within_one_network_call(loaded, monkeypatch):
    import nodes.stablesr_sampler as mod

    model, cfw = loaded
    calls = []

    class Interrupted(Exception):
        pass

    def interrupt():
        calls.append(1)
        if len(calls) >= 3:
            raise Interrupted()

    monkeypatch.setattr(nodes.comfy_bridge, "check_interrupt", interrupt)
    monkeypatch.setattr(mod, "encode_lr", lambda vae, image, noise: torch.zeros(image.shape[0], 4, *(s // 8 for s in image.shape[-2:])))
    with pytest.raises(Interrupted):
        StableSRSampler().sample(model, cfw, lr_image(h=16, w=20), conditioning(), steps=200, tile_size=16, tile_overlap=4,
                                 min_size=128)
    assert len(calls) == 3  # before the first call, then after each of two 16x16 tiles: 2 of 400 network calls


def test_oom_halves_the_latent_tile_then_gives_up(loaded, monkeypatch):
    import nodes.stablesr_sampler as mod

    model, cfw = loaded
    tiles = []

    def oom(model, lr_latent, context, options, **kwargs):
        tiles.append((options.tile, options.tile_overlap))
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(mod, "sample_latent", oom)
    with pytest.raises(AddSRInputError, match="out of memory even with 16-latent"):
        StableSRSampler().sample(model, cfw, lr_image(), conditioning(), steps=4, min_size=64)
    assert tiles == [(64, 32), (32, 16), (16, 8)]


# --- workflows ---------------------------------------------------------------------------------------


def _builder():
    import sys

    if str(REPO / "tools") not in sys.path:
        sys.path.insert(0, str(REPO / "tools"))
    import stablesr_workflows

    return stablesr_workflows


@pytest.mark.parametrize("name", WORKFLOWS)
def test_shipped_workflow_is_what_the_builder_writes(name):
    shipped = json.loads((REPO / "workflows" / f"{name}.json").read_text())
    assert shipped == _builder().build_workflows()[name]
    thumbnail = REPO / "workflows" / f"{name}.png"
    assert thumbnail.is_file() and thumbnail.stat().st_size < 200_000
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
    assert by_type["StableSRSampler"]["steps"] == (4 if "turbo" in name else 200)
    assert by_type["StableSRCFWDecode"]["fidelity"] == 0.5 and by_type["StableSRCFWDecode"]["color_fix"] == "adain"
    assert ("base_model" in by_type["StableSRModelLoader"]) == ("turbo" in name)
    by_type["StableSRSampler"].update(steps=2, min_size=64)  # plumbing, not quality: keep the test short
    result = execute_api_prompt(prompt, definitions)
    saved = {node_id: saved_files(ui, outputs) for node_id, ui in result.ui.items()}
    assert len(saved) == 2 and all(len(files) == 1 for files in saved.values())  # SaveImage and PreviewImage
    for (path,) in saved.values():
        with Image.open(path) as png:
            assert png.size == (160, 128)
            array = np.asarray(png.convert("RGB"), dtype=np.float64) / 255
        assert array.std() > 0.02
