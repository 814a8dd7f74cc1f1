"""Full-size layouts, key maps, and the errors a user sees for a bad checkpoint."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from addsr_core.loading import CheckpointError, read_state_dict
from addsr_core.loading.keymaps import diffusers_vae_to_ldm, ldm_vae_to_diffusers, rename_legacy_vae_keys
from addsr_core.loading.models import load_controlnet, load_unet, load_vae
from addsr_core.loading.pack import is_packed_file, load_addsr, pack_release, unpack_release
from addsr_core.models import AutoencoderKL, ControlNetModel, UNet2DConditionModel, UNetConfig, VAEConfig
from conftest import MANIFESTS, PARITY, assert_matches


def manifest(name):
    return json.loads((MANIFESTS / f"{name}.json").read_text())


def meta_shapes(module):
    return {k: list(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize(
    "name,cls,cfg",
    [
        ("addsr_unet", UNet2DConditionModel, UNetConfig.from_diffusers),
        ("addsr_controlnet", ControlNetModel, UNetConfig.from_diffusers),
        ("sd2_vae_diffusers", AutoencoderKL, VAEConfig.from_diffusers),
    ],
)
def test_full_size_model_matches_manifest(name, cls, cfg):
    m = manifest(name)
    with torch.device("meta"):
        model = cls(cfg(m["config"]))
    assert meta_shapes(model) == m["tensors"]
    assert sum(p.numel() for p in model.parameters()) == m.get("num_elements", sum(p.numel() for p in model.parameters()))


def test_default_configs_are_the_sd2_manifests():
    with torch.device("meta"):
        assert meta_shapes(UNet2DConditionModel(UNetConfig())) == manifest("addsr_unet")["tensors"]
        assert meta_shapes(AutoencoderKL(VAEConfig())) == manifest("sd2_vae_diffusers")["tensors"]


def test_ldm_vae_mapping_covers_manifest_both_ways():
    m = manifest("sd2_vae_ldm")
    ldm = {k: torch.empty(v, device="meta") for k, v in m["tensors"].items()}
    ours = ldm_vae_to_diffusers(ldm)
    for ldm_key, target in m["ldm_to_diffusers"].items():
        assert ldm_vae_to_diffusers({ldm_key: ldm["first_stage_model." + ldm_key]}).keys() == {target["diffusers"]}
    assert {k: list(v.shape) for k, v in ours.items()} == manifest("sd2_vae_diffusers")["tensors"]
    back = diffusers_vae_to_ldm(ours)
    assert {k: list(v.shape) for k, v in back.items()} == m["tensors"]


def test_legacy_vae_attention_names():
    m = manifest("sd2_vae_diffusers")
    legacy = {old: torch.zeros(1) for old in m["legacy_attention_key_map"]}
    assert sorted(rename_legacy_vae_keys(legacy)) == sorted(m["legacy_attention_key_map"].values())


@pytest.fixture
def vae_sd():
    return load_file(PARITY / "vae_small/vae/diffusion_pytorch_model.safetensors")


def _decode(vae):
    z = load_file(PARITY / "vae_small/inputs.safetensors")["latent"]
    with torch.no_grad():
        return vae.decode(z)


def test_vae_from_ldm_single_file_and_legacy_names(tmp_path, vae_sd):
    expected = load_file(PARITY / "vae_small/expected.safetensors")["decode"]
    cfg = VAEConfig.from_diffusers(json.loads((PARITY / "vae_small/vae/config.json").read_text()))
    # A whole SD-style checkpoint: the VAE under first_stage_model.*, plus unrelated tensors.
    full = diffusers_vae_to_ldm(vae_sd)
    full["model.diffusion_model.out.0.weight"] = torch.zeros(3)
    save_file(full, tmp_path / "sd2.safetensors")
    assert_matches(_decode(load_vae(tmp_path / "sd2.safetensors", config=cfg)), expected)
    # Pickled .ckpt with the Lightning wrapper, read with weights_only.
    torch.save({"state_dict": full}, tmp_path / "sd2.ckpt")
    assert_matches(_decode(load_vae(tmp_path / "sd2.ckpt", config=cfg)), expected)
    # Legacy diffusers attention names.
    inverse = {v: k for k, v in manifest("sd2_vae_diffusers")["legacy_attention_key_map"].items()}
    legacy = {inverse.get(k, k): v for k, v in vae_sd.items()}
    assert legacy.keys() != vae_sd.keys()
    save_file(legacy, tmp_path / "legacy.safetensors")
    assert_matches(_decode(load_vae(tmp_path / "legacy.safetensors", config=cfg)), expected)


def test_dtype_at_load_time():
    unet = load_unet(PARITY / "unet_small", dtype=torch.float16)
    assert {p.dtype for p in unet.parameters()} == {torch.float16}
    assert not any(p.is_meta for p in unet.parameters())


def _copy_fixture(tmp_path, name, sub):
    dst = tmp_path / name
    shutil.copytree(PARITY / name / sub, dst / sub)
    return dst


def test_truncated_file_gives_clear_error(tmp_path):
    root = _copy_fixture(tmp_path, "unet_small", "unet")
    f = root / "unet/diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model.safetensors' is not a valid .safetensors file \(truncated"):
        load_unet(root)


def test_missing_key_is_listed(tmp_path):
    root = _copy_fixture(tmp_path, "controlnet_small", "controlnet")
    f = root / "controlnet/diffusion_pytorch_model.safetensors"
    sd = load_file(f)
    del sd["controlnet_mid_block.weight"]
    save_file(sd, f)
    with pytest.raises(CheckpointError) as err:
        load_controlnet(root)
    assert "Missing 1 keys" in str(err.value) and "controlnet_mid_block.weight" in str(err.value)
    assert "AddSR ControlNet" in str(err.value)


def test_wrong_family_checkpoint(tmp_path, vae_sd):
    save_file(vae_sd, tmp_path / "a_vae.safetensors")
    root = _copy_fixture(tmp_path, "unet_small", "unet")
    shutil.copy(tmp_path / "a_vae.safetensors", root / "unet/diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_unet(root)
    msg = str(err.value)
    assert "not a AddSR UNet checkpoint" in msg or "probably not" in msg
    assert "looks like a diffusers VAE" in msg
    # A UNet folder handed to the VAE loader names the class mismatch.
    with pytest.raises(CheckpointError, match="UNet2DConditionModel"):
        load_vae(PARITY / "unet_small" / "unet")


def test_misshapen_key(tmp_path):
    root = _copy_fixture(tmp_path, "unet_small", "unet")
    f = root / "unet/diffusion_pytorch_model.safetensors"
    sd = load_file(f)
    sd["conv_in.weight"] = torch.zeros(32, 4, 1, 1)
    save_file(sd, f)
    with pytest.raises(CheckpointError, match=r"conv_in.weight: file \(32, 4, 1, 1\) vs model \(32, 4, 3, 3\)"):
        load_unet(root)


def test_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": {"w": torch.zeros(1)}, "evil": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="never do"):
        read_state_dict(tmp_path / "evil.ckpt")


def test_missing_file_and_bad_extension(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "nope.safetensors")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="Unsupported checkpoint extension"):
        read_state_dict(tmp_path / "x.txt")


def _release(tmp_path):
    root = tmp_path / "release"
    shutil.copytree(PARITY / "unet_small/unet", root / "unet")
    shutil.copytree(PARITY / "controlnet_small/controlnet", root / "controlnet")
    return root


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_pack_and_unpack_roundtrip(tmp_path, dtype):
    root = _release(tmp_path)
    packed = pack_release(root, tmp_path / "addsr.safetensors", dtype=dtype)
    assert is_packed_file(packed)
    unet, controlnet = load_addsr(packed)
    ref_unet, ref_cn = load_addsr(root)
    want = torch.float32 if dtype == "fp32" else torch.float16
    for ours, ref in ((unet, ref_unet), (controlnet, ref_cn)):
        for (k, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items()):
            assert a.dtype == want
            assert torch.equal(a, b.to(want)), k
    back = unpack_release(packed, tmp_path / "unpacked")
    unet2, _ = load_addsr(back)
    assert all(torch.equal(a, b) for a, b in zip(unet2.state_dict().values(), unet.state_dict().values()))


def test_non_packed_file_is_rejected(tmp_path, vae_sd):
    save_file(vae_sd, tmp_path / "plain.safetensors")
    assert not is_packed_file(tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="not an AddSR packed file"):
        load_addsr(tmp_path / "plain.safetensors")
