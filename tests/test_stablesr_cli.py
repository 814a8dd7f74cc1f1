"""``addsr upscale --method stablesr``: the same files, batch, resume and errors as AddSR's."""
import pytest
from PIL import Image

from addsr_core import cli, cli_upscale
from addsr_core.addsr.tiny import TEXT_WIDTH, write_tiny_kit
from addsr_core.stablesr.tiny import write_tiny_stablesr_files
from test_cli import write_images

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("stablesr_cli_kit")
    sd2 = write_tiny_kit(root / "addsr")  # its SD2 file: the text encoder
    files = write_tiny_stablesr_files(root, context_dim=TEXT_WIDTH)["files"]
    return {"sd2": sd2["sd2"], "stablesr": files["full"], "cfw": files["cfw"]}


def stablesr_upscale(kit, src, out, *extra, cfw=True):
    models = ["--stablesr", str(kit["stablesr"]), "--sd2", str(kit["sd2"])] + (["--cfw", str(kit["cfw"])] if cfw else [])
    # --min-size 128: the model's 512 px minimum would make the test images large (the tiny UNet needs 128)
    return cli.main(["upscale", str(src), "-o", str(out), *models, "--method", "stablesr", "--scale", "2", "--steps", "1",
                     "--min-size", "128", "--device", "cpu", "--dtype", "fp32", *extra])


def test_resumable_stablesr_batch_with_the_official_defaults(kit, tmp_path, monkeypatch, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    write_images(src, [(40, 24, "RGB"), (33, 21, "RGBA"), (20, 20, "L")])
    real, done, used = cli_upscale.upscale_file, [], []

    def killed_after_one(models, s, d, options, device, tqdm):
        used.append(options)
        if done:
            raise KeyboardInterrupt
        real(models, s, d, options, device, tqdm)
        done.append(d)

    monkeypatch.setattr(cli_upscale, "upscale_file", killed_after_one)
    assert stablesr_upscale(kit, src, out) == 130
    assert sorted(p.name for p in out.iterdir()) == ["img0.png"]  # no partial file left behind
    options = used[0]
    assert type(options) is cli_upscale.StableSROptions
    assert (options.procedure, options.fidelity, options.color_fix, options.pixel_tile_px, options.pixel_overlap_px) == \
        ("official", 0.5, "adain", 1280, 280)
    monkeypatch.setattr(cli_upscale, "upscale_file", real)
    stamp = (out / "img0.png").stat().st_mtime_ns
    capsys.readouterr()
    assert stablesr_upscale(kit, src, out) == 0
    sizes = {p.name: Image.open(p).size for p in sorted(out.iterdir())}
    assert sizes == {"img0.png": (80, 48), "img1.png": (66, 42), "img2.png": (40, 40)}
    assert Image.open(out / "img1.png").mode == "RGBA"
    assert (out / "img0.png").stat().st_mtime_ns == stamp  # finished images are not redone
    assert stablesr_upscale(kit, src, out) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_stablesr_flags_and_errors(kit, tmp_path, capsys):
    write_images(tmp_path / "in", [(24, 24, "RGB")])
    for extra, cfw, message in [((), False, "--method stablesr needs --cfw"),
                                (("--psr-weight", "0.3"), True, "--psr-weight is for --method addsr")]:
        with pytest.raises(SystemExit) as exit_:  # usage errors, before anything loads
            stablesr_upscale(kit, tmp_path / "in", tmp_path / "o", *extra, cfw=cfw)
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert stablesr_upscale(kit, tmp_path / "in", tmp_path / "o", "--fidelity", "1.5") == 2
    assert "fidelity" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    assert stablesr_upscale(kit, tmp_path / "in", tmp_path / "o", "--scale", "1.5", "--procedure", "whole_latent") == 0
    assert Image.open(tmp_path / "o" / "img0.png").size == (36, 36)  # StableSR takes a fractional scale
