"""nodes/model_files.py: one place for listing and resolving model files, with cached folder listings.

A folder is walked once while no directory in it changes (ComfyUI's folder_paths rule: keyed by
folder, invalidated by a directory mtime); a file dropped in still shows up at the next listing.
"""
from __future__ import annotations

import os
import sys
import time
import types

import pytest

import nodes
from nodes import comfy_bridge, model_files


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch):
    model_files.clear_cache()
    for kind in ("ADDSR", "RAM", "STABLESR", "VAE"):
        monkeypatch.delenv(f"ADDSR_{kind}_DIR", raising=False)
    yield
    model_files.clear_cache()


@pytest.fixture
def walks(monkeypatch):
    """The folders walked, in order."""
    seen = []
    real = model_files._walk

    def counting(root):
        seen.append(root)
        return real(root)

    monkeypatch.setattr(model_files, "_walk", counting)
    return seen


def _settle(*folders):
    """Date every directory under ``folders`` a minute back: as a folder nobody touched lately."""
    past = time.time() - 60
    for folder in folders:
        for dirpath, _, _ in os.walk(folder):
            os.utime(dirpath, (past, past))


def _touch(path, data=b"w"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_listing_twice_walks_once_and_a_new_file_shows_up(tmp_path, monkeypatch, walks):
    root = tmp_path / "addsr"
    _touch(root / "a.safetensors")
    _touch(root / "sub" / "b.pth")
    _settle(root)
    monkeypatch.setenv("ADDSR_ADDSR_DIR", str(root))

    assert model_files.list_models("addsr") == ["a.safetensors", "sub/b.pth"]
    assert model_files.list_models("addsr") == ["a.safetensors", "sub/b.pth"]
    assert model_files.list_models("addsr", folders_with="unet") == ["a.safetensors", "sub/b.pth"]
    assert len(walks) == 1

    _touch(root / "c.ckpt")  # the folder's mtime changes
    assert model_files.list_models("addsr") == ["a.safetensors", "c.ckpt", "sub/b.pth"]
    assert len(walks) == 2
    _settle(root)
    model_files.list_models("addsr")
    model_files.list_models("addsr")
    assert len(walks) == 3  # walked once after the change settled, then cached again

    _touch(root / "sub" / "d.pt")  # only the subfolder's mtime changes
    assert "sub/d.pt" in model_files.list_models("addsr")
    (root / "a.safetensors").unlink()
    assert "a.safetensors" not in model_files.list_models("addsr")
    _touch(root / "sub" / "new" / "e.bin")  # a new subfolder (its parent's mtime changes)
    assert "sub/new/e.bin" in model_files.list_models("addsr")


def test_a_folder_changed_just_now_is_not_trusted(tmp_path, monkeypatch, walks):
    """Same clock tick as the walk: the mtime could hide a file written right after, so such a folder
    is walked again until it has settled (git's racy-timestamp rule)."""
    root = tmp_path / "addsr"
    _touch(root / "a.safetensors")
    monkeypatch.setenv("ADDSR_ADDSR_DIR", str(root))
    model_files.list_models("addsr")
    model_files.list_models("addsr")
    assert len(walks) == 2
    _settle(root)
    model_files.list_models("addsr")
    model_files.list_models("addsr")
    assert len(walks) == 3


def test_release_folders_and_what_is_inside_them(tmp_path, monkeypatch):
    root = tmp_path / "addsr"
    for part in ("unet", "controlnet"):
        _touch(root / "AddSR" / part / "config.json", b"{}")
        _touch(root / "AddSR" / part / "diffusion_pytorch_model.safetensors")
    _touch(root / "packed.safetensors")
    _touch(root / "notes.md")
    _touch(root / ".git" / "objects.pt")
    monkeypatch.setenv("ADDSR_ADDSR_DIR", str(root))
    assert model_files.list_models("addsr", folders_with="unet") == ["AddSR", "packed.safetensors"]
    assert model_files.list_models("addsr") == ["packed.safetensors"]  # the release's own files are not picked alone


def test_resolve_finds_files_in_every_configured_folder(tmp_path, monkeypatch):
    env_a, env_b, comfy_dir, extra = (tmp_path / n for n in ("env_a", "env_b", "comfy_models_ram", "extra_ram"))
    _touch(env_a / "first.pth")
    _touch(env_b / "second.pth")
    _touch(comfy_dir / "third.safetensors")
    _touch(extra / "deep" / "fourth.pth")
    _touch(extra / "ram_tag_list.txt", b"cat\n")
    _touch(env_b / "first.pth")  # also in a later folder: the first folder wins
    monkeypatch.setenv("ADDSR_RAM_DIR", os.pathsep.join([str(env_a), str(env_b)]))
    fake = types.SimpleNamespace(get_folder_paths=lambda kind: [str(comfy_dir), str(extra)] if kind == "ram" else [])
    monkeypatch.setitem(sys.modules, "folder_paths", fake)  # ComfyUI's models/ram + extra_model_paths.yaml

    assert model_files.list_models("ram") == ["deep/fourth.pth", "first.pth", "second.pth", "third.safetensors"]
    assert model_files.resolve("ram", "first.pth") == env_a / "first.pth"
    assert model_files.resolve("ram", "second.pth") == env_b / "second.pth"
    assert model_files.resolve("ram", "third.safetensors") == comfy_dir / "third.safetensors"
    assert model_files.resolve("ram", "deep/fourth.pth") == extra / "deep" / "fourth.pth"
    assert model_files.resolve(("addsr", "ram"), "ram_tag_list.txt") == extra / "ram_tag_list.txt"
    assert model_files.list_files(("ram",), model_files.TEXT_EXTENSIONS) == ["ram_tag_list.txt"]
    _touch(env_a / "dropped_in.pth")  # just added: resolved from disk, not from a stale list
    assert model_files.resolve("ram", "dropped_in.pth") == env_a / "dropped_in.pth"

    with pytest.raises(comfy_bridge.ModelFileNotFoundError) as err:
        model_files.resolve(("stablesr", "ram"), "missing.ckpt")
    message = str(err.value)
    assert "'missing.ckpt' not found in models/stablesr (no such folder) or models/ram (" in message
    for folder in (env_a, env_b, comfy_dir, extra):
        assert str(folder) in message
    assert isinstance(err.value, FileNotFoundError) and "Put the file there" in message


def test_loader_lists_come_from_the_cache(tmp_path, monkeypatch, walks):
    addsr, ram, stablesr = tmp_path / "addsr", tmp_path / "ram", tmp_path / "stablesr"
    _touch(addsr / "AddSR" / "unet" / "config.json", b"{}")
    _touch(ram / "ram_swin_large_14m.pth")
    _touch(ram / "DAPE.pth")
    _touch(ram / "ram_tag_list.txt", b"cat\n")
    _touch(stablesr / "stablesr_000117.ckpt")
    _settle(addsr, ram, stablesr)
    for kind, folder in (("ADDSR", addsr), ("RAM", ram), ("STABLESR", stablesr)):
        monkeypatch.setenv(f"ADDSR_{kind}_DIR", str(folder))

    def lists():
        return (nodes.AddSRModelLoader.INPUT_TYPES()["required"]["model"][0],
                nodes.AddSRRAMLoader.INPUT_TYPES()["required"]["ram"][0],
                nodes.AddSRRAMLoader.INPUT_TYPES()["optional"]["tag_list"][0],
                nodes.StableSRModelLoader.INPUT_TYPES()["required"]["model"][0])

    first = lists()
    assert first == (["AddSR"], ["DAPE.pth", "ram_swin_large_14m.pth"], ["none", "ram_tag_list.txt"],
                     ["stablesr_000117.ckpt"])
    walked = len(walks)
    assert sorted(set(walks)) == sorted(str(f) for f in (addsr, ram, stablesr)) and walked == 3
    assert lists() == first and len(walks) == walked  # every INPUT_TYPES call after the first: no walk

    _touch(addsr / "AddSR_seesr" / "unet" / "config.json", b"{}")
    assert lists()[0] == ["AddSR", "AddSR_seesr"]


def test_the_packed_file_check_is_read_once_per_unchanged_file(tmp_path, monkeypatch):
    from safetensors.torch import save_file
    import torch

    addsr = tmp_path / "addsr"
    addsr.mkdir()
    save_file({"w": torch.zeros(2)}, str(addsr / "DAPE.safetensors"))
    monkeypatch.setenv("ADDSR_ADDSR_DIR", str(addsr))
    import addsr_core.loading.pack as pack

    calls = []
    real = pack.is_packed_file
    monkeypatch.setattr(pack, "is_packed_file", lambda path: calls.append(path) or real(path))
    from nodes.loaders import _ram_files_in_addsr

    assert _ram_files_in_addsr() == ["DAPE.safetensors"]
    assert _ram_files_in_addsr() == ["DAPE.safetensors"]
    assert len(calls) == 1
    save_file({"w": torch.zeros(3)}, str(addsr / "DAPE.safetensors"))  # rewritten: read again
    _ram_files_in_addsr()
    assert len(calls) == 2
