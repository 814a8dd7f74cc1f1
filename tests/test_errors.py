"""Issue 11, 2.3: broken files, refused pickles and SD 1.x conditioning give errors that name the
file or input, say what was expected and what to do, never torch's or safetensors' bare words."""
import os
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

import nodes
from addsr_core.errors import InputError, OptionsError
from addsr_core.loading import CheckpointError, read_safetensors_metadata, read_state_dict
from addsr_core.loading.pack import load_addsr
from addsr_core.addsr.pipeline import sample
from addsr_core.pipeline import AddSRModels, AddSROptions
from addsr_core.ram import load_ram
from addsr_core.sampling.noise import SeededNoise
from addsr_core.loading.io import plain_pickle_imports
from addsr_core.loading.lightning import read_checkpoint
from addsr_core.stablesr.loading import checkpoint_keys
from addsr_core.stablesr.pipeline import StableSROptions, sample_latent
from addsr_core.stablesr.tiny import write_tiny_stablesr_files
from addsr_core.text.conditioning import TextWidthError
from addsr_core.addsr.tiny import TEXT_WIDTH
from nodekit import FakeComfyCLIP, FakeComfyVAE, make_kit
from nodes.common import AddSRInputError
from nodes.stablesr_loaders import StableSRCFWLoader, StableSRModelLoader
from nodes.stablesr_sampler import StableSRSampler

REDOWNLOAD = "Re-download it; a partial download is the usual cause; check its size against the source."
TORCH_ADVICE = ("weights_only", "will likely succeed", "add_safe_globals", "False", "WeightsUnpickler")


def _valid_safetensors(path):
    save_file({"a.weight": torch.arange(64.0).reshape(8, 8), "b": torch.ones(16)}, str(path))
    return path.read_bytes()


def _truncated(path):
    data = _valid_safetensors(path)
    path.write_bytes(data[: len(data) // 2])


def _empty(path):
    path.write_bytes(b"")


def _random_bytes(path):
    path.write_bytes(os.urandom(512))


def _garbage_header(path):  # a plausible header length, then no JSON
    path.write_bytes(struct.pack("<Q", 24) + b"\x00\xff not json at all \x01\x02" + b"\x00" * 64)


BROKEN = {"truncated": (_truncated, "truncated"), "empty": (_empty, "empty"),
          "random": (_random_bytes, "not safetensors"), "garbage_header": (_garbage_header, "not safetensors")}


def _assert_clear_safetensors_error(message, path, kind):
    assert path.name in message and "is not a valid .safetensors file" in message and REDOWNLOAD in message, message
    assert f"({kind}" in message and "Error while deserializing header" not in message, message


@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_broken_safetensors_name_the_file_and_say_redownload(tmp_path, broken):
    write, kind = BROKEN[broken]
    path = tmp_path / f"{broken}_weights.safetensors"
    write(path)
    readers = [
        lambda: read_state_dict(path, family="test"),
        lambda: read_safetensors_metadata(path),
        lambda: read_checkpoint(path),  # StableSR / CFW files
        lambda: checkpoint_keys(path),
        lambda: load_addsr(path),  # a packed AddSR file
        lambda: load_ram(path),
    ]
    for read in readers:
        with pytest.raises(CheckpointError) as err:
            read()
        _assert_clear_safetensors_error(str(err.value), path, kind)
        assert err.value.__cause__ is None and err.value.__suppress_context__


def test_truncated_safetensors_gives_both_sizes(tmp_path):
    path = tmp_path / "half.safetensors"
    _truncated(path)
    with pytest.raises(CheckpointError, match=r"truncated: \d+ bytes, its header describes \d+"):
        read_state_dict(path)


class _RunsShell:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("legacy", [False, True])
def test_malicious_pickle_is_refused_without_torchs_unsafe_advice(tmp_path, legacy):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "payload": _RunsShell(f"touch {marker}")}, path,
               _use_new_zipfile_serialization=not legacy)
    for read in (lambda: read_state_dict(path, family="RAM"), lambda: read_checkpoint(path), lambda: load_ram(path)):
        with pytest.raises(CheckpointError) as err:
            read()
        message = str(err.value)
        assert "evil.pth" in message and f"`{os.system.__module__}.system`" in message, message
        assert "download the official file again" in message and ".safetensors copy" in message, message
        assert not any(advice in message for advice in TORCH_ADVICE), message
        assert err.value.__cause__ is None and err.value.__suppress_context__
    assert not marker.exists()


class _MakesDirectory:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # called by pickle.dump, which only records (os.makedirs, (path,)); nothing runs
        return os.makedirs, (self.path,)


@pytest.mark.parametrize("protocol", [4, 5])
def test_plain_pickle_with_code_is_refused_as_code_not_as_corrupt(tmp_path, protocol):
    """pickle.dump, not torch.save: torch's reader stops at protocol 4's FRAME opcode ("Unsupported
    operand 149"), before any import. The file is intact and holds code: the message says so, not "re-download"."""
    marker = tmp_path / "code_ran"
    path = tmp_path / "plain.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"w": [1.0, 2.0]}, "payload": _MakesDirectory(str(marker))}, f, protocol=protocol)
    code = f"{os.makedirs.__module__}.makedirs"
    assert plain_pickle_imports(path) == [code]  # read statically
    for read in (lambda: read_state_dict(path, family="RAM"), lambda: read_checkpoint(path), lambda: load_ram(path)):
        with pytest.raises(CheckpointError) as err:
            read()
        message = str(err.value)
        assert "plain.pth" in message and f"`{code}`" in message and "running code from the file" in message, message
        assert "download the official file again" in message and ".safetensors copy" in message, message
        assert "corrupt" not in message and REDOWNLOAD not in message and "operand" not in message, message
        assert not any(advice in message for advice in TORCH_ADVICE), message
    assert not marker.exists()


def test_refused_class_names_the_object(tmp_path):
    path = tmp_path / "with_object.ckpt"
    torch.save({"w": torch.ones(1), "cfg": struct.Struct}, path)  # a class: a global torch refuses
    with pytest.raises(CheckpointError, match=r"contains the Python object `[\w.]+`") as err:
        read_state_dict(path)
    assert not any(advice in str(err.value) for advice in TORCH_ADVICE)


@pytest.mark.parametrize("legacy", [False, True])
def test_torn_pickle_is_a_redownload_error_without_torchs_advice(tmp_path, legacy):
    path = tmp_path / "torn.pth"
    torch.save({"w": torch.zeros(256)}, path, _use_new_zipfile_serialization=not legacy)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # cut in the tensor data, past the pickle's globals
    random = tmp_path / "random.pth"
    random.write_bytes(os.urandom(300))  # torch's weights-only unpickler answers with its advice
    for file in (path, random):
        with pytest.raises(CheckpointError) as err:
            read_checkpoint(file)
        message = str(err.value)
        assert file.name in message and "not a readable PyTorch checkpoint" in message and REDOWNLOAD in message
        assert not any(advice in message for advice in TORCH_ADVICE), message


# --- bad images and options -------------------------------------------------------------------------


def _user_errors():
    import numpy as np

    from addsr_core.imaging.colorfix import adain_color_fix, apply_color_fix
    from addsr_core.imaging.prepare import condition_sizes, official_condition_image, official_final_resize, to_rgb_float
    from addsr_core.precision import resolve_precision
    from addsr_core.sampling.ddpm import ddpm_timesteps
    from addsr_core.sampling.denoisers import TiledDenoiser
    from addsr_core.sampling.tiling import effective_tile

    image = torch.rand(1, 3, 8, 8)
    return {
        "empty array": (lambda: to_rgb_float(np.zeros((0, 4, 3), np.uint8)), InputError, "image is empty"),
        "empty tensor": (lambda: to_rgb_float(torch.zeros(1, 3, 0, 4)), InputError, "image is empty"),
        "NaN": (lambda: to_rgb_float(torch.full((1, 3, 4, 4), float("nan"))), InputError, "NaN"),
        "channels": (lambda: to_rgb_float(np.zeros((4, 4, 5), np.uint8)), InputError, "5 channels"),
        "image type": (lambda: to_rgb_float("photo.png"), InputError, "unsupported image type"),
        "tiny": (lambda: condition_sizes((1, 1), scale=1, min_size=0), InputError, "smaller than 8 px"),
        "LR NaN": (lambda: official_condition_image(torch.full((1, 3, 8, 8), float("nan"))), InputError, "NaN"),
        "scale": (lambda: condition_sizes((16, 16), scale=0), OptionsError, "scale must be >= 1"),
        "resize method": (lambda: official_final_resize(image, (3, 3), method="lanczos"), OptionsError, "method"),
        "colour fix channels": (lambda: adain_color_fix(image, torch.rand(1, 1, 8, 8)), InputError, "channels"),
        "colour fix name": (lambda: apply_color_fix("histogram", image, image), OptionsError, "unknown colour fix"),
        "precision": (lambda: resolve_precision("fp8", torch.device("cpu")), OptionsError, "fp8"),
        "steps": (lambda: ddpm_timesteps(0), OptionsError, "steps must be between"),
        "tile": (lambda: effective_tile(8, 8, 0), OptionsError, "tile must be positive"),
        "overlap": (lambda: TiledDenoiser(None, tile=4, overlap=4), OptionsError, "larger than the overlap"),
    }


@pytest.mark.parametrize("case", sorted(_user_errors()))
def test_bad_images_and_options_raise_addsr_errors(case):
    """What a user can get wrong is an AddSRError (the CLI exits 2 with the message, the nodes show it)."""
    call, error, words = _user_errors()[case]
    with pytest.raises(error, match=words):
        call()


def test_an_unreadable_image_names_the_file(tmp_path):
    from addsr_core.imaging.prepare import load_image

    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    with pytest.raises(InputError, match="notes.png.*PNG, JPEG"):
        load_image(text)
    with pytest.raises(InputError, match="missing.png: no such file"):
        load_image(tmp_path / "missing.png")


# --- in the nodes ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors_kit")
    paths = make_kit(root)
    stablesr = write_tiny_stablesr_files(root / "sr", context_dim=TEXT_WIDTH)
    mp = pytest.MonkeyPatch()
    mp.setenv("ADDSR_ADDSR_DIR", str(root / "addsr"))
    mp.setenv("ADDSR_RAM_DIR", str(root / "ram"))
    mp.setenv("ADDSR_STABLESR_DIR", str(root / "sr" / "stablesr"))
    mp.setenv("ADDSR_VAE_DIR", str(root / "vae_missing"))
    yield {"root": root, "sd2": paths["sd2"], "stablesr": stablesr}
    mp.undo()


def test_loader_nodes_show_the_broken_file_message(kit):
    root = kit["root"]
    cases = [
        (root / "addsr" / "torn_pack.safetensors", lambda name: nodes.AddSRModelLoader().load(name, "fp32")),
        (root / "ram" / "torn_ram.safetensors", lambda name: nodes.AddSRRAMLoader().load(name, "none", "fp32")),
        (root / "sr" / "stablesr" / "torn_sr.safetensors", lambda name: StableSRModelLoader().load(name, "auto", "fp32")),
    ]
    for path, load in cases:
        _truncated(path)
        with pytest.raises((CheckpointError, AddSRInputError)) as err:
            load(path.name)
        _assert_clear_safetensors_error(str(err.value), path, "truncated")
        path.unlink()


@pytest.fixture(scope="module")
def addsr_loaded(kit):
    (model,) = nodes.AddSRModelLoader().load("AddSR-tiny", "fp32")
    (ram,) = nodes.AddSRRAMLoader().load("ram_base.pth", "DAPE.pth", "fp32")
    vae = FakeComfyVAE(kit["sd2"])
    image = torch.rand(1, 24, 32, 3, generator=torch.Generator().manual_seed(0))
    (cond,) = nodes.AddSREncodeLR().encode(image, vae, ram, scale=2, min_size=64)
    return model, ram, vae, cond


def sd15_conditioning():
    return [[torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(0)), {"pooled_output": None}]]


def _assert_names_the_sd2_clip(message):
    for words in ("768 wide (an SD 1.x CLIP)", f"needs {TEXT_WIDTH}", "SD 2.x checkpoint, 1024 wide", "Load Checkpoint",
                  "v2-1_512-ema-pruned.safetensors"):
        assert words in message, message


def test_sd15_conditioning_into_the_addsr_sampler(kit, addsr_loaded):
    model, ram, vae, cond = addsr_loaded
    good = FakeComfyCLIP(kit["sd2"]).conditioning("x")
    with pytest.raises(AddSRInputError) as err:
        nodes.AddSRSampler().sample(model, cond, sd15_conditioning(), good, steps=1)
    _assert_names_the_sd2_clip(str(err.value))
    assert "positive" in str(err.value) and "CLIP Text Encode" in str(err.value)
    with pytest.raises(AddSRInputError, match="negative conditioning is 768 wide"):
        nodes.AddSRSampler().sample(model, cond, good, sd15_conditioning(), steps=1, cfg=4.0)
    # The library refuses it too (CLI, scripts), before any network call.
    models = AddSRModels(model.unet.module, model.controlnet.module, cond.vae.vae, ram.encoder.module)
    with pytest.raises(TextWidthError, match="prompt conditioning is 768 wide.*SD 2.x text encoder"):
        sample(models, cond.cond, sd15_conditioning()[0][0], None, AddSROptions(steps=1))


class _SD15Clip:
    def tokenize(self, text):
        return text

    def encode_from_tokens(self, tokens):
        return sd15_conditioning()[0][0]


def test_sd15_clip_into_the_all_in_one_node(addsr_loaded):
    model, ram, vae, _ = addsr_loaded
    image = torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(1))
    with pytest.raises(AddSRInputError) as err:
        nodes.AddSRUpscale().upscale(image, model, ram, vae, _SD15Clip(), steps=1, scale=2, min_size=64)
    _assert_names_the_sd2_clip(str(err.value))
    assert "clip input" in str(err.value)


def test_sd15_conditioning_into_the_stablesr_sampler(kit):
    names = kit["stablesr"]["files"]
    (model,) = StableSRModelLoader().load(names["full"].name, "auto", "fp32")
    (cfw,) = StableSRCFWLoader().load(names["cfw"].name, "fp32")
    image = torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(2))
    with pytest.raises(AddSRInputError) as err:
        StableSRSampler().sample(model, cfw, image, sd15_conditioning(), steps=1)
    _assert_names_the_sd2_clip(str(err.value))
    assert "SD-Turbo / 768-v" in str(err.value)
    with pytest.raises(TextWidthError, match="prompt conditioning is 768 wide"):
        sample_latent(model.model, torch.zeros(1, 4, 8, 8), sd15_conditioning()[0][0], StableSROptions(steps=1, latent_tile_px=512),
                      noise=SeededNoise(0))
