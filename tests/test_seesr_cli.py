"""``addsr upscale --method seesr``: the same batch, resume and error handling as AddSR's."""
import pytest
from PIL import Image

from addsr_core import cli, cli_upscale
from addsr_core.addsr.tiny import write_tiny_kit
from test_cli import model_args, write_images

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return write_tiny_kit(tmp_path_factory.mktemp("seesr_cli_kit"))


@pytest.fixture()
def small(monkeypatch):
    """Record the options each image is upscaled with."""
    used = []
    real = cli_upscale.upscale_file

    def recording(models, src, dst, options, *rest):
        used.append(options)
        return real(models, src, dst, options, *rest)

    monkeypatch.setattr(cli_upscale, "upscale_file", recording)
    return used


def seesr_upscale(kit, src, out, *extra):
    # --min-size 32: keep the official 512 minimum size from making test images large
    return cli.main(["upscale", str(src), "-o", str(out), *model_args(kit), "--method", "seesr", "--scale", "2",
                     "--steps", "2", "--vae-tile", "256", "--min-size", "32", *extra])


def test_resumable_seesr_batch(kit, tmp_path, monkeypatch, small, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    write_images(src, [(40, 24, "RGB"), (33, 21, "RGBA"), (20, 20, "L")])
    real, done = cli_upscale.upscale_file, []

    def killed_after_one(models, s, d, options, device, tqdm):
        assert type(options) is cli_upscale.SeeSROptions
        if done:
            raise KeyboardInterrupt
        real(models, s, d, options, device, tqdm)
        done.append(d)

    monkeypatch.setattr(cli_upscale, "upscale_file", killed_after_one)
    assert seesr_upscale(kit, src, out) == 130
    assert sorted(p.name for p in out.iterdir()) == ["img0.png"]
    monkeypatch.setattr(cli_upscale, "upscale_file", real)
    stamp = (out / "img0.png").stat().st_mtime_ns
    (src / "broken.png").write_bytes(b"not a png")
    assert seesr_upscale(kit, src, out) == 1  # the two left are written, the unreadable one reported
    assert "skipped broken.png" in capsys.readouterr().out
    sizes = {p.name: Image.open(p).size for p in sorted(out.iterdir())}
    assert sizes == {"img0.png": (80, 48), "img1.png": (66, 42), "img2.png": (40, 40)}
    assert (out / "img0.png").stat().st_mtime_ns == stamp  # finished images are not redone
    options = small[-1]
    assert (options.steps, options.guidance_scale, options.latent_tile_px, options.latent_overlap_px) == (2, 5.5, 768, 32)


def test_seesr_flags_and_errors(kit, tmp_path, small, capsys):
    write_images(tmp_path / "in", [(24, 24, "RGB")])
    assert seesr_upscale(kit, tmp_path / "in", tmp_path / "o", "--start-point", "noise", "--cfg", "1") == 0
    assert (small[-1].start_point, small[-1].guidance_scale) == ("noise", 1.0)
    assert seesr_upscale(kit, tmp_path / "in", tmp_path / "o2", "--steps", "0") == 2
    assert "steps must be between 1 and 1000" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # AddSR keeps its 1-4 steps
        cli.main(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "o3"), *model_args(kit), "--steps", "7"])
