"""The standalone command: upscale files and folders, resume, convert, self-check, errors."""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from addsr_core import cli, cli_upscale
from addsr_core.addsr.tiny import write_tiny_kit


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return write_tiny_kit(tmp_path_factory.mktemp("cli_kit"))


def model_args(kit):
    return ["--addsr", str(kit["addsr"]), "--sd2", str(kit["sd2"]), "--ram", str(kit["ram"]), "--dape", str(kit["dape"]),
            "--tag-list", str(kit["tag_list"]), "--device", "cpu", "--dtype", "fp32"]


def write_images(folder, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (w, h, mode) in enumerate(sizes):
        channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
        arr = rng.integers(0, 255, (h, w, channels), dtype=np.uint8)
        Image.fromarray(arr[..., 0] if mode == "L" else arr, mode).save(folder / f"img{i}.png")


def upscale(kit, src, out, *extra):
    return cli.main(["upscale", str(src), "-o", str(out), *model_args(kit), "--scale", "2", "--steps", "1",
                     "--tile", "128", "--tile-overlap", "32", "--vae-tile", "256", "--min-size", "32", *extra])


def test_folder_upscale_and_resume(kit, tmp_path, monkeypatch, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    write_images(src, [(40, 24, "RGB"), (33, 21, "RGBA"), (20, 20, "L")])
    assert upscale(kit, src, out) == 0
    sizes = {p.name: Image.open(p).size for p in sorted(out.iterdir())}
    assert sizes == {"img0.png": (80, 48), "img1.png": (66, 42), "img2.png": (40, 40)}
    assert Image.open(out / "img1.png").mode == "RGBA"
    stamp = (out / "img0.png").stat().st_mtime_ns
    capsys.readouterr()
    assert upscale(kit, src, out) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (out / "img0.png").stat().st_mtime_ns == stamp


def test_interrupted_batch_keeps_finished_images(kit, tmp_path, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    write_images(src, [(24, 24, "RGB"), (24, 24, "RGB"), (24, 24, "RGB")])
    real, done = cli_upscale.upscale_file, []

    def flaky(models, s, d, *a):
        if len(done) == 1:
            raise KeyboardInterrupt
        real(models, s, d, *a)
        done.append(d)

    monkeypatch.setattr(cli_upscale, "upscale_file", flaky)
    assert upscale(kit, src, out) == 130
    assert sorted(p.name for p in out.iterdir()) == ["img0.png"]  # no partial file left behind
    monkeypatch.setattr(cli_upscale, "upscale_file", real)
    assert cli_upscale.plan_jobs(src, out, overwrite=False) == [(src / "img1.png", out / "img1.png"), (src / "img2.png", out / "img2.png")]


def test_cli_errors(kit, tmp_path, capsys):
    assert upscale(kit, tmp_path / "missing.png", tmp_path / "o.png") == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("x")
    assert upscale(kit, tmp_path / "notes.txt", tmp_path / "o.png") == 2
    assert "not a supported image" in capsys.readouterr().err
    write_images(tmp_path / "in", [(24, 24, "RGB")])
    (tmp_path / "file.png").write_bytes(b"")
    assert upscale(kit, tmp_path / "in", tmp_path / "file.png") == 2
    assert "must be a folder" in capsys.readouterr().err
    assert upscale(kit, tmp_path / "in", tmp_path / "o", "--device", "cuda") == 2 or torch.cuda.is_available()
    broken = tmp_path / "broken"
    shutil.copytree(kit["addsr"], broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    args = ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "o"), *model_args(kit), "--addsr", str(broken)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "truncated" in err and "Re-download it" in err
    with pytest.raises(SystemExit):
        cli.main(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "o"), *model_args(kit), "--steps", "7"])


def test_convert_roundtrip(kit, tmp_path, capsys):
    packed = tmp_path / "addsr.safetensors"
    assert cli.main(["convert", "pack", str(kit["addsr"]), str(packed), "--dtype", "fp16"]) == 0
    assert cli.main(["convert", "unpack", str(packed), str(tmp_path / "back")]) == 0
    assert (tmp_path / "back" / "unet" / "config.json").is_file()
    assert cli.main(["convert", "pack", str(tmp_path), str(tmp_path / "x.safetensors")]) == 2
    assert "config.json" in capsys.readouterr().err


def test_selfcheck(capsys):
    assert cli.main(["selfcheck"]) == 0
    out = capsys.readouterr().out
    assert "checks that the INSTALL works" in out and "says nothing about quality" in out and "OK:" in out


def test_tag_folder_writes_ram_tags_and_resumes(kit, tmp_path, capsys):
    from addsr_core.imaging.prepare import load_image
    from addsr_core.ram import load_ram

    src, out = tmp_path / "in", tmp_path / "tags"
    write_images(src, [(40, 24, "RGB"), (33, 21, "RGBA")])
    (src / "broken.png").write_bytes(b"not a png")
    args = ["tag", str(src), "-o", str(out), "--ram", str(kit["ram"]), "--dape", str(kit["dape"]),
            "--tag-list", str(kit["tag_list"]), "--device", "cpu", "--dtype", "fp32"]
    assert cli.main(args) == 1  # the unreadable file is reported, the others are written
    assert "skipped broken.png" in capsys.readouterr().out
    _, tagger = load_ram(kit["ram"], kit["dape"], tag_list=kit["tag_list"])
    for name in ("img0", "img1"):
        expected = tagger.tags(load_image(src / f"{name}.png").rgb)[0]
        assert (out / f"{name}.txt").read_text() == expected + "\n"
    assert sorted(p.name for p in out.iterdir()) == ["img0.txt", "img1.txt"]

    (src / "broken.png").unlink()
    (out / "img0.txt").write_text("kept\n")
    assert cli.main(args) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (out / "img0.txt").read_text() == "kept\n"


def test_a_flag_of_another_method_is_refused_not_ignored(kit, tmp_path, capsys):
    write_images(tmp_path / "in", [(24, 24, "RGB")])
    for flag, value, methods in [("--start-point", "noise", "seesr or stablesr"), ("--fidelity", "0.7", "stablesr"),
                                 ("--procedure", "whole_latent", "stablesr")]:
        with pytest.raises(SystemExit) as exit_:
            upscale(kit, tmp_path / "in", tmp_path / "o", flag, value)
        assert exit_.value.code == 2 and f"{flag} is for --method {methods}, not addsr" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert upscale(kit, tmp_path / "in", tmp_path / "o", "--start-point", "lr") == 0  # the default is no choice
