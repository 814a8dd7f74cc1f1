"""Training datasets: skipping and counting bad images, determinism, tags, paired folders by name."""
import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data as skdata

from addsr_core.training.config import DataConfig
from addsr_core.training.data import (
    RAM_MEAN,
    RAM_STD,
    DataError,
    HRDegradationDataset,
    PairedFolderDataset,
    ResumableSampler,
    build_dataset,
    collate,
    load_tags,
    ram_input,
    sample_rngs,
)


def _cfg(**kw):
    return dataclasses.replace(DataConfig(), **kw)


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture(scope="module")
def hr_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("hr")
    _save(root / "astronaut.png", skdata.astronaut())  # 512x512, 414 KB
    _save(root / "coffee.png", skdata.coffee())  # 400x600: padded/cropped
    _save(root / "chelsea.png", skdata.chelsea())  # 300x451 = 135300 px < 384*384: tiny
    _save(root / "small_file.jpg", skdata.astronaut()[:400, :400])  # enough pixels, but < 100 KB as JPEG
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)  # unreadable header
    (root / "notes.txt").write_text("not an image")
    (root / "tags").mkdir()
    (root / "tags" / "astronaut.txt").write_text("astronaut, flag, suit,\n")
    return root


def test_hr_dataset_skips_and_counts_unreadable_and_tiny_images(hr_folder):
    ds = HRDegradationDataset([hr_folder], _cfg(resolution=128), tags=load_tags(hr_folder / "tags"))
    assert len(ds) == 2 and sorted(p.split("/")[-1] for p in ds.items) == ["astronaut.png", "coffee.png"]
    rep = ds.report
    assert rep.found == 5 and rep.used == 2 and rep.skipped_count == 3
    reasons = {r: [p.split("/")[-1] for p in paths] for r, paths in rep.skipped.items()}
    assert reasons["unreadable"] == ["broken.png"]
    assert reasons["fewer than 147456 pixels"] == ["chelsea.png"]
    assert reasons["file smaller than 100 KB"] == ["small_file.jpg"]
    assert rep.missing_tags == 1  # coffee has no tag file
    summary = ds.summary()
    assert "2 of 5 images usable; 3 skipped." in summary and "chelsea.png" in summary
    assert json.loads(json.dumps(rep.to_dict()))["skipped"]["unreadable"] == 1


def test_hr_dataset_sample_shapes_ranges_and_determinism(hr_folder):
    cfg = _cfg(resolution=128, min_file_kb=0, null_text_ratio=0.0)
    ds = HRDegradationDataset([hr_folder], cfg, tags={"astronaut": "astronaut, flag"})
    a = ds[(0, 1234)]
    assert a["gt"].shape == (3, 128, 128) and a["cond"].shape == (3, 128, 128)
    assert 0 <= float(a["cond"].min()) and float(a["cond"].max()) <= 1
    assert a["prompt"] == "astronaut, flag" and a["skipped"] == []
    again = HRDegradationDataset([hr_folder], cfg, tags={"astronaut": "astronaut, flag"})[(0, 1234)]
    assert torch.equal(a["gt"], again["gt"]) and torch.equal(a["cond"], again["cond"])
    other = ds[(0, 99)]
    assert not torch.equal(a["cond"], other["cond"])
    # the condition is the upsampled LR: blurrier than the target, but the same picture
    assert float((a["cond"] - a["gt"]).abs().mean()) < 0.2
    empty = HRDegradationDataset([hr_folder], dataclasses.replace(cfg, null_text_ratio=1.0), tags={"astronaut": "x"})
    assert empty[(0, 1234)]["prompt"] == ""


def test_hr_dataset_full_resolution_sample(hr_folder):
    ds = HRDegradationDataset([hr_folder], _cfg())
    s = ds[(1, 7)]  # coffee: 400x600, reflect-padded to 512 rows
    assert s["gt"].shape == (3, 512, 512) and s["cond"].shape == (3, 512, 512)


def test_image_that_fails_to_decode_later_is_replaced_and_named(tmp_path):
    good = _save(tmp_path / "a_good.png", skdata.astronaut())
    data = good.read_bytes()
    (tmp_path / "b_truncated.png").write_bytes(data[: len(data) // 2])  # header fine, pixels cut off
    ds = HRDegradationDataset([tmp_path], _cfg(resolution=128, min_file_kb=0))
    assert len(ds) == 2  # the header scan cannot see the truncation
    s = ds[(1, 5)]
    assert s["path"].endswith("a_good.png")
    assert len(s["skipped"]) == 1 and "b_truncated.png" in s["skipped"][0]
    batch = collate([s, ds[(0, 6)]])
    assert batch["gt"].shape == (2, 3, 128, 128) and len(batch["skipped"]) == 1


def test_empty_or_missing_folders_raise_clear_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        HRDegradationDataset([tmp_path / "nope"], _cfg())
    with pytest.raises(DataError, match="empty"):
        ResumableSampler(0, seed=0)


def _solid(value, size):
    return np.full((size, size, 3), value, dtype=np.uint8)


def test_paired_folders_pair_by_sorted_file_name(tmp_path):
    root = tmp_path / "pairs"
    # Written in an order that a plain unsorted listing would not pair correctly.
    for stem, value in [("c", 30), ("a", 10), ("b", 20)]:
        _save(root / "gt" / f"{stem}.png", _solid(value, 128))
    for stem, value in [("b", 21), ("d", 41), ("a", 11)]:
        _save(root / "sr_bicubic" / f"{stem}.png", _solid(value, 128))
    (root / "tag").mkdir()
    (root / "tag" / "a.txt").write_text("apple, red,")
    ds = PairedFolderDataset([root], _cfg(resolution=128, null_text_ratio=0.0))
    assert [e[0].split("/")[-1] for e in ds.items] == ["a.png", "b.png"]
    for i in range(2):
        s = ds[(i, 3)]
        gt_v, cond_v = round(float(s["gt"].mean()) * 255), round(float(s["cond"].mean()) * 255)
        assert cond_v == gt_v + 1  # each gt met its own partner
    assert ds[(0, 0)]["prompt"] == "apple, red," and ds[(1, 0)]["prompt"] == ""
    rep = ds.report
    assert rep.used == 2 and rep.found == 4 and rep.missing_tags == 1
    assert [p.split("/")[-1] for p in rep.skipped["no partner in sr_bicubic/"]] == ["c.png"]
    assert [p.split("/")[-1] for p in rep.skipped["no partner in gt/"]] == ["d.png"]


def test_paired_lr_folder_is_upsampled_and_tiny_pairs_are_skipped(tmp_path):
    root = tmp_path / "pairs"
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    _save(root / "gt" / "x.png", big)
    _save(root / "lr" / "x.png", big[::4, ::4].copy())
    _save(root / "gt" / "y.png", big[:64, :64].copy())  # smaller than the crop
    _save(root / "lr" / "y.png", big[:16:4, :16:4].copy())
    ds = PairedFolderDataset([root], _cfg(resolution=128))
    assert len(ds) == 1 and ds.report.skipped["gt smaller than 128 px"][0].endswith("y.png")
    s = ds[(0, 1)]
    assert s["gt"].shape == s["cond"].shape == (3, 128, 128)
    # the same random crop is taken from the gt and from the upsampled lr
    lr = torch.from_numpy(big[::4, ::4].copy()).permute(2, 0, 1).float() / 255
    up = torch.clamp((F.interpolate(lr[None], size=(256, 256), mode="bicubic")[0] * 255).round(), 0, 255) / 255
    gt = torch.from_numpy(big).permute(2, 0, 1).float() / 255
    rng, _ = sample_rngs(1)  # replay the sample's crop offsets
    t, l = int(rng.integers(0, 129)), int(rng.integers(0, 129))
    assert torch.equal(gt[:, t:t + 128, l:l + 128], s["gt"])
    assert torch.equal(up[:, t:t + 128, l:l + 128], s["cond"])


def test_tag_sources_json_and_jsonl(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({"img1.png": "a, b", "img2": ["c", "d"]}))
    assert load_tags(tmp_path / "t.json") == {"img1": "a, b", "img2": "c, d"}
    (tmp_path / "t.jsonl").write_text('{"file": "x/img3.jpg", "tags": "e"}\n\n{"stem": "img4", "tags": ["f"]}\n')
    assert load_tags(tmp_path / "t.jsonl") == {"img3": "e", "img4": "f"}
    (tmp_path / "bad.jsonl").write_text('{"tags": "e"}\n')
    with pytest.raises(DataError, match="line 1"):
        load_tags(tmp_path / "bad.jsonl")


def test_build_dataset_dispatches_on_source(hr_folder):
    ds = build_dataset(_cfg(hr_folders=(str(hr_folder),), tags=str(hr_folder / "tags"), resolution=128))
    assert isinstance(ds, HRDegradationDataset) and ds.tags == {"astronaut": "astronaut, flag, suit,"}


def test_sampler_is_seeded_sharded_and_resumable():
    full = list(ResumableSampler(10, seed=3))
    assert sorted(i for i, _ in full) == list(range(10))
    assert full == list(ResumableSampler(10, seed=3)) and full != list(ResumableSampler(10, seed=4))
    s = ResumableSampler(10, seed=3)
    it = iter(s)
    head = [next(it) for _ in range(4)]
    state = s.state_dict()
    resumed = ResumableSampler(10, seed=3)
    resumed.load_state_dict(state)
    assert head + list(resumed) == full
    epoch1 = list(resumed)  # the next epoch: another permutation, new per-sample seeds
    assert sorted(i for i, _ in epoch1) == list(range(10)) and epoch1 != full
    assert resumed.state_dict() == {"epoch": 2, "position": 0, "seed": 3}
    ranks = [list(ResumableSampler(10, seed=3, num_replicas=3, rank=r)) for r in range(3)]
    assert all(len(r) == 4 for r in ranks)
    assert set(i for r in ranks for i, _ in r) == set(range(10))
    with pytest.raises(ValueError, match="seed"):
        ResumableSampler(10, seed=5).load_state_dict(state)


def test_ram_input_is_bicubic_clamped_imagenet_normalised():
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    out = ram_input(x)
    ref = F.interpolate(x, size=(384, 384), mode="bicubic").clamp(0, 1)
    ref = (ref - torch.tensor(RAM_MEAN).view(1, 3, 1, 1)) / torch.tensor(RAM_STD).view(1, 3, 1, 1)
    assert out.shape == (2, 3, 384, 384) and torch.allclose(out, ref, atol=1e-6)
