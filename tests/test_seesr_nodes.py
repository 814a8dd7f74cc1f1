"""SeeSR Sampler node and the loader's family choice, on tiny checkpoints, without ComfyUI installed."""
import logging
import shutil

import pytest
import torch

import nodes
from addsr_core.loading.family import resolve_family
from nodes.common import AddSRInputError
from nodekit import FakeComfyCLIP, FakeComfyVAE, make_kit

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("seesr_kit")
    paths = make_kit(root)
    shutil.copytree(paths["addsr"], root / "addsr" / "SeeSR-tiny")  # the SeeSR release has the same layout
    mp = pytest.MonkeyPatch()
    mp.setenv("ADDSR_ADDSR_DIR", str(root / "addsr"))
    mp.setenv("ADDSR_RAM_DIR", str(root / "ram"))
    yield paths
    mp.undo()


@pytest.fixture(scope="module")
def loaded(kit):
    (model,) = nodes.AddSRModelLoader().load("SeeSR-tiny", "fp32")
    (ram,) = nodes.AddSRRAMLoader().load("ram_base.pth", "DAPE.pth", "fp32")
    vae, clip = FakeComfyVAE(kit["sd2"]), FakeComfyCLIP(kit["sd2"])
    lr = torch.rand(1, 20, 24, 3, generator=torch.Generator().manual_seed(0))
    (cond,) = nodes.AddSREncodeLR().encode(lr, vae, ram, scale=4, min_size=64)
    return model, cond, clip


def test_loader_tells_the_family_by_metadata_choice_or_name(kit, tmp_path):
    from safetensors.torch import save_file

    assert nodes.AddSRModelLoader().load("SeeSR-tiny", "fp32")[0].family == "seesr"
    assert nodes.AddSRModelLoader().load("AddSR-tiny", "fp32")[0].family == "addsr"
    assert nodes.AddSRModelLoader().load("AddSR-tiny", "fp32", family="seesr")[0].family == "seesr"
    assert nodes.AddSRModelLoader.INPUT_TYPES()["optional"]["family"][0] == ["auto", "addsr", "seesr"]
    tagged = tmp_path / "weights.safetensors"
    save_file({"x": torch.zeros(1)}, str(tagged), metadata={"family": "seesr"})
    assert resolve_family(tagged) == ("seesr", "file metadata")
    assert resolve_family(tagged, "addsr") == ("addsr", "chosen")
    assert resolve_family(tmp_path / "plain")[0] == "addsr"
    with pytest.raises(ValueError, match="family"):
        resolve_family(tagged, "sdxl")


def test_seesr_sampler_runs_with_progress_and_previews(loaded, monkeypatch):
    model, cond, clip = loaded
    updates = []
    monkeypatch.setattr(nodes.comfy_bridge.Progress, "update", lambda self, n=1, preview=None: updates.append((n, self.total)))
    (latent,) = nodes.SeeSRSamplerV2().sample(model, cond, clip.conditioning("a, clean, high-resolution, 8k"),
                                            clip.conditioning("dotted, noise"), seed=1, steps=3, cfg=5.5)
    h, w = cond.cond.control_image.shape[-2:]
    assert latent["samples"].shape == (1, 4, h // 8, w // 8) and torch.isfinite(latent["samples"]).all()
    assert [n for n, _ in updates].count(1) == 3 and [n for n, _ in updates].count(0) == 3  # calls + previews
    assert {total for _, total in updates} == {3}
    again = nodes.SeeSRSamplerV2().sample(model, cond, clip.conditioning("a, clean, high-resolution, 8k"),
                                        clip.conditioning("dotted, noise"), seed=1, steps=3, cfg=5.5)[0]
    assert torch.equal(again["samples"], latent["samples"])


def test_seesr_sampler_cancels(loaded, monkeypatch):
    model, cond, clip = loaded
    calls = []

    class Interrupted(Exception):
        pass

    def interrupt():
        calls.append(1)
        if len(calls) > 2:
            raise Interrupted

    monkeypatch.setattr(nodes.comfy_bridge, "check_interrupt", interrupt)
    with pytest.raises(Interrupted):  # Cancel is checked before sampling and at every network call
        nodes.SeeSRSamplerV2().sample(model, cond, clip.conditioning("x"), clip.conditioning("y"), steps=2, cfg=1.0,
                                    official_tiles=False)


def test_seesr_sampler_halves_the_tile_on_oom_then_gives_up(loaded, monkeypatch):
    from addsr_core.seesr import pipeline as seesr

    model, cond, clip = loaded
    tiles = []

    def fake_sample(models, c, pos, neg, options, **kw):
        tiles.append(options.latent_tile_px)
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(seesr, "sample", fake_sample)
    with pytest.raises(AddSRInputError, match="out of memory even with 256px tiles"):
        nodes.SeeSRSamplerV2().sample(model, cond, clip.conditioning("x"), clip.conditioning("y"), tile_size=1024)
    assert tiles == [1024, 512, 256]


def test_the_deprecated_sampler_keeps_its_latent_pixel_values(loaded, monkeypatch):
    """A workflow saved with the old SeeSR Sampler (tiles in latent pixels) runs the V2 node's code on the
    same tiles in output pixels: the same latent, the same tiles."""
    from addsr_core.seesr import pipeline as seesr

    model, cond, clip = loaded
    old = nodes.SeeSRSampler.INPUT_TYPES()["required"]
    assert (old["tile_size"][1]["default"], old["tile_overlap"][1]["default"]) == (96, 4)
    assert nodes.SeeSRSampler.DEPRECATED and not getattr(nodes.SeeSRSamplerV2, "DEPRECATED", False)
    seen = []
    real = seesr.sample
    monkeypatch.setattr(seesr, "sample", lambda *a, **k: seen.append(a[4]) or real(*a, **k))
    args = (model, cond, clip.conditioning("a"), clip.conditioning("b"))
    (a,) = nodes.SeeSRSampler().sample(*args, seed=2, steps=2, cfg=1.0, tile_size=8, tile_overlap=2, official_tiles=False)
    (b,) = nodes.SeeSRSamplerV2().sample(*args, seed=2, steps=2, cfg=1.0, tile_size=64, tile_overlap=16,
                                         official_tiles=False)
    assert torch.equal(a["samples"], b["samples"])
    assert [(o.latent_tile_px, o.latent_overlap_px) for o in seen] == [(64, 16), (64, 16)]
    assert cond.cond.control_image.shape[-1] > 64  # the image is larger than the tile: it really tiles



def test_the_deprecated_sampler_says_when_its_overlap_is_capped(loaded, caplog):
    """The old node allowed an overlap up to the tile; the one rule caps it at half. A saved workflow beyond
    that runs at the cap, and the log says so."""
    model, cond, clip = loaded
    args = (model, cond, clip.conditioning("a"), clip.conditioning("b"))
    with caplog.at_level(logging.WARNING, logger="addsr"):
        (a,) = nodes.SeeSRSampler().sample(*args, seed=2, steps=1, cfg=1.0, tile_size=8, tile_overlap=6,
                                           official_tiles=False)
    assert "tile overlap of 48 px is more than half the 64 px tile; running with 32 px" in caplog.text
    (b,) = nodes.SeeSRSamplerV2().sample(*args, seed=2, steps=1, cfg=1.0, tile_size=64, tile_overlap=32,
                                         official_tiles=False)
    assert torch.equal(a["samples"], b["samples"])


def test_seesr_sampler_warns_on_addsr_weights_and_rejects_bad_inputs(kit, loaded, caplog):
    _, cond, clip = loaded
    (addsr,) = nodes.AddSRModelLoader().load("AddSR-tiny", "fp32")
    with caplog.at_level(logging.WARNING, logger="addsr"):
        nodes.SeeSRSamplerV2().sample(addsr, cond, clip.conditioning("x"), clip.conditioning("y"), steps=1, cfg=1.0)
    assert "SeeSR Sampler got addsr weights" in caplog.text
    with pytest.raises(AddSRInputError, match="AddSR Load Model"):
        nodes.SeeSRSamplerV2().sample("nope", cond, clip.conditioning("x"), clip.conditioning("y"))
    with pytest.raises(AddSRInputError, match="start_point"):
        nodes.SeeSRSamplerV2().sample(addsr, cond, clip.conditioning("x"), clip.conditioning("y"), start_point="middle")


def test_seesr_sampler_refuses_sd15_conditioning(kit, loaded):
    """Same check and message as the AddSR Sampler (nodes.common.conditioning_tensor with the UNet's width)."""
    from addsr_core.addsr.tiny import TEXT_WIDTH

    model, cond, clip = loaded
    sd15 = [[torch.randn(1, 77, 768), {"pooled_output": None}]]
    with pytest.raises(AddSRInputError) as err:
        nodes.SeeSRSamplerV2().sample(model, cond, sd15, clip.conditioning("y"), steps=1)
    for words in ("positive conditioning is 768 wide (an SD 1.x CLIP)", f"needs {TEXT_WIDTH}",
                  "SD 2.x checkpoint, 1024 wide", "Load Checkpoint", "CLIP Text Encode"):
        assert words in str(err.value), str(err.value)
    with pytest.raises(AddSRInputError, match="negative conditioning is 768 wide"):
        nodes.SeeSRSamplerV2().sample(model, cond, clip.conditioning("x"), sd15, steps=1, cfg=5.5)


def test_convert_pack_records_the_family_the_loader_reads(kit, tmp_path, monkeypatch, capsys):
    """`convert pack --family seesr` writes the metadata family=auto reads, whatever the file is called."""
    from addsr_core import cli
    from addsr_core.loading import read_safetensors_metadata

    seesr_folder = kit["addsr"].parent / "SeeSR-tiny"
    packs = {
        "neutral_a.safetensors": (kit["addsr"], ["--family", "seesr"]),  # explicit choice wins over the folder
        "neutral_b.safetensors": (seesr_folder, []),  # auto: the folder's name says seesr
        "neutral_c.safetensors": (kit["addsr"], []),  # auto, nothing telling: nothing recorded
        "seesr_named.safetensors": (seesr_folder, ["--family", "addsr"]),  # recorded addsr beats the name
    }
    for name, (folder, extra) in packs.items():
        assert cli.main(["convert", "pack", str(folder), str(tmp_path / name), "--dtype", "fp32", *extra]) == 0
    assert "family: seesr (recorded" in capsys.readouterr().out
    assert "family" not in read_safetensors_metadata(tmp_path / "neutral_c.safetensors")
    monkeypatch.setenv("ADDSR_ADDSR_DIR", str(tmp_path))
    load = nodes.AddSRModelLoader().load
    assert [load(name, "fp32")[0].family for name in packs] == ["seesr", "seesr", "addsr", "addsr"]
    assert resolve_family(tmp_path / "neutral_a.safetensors") == ("seesr", "file metadata")
    with pytest.raises(SystemExit):
        cli.main(["convert", "pack", str(seesr_folder), str(tmp_path / "x.safetensors"), "--family", "sdxl"])
    from addsr_core.loading.pack import pack_release

    with pytest.raises(ValueError, match="family must be one of"):
        pack_release(seesr_folder, tmp_path / "x.safetensors", family="sdxl")
