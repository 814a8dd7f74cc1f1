"""``convert safetensors``: a .safetensors copy of RAM, DAPE, StableSR and CFW files loads exactly
like the original, in the core loaders and in the nodes (listings, *768* naming, RAM + DAPE pairs)."""
import os
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from addsr_core import cli
from addsr_core.loading.io import CheckpointError, read_state_dict, unwrap_state_dict
from addsr_core.loading.pack import FORMAT as PACK_FORMAT
from addsr_core.loading.to_safetensors import write_safetensors_copy
from addsr_core.ram import load_ram_model
from addsr_core.ram.tiny import write_tiny_ram
from addsr_core.stablesr import load_cfw_vae, load_stablesr, read_checkpoint
from addsr_core.stablesr.metadata import stablesr_metadata
from addsr_core.stablesr.tiny import TINY_STABLESR, write_tiny_stablesr_files


def convert(source, *output) -> "os.PathLike":
    assert cli.main(["convert", "safetensors", str(source), *map(str, output)]) == 0
    return output[0] if output else source.with_suffix(".safetensors")


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return same_tensors(a.state_dict(), b.state_dict())


@pytest.fixture(scope="module")
def ram_files(tmp_path_factory):
    return write_tiny_ram(tmp_path_factory.mktemp("ram"))


@pytest.fixture(scope="module")
def stablesr_files(tmp_path_factory):
    return write_tiny_stablesr_files(tmp_path_factory.mktemp("stablesr"))["files"]


def test_ram_and_dape_copies_keep_every_tensor_and_load_the_same(ram_files, tmp_path):
    ram = convert(ram_files["ram"], tmp_path / "ram_base.safetensors")
    dape = convert(ram_files["dape"], tmp_path / "DAPE.safetensors")
    # As stored: the base unwrapped from {'model': ...} with its legacy names, DAPE's LoRA keys as they are.
    assert same_tensors(read_state_dict(ram), unwrap_state_dict(torch.load(ram_files["ram"], weights_only=True)))
    assert same_tensors(read_state_dict(dape), torch.load(ram_files["dape"], weights_only=True))
    with safe_open(str(dape), "pt") as f:
        assert f.metadata() == {"converted_from": "DAPE.pth"}
    original = load_ram_model(ram_files["ram"], ram_files["dape"], tag_head=True)
    for pair in ((ram, dape), (ram, ram_files["dape"]), (ram_files["ram"], dape)):
        assert same_weights(load_ram_model(*pair, tag_head=True), original), pair


def test_stablesr_and_cfw_copies_load_the_same(stablesr_files, tmp_path):
    for kind in ("full", "full_768v", "cfw"):
        copy = convert(stablesr_files[kind], tmp_path / stablesr_files[kind].with_suffix(".safetensors").name)
        assert same_tensors(read_state_dict(copy), read_checkpoint(stablesr_files[kind]))  # unwrapped, no Lightning metadata
    full, full_768v = (tmp_path / stablesr_files[k].with_suffix(".safetensors").name for k in ("full", "full_768v"))
    assert same_weights(load_stablesr(full), load_stablesr(stablesr_files["full"]))
    # The tiny files' head layout (our pickle metadata) rides along, so the copy loads the same network.
    with safe_open(str(full), "pt") as f:
        assert f.metadata() == {**stablesr_metadata(TINY_STABLESR), "converted_from": stablesr_files["full"].name}
    assert load_stablesr(full).config == load_stablesr(stablesr_files["full"]).config
    copy_v = load_stablesr(full_768v)
    assert copy_v.config.prediction_type == "v_prediction"  # still told by the *768* name
    assert same_weights(copy_v, load_stablesr(stablesr_files["full_768v"]))
    cfw = tmp_path / stablesr_files["cfw"].with_suffix(".safetensors").name
    assert same_weights(load_cfw_vae(cfw), load_cfw_vae(stablesr_files["cfw"]))


def test_node_loaders_list_and_load_the_copies(ram_files, stablesr_files, tmp_path, monkeypatch):
    import nodes
    from nodes.stablesr_loaders import StableSRCFWLoader, StableSRModelLoader

    addsr, ram_dir, stablesr = tmp_path / "addsr", tmp_path / "ram", tmp_path / "stablesr"
    for folder in (addsr, ram_dir, stablesr):
        folder.mkdir()
        monkeypatch.setenv(f"ADDSR_{folder.name.upper()}_DIR", str(folder))
    monkeypatch.setenv("ADDSR_VAE_DIR", str(tmp_path / "no_vae"))
    # RAM beside the AddSR release: the .pth and its copies are listed, a packed AddSR file is not.
    shutil.copy(ram_files["ram"], addsr / "ram_swin_large_14m.pth")
    write_safetensors_copy(addsr / "ram_swin_large_14m.pth")
    write_safetensors_copy(ram_files["dape"], ram_dir / "DAPE.safetensors")
    shutil.copy(ram_files["tag_list"], ram_dir)
    shutil.copy(ram_files["thresholds"], ram_dir)
    save_file({"unet.x": torch.zeros(1)}, str(addsr / "addsr_fp16.safetensors"), metadata={"format": PACK_FORMAT})
    listed = nodes.AddSRRAMLoader.INPUT_TYPES()["required"]["ram"][0]
    assert listed == ["DAPE.safetensors", "ram_swin_large_14m.pth", "ram_swin_large_14m.safetensors"]
    (copy,) = nodes.AddSRRAMLoader().load("ram_swin_large_14m.safetensors", "DAPE.safetensors", "fp32",
                                          tag_list="ram_tag_list.txt")
    original = load_ram_model(ram_files["ram"], ram_files["dape"], tag_head=True)
    assert same_weights(copy.encoder.module, original) and copy.tagger is not None

    for kind in ("full", "full_768v", "cfw"):
        write_safetensors_copy(stablesr_files[kind], stablesr / stablesr_files[kind].with_suffix(".safetensors").name)
    names = {kind: stablesr_files[kind].with_suffix(".safetensors").name for kind in ("full", "full_768v", "cfw")}
    assert set(names.values()) <= set(StableSRModelLoader.INPUT_TYPES()["required"]["model"][0])
    assert set(names.values()) <= set(StableSRCFWLoader.files())
    (model,) = StableSRModelLoader().load(names["full"], "auto", "fp32")
    (model_v,) = StableSRModelLoader().load(names["full_768v"], "auto", "fp32")
    (cfw,) = StableSRCFWLoader().load(names["cfw"], "fp32")
    assert model.model.config.prediction_type == "epsilon" and model_v.model.config.prediction_type == "v_prediction"
    assert same_weights(model.model, load_stablesr(stablesr_files["full"]))
    assert same_weights(cfw.vae, load_cfw_vae(stablesr_files["cfw"]))


def test_tied_and_viewed_tensors_get_their_own_copy(tmp_path):
    weight = torch.arange(12.0).reshape(3, 4)
    source = tmp_path / "tied.pth"
    torch.save({"model": {"a.weight": weight, "b.weight": weight, "half": weight[1:], "t": weight.t()}}, source)
    copy = read_state_dict(convert(source))
    assert same_tensors(copy, {"a.weight": weight, "b.weight": weight, "half": weight[1:], "t": weight.t().contiguous()})


class _RunsCode:
    def __init__(self, arg):
        self.arg = arg

    def __reduce__(self):
        return os.system, (self.arg,)


def test_convert_refuses_what_it_cannot_copy_safely(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "payload": _RunsCode(f"touch {marker}")}, evil)
    assert cli.main(["convert", "safetensors", str(evil)]) == 2
    assert "never do" in capsys.readouterr().err
    assert not marker.exists() and not list(tmp_path.glob("evil.safetensors*"))
    plain = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(1)}, str(plain))
    assert cli.main(["convert", "safetensors", str(plain)]) == 2
    assert "not a pickled checkpoint" in capsys.readouterr().err
    torch.save({"w": torch.ones(1)}, tmp_path / "w.pth")
    assert cli.main(["convert", "safetensors", str(tmp_path / "w.pth"), str(tmp_path / "w.bin")]) == 2
    assert "*.safetensors" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="no tensors"):
        torch.save({"epoch": 3}, tmp_path / "empty.ckpt")
        write_safetensors_copy(tmp_path / "empty.ckpt")
