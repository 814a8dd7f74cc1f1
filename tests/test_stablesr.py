"""StableSR networks and loaders: SFT placement, time-aware encoder, CFW, key maps, safe .ckpt reading."""
import argparse
import json
import os
import sys
import types
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from addsr_core.loading.io import CheckpointError, check_state_dict
from addsr_core.loading.keymaps import diffusers_vae_to_ldm
from addsr_core.loading.keymaps_unet import (
    LDM_UNET_PREFIX,
    diffusers_unet_to_ldm,
    ldm_unet_to_diffusers,
)
from addsr_core.models import AutoencoderKL, UNet2DConditionModel, VAEConfig
from addsr_core.stablesr import (
    CFWAutoencoder,
    StableSRConfig,
    StableSRModel,
    TimeAwareEncoder,
    infer_stablesr_config,
    load_cfw_vae,
    load_lightning_checkpoint,
    load_stablesr,
    read_checkpoint,
    sd2_unet_config,
    split_stablesr_state_dict,
)
from addsr_core.stablesr.loading import cfw_state_dict_from_any, read_base_unet
from addsr_core.stablesr.spade import SPADE, unet_resnets
from addsr_core.stablesr.tiny import TINY_CFW, TINY_CONTEXT_DIM, TINY_STABLESR, seeded_weights, tiny_cfw, tiny_stablesr
from conftest import MANIFESTS, assert_matches

H, W = 24, 40  # a non-square latent: widths 40, 20, 10, 5 at the four UNet levels


@pytest.fixture(scope="module")
def model():
    return tiny_stablesr(0)


def _inputs(seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, 4, H, W, generator=g)
    lr = torch.randn(batch, 4, H, W, generator=g)
    ctx = torch.randn(batch, 7, TINY_CONTEXT_DIM, generator=g)
    return z, lr, ctx


def _ldm_state(model: StableSRModel, extra: dict | None = None) -> dict:
    """The model in the official single-file layout (what the released .ckpt's state_dict holds)."""
    sd = model.state_dict()
    out = diffusers_unet_to_ldm({k[5:]: v for k, v in sd.items() if k.startswith("unet.")})
    out.update({"structcond_stage_model." + k[len("struct_encoder."):]: v for k, v in sd.items() if k.startswith("struct_encoder.")})
    out.update(extra or {})
    return out


# --- SFT placement and the time-aware encoder ---------------------------------------------------


def test_sft_layers_sit_in_every_resnet_and_see_features_of_their_own_width(model):
    resnets = unet_resnets(model.unet)
    assert len(resnets) == 22 and all(isinstance(r.spade, SPADE) for r in resnets)
    seen = []

    def spy(module, args, output):
        h, struct_cond = args
        feature = struct_cond[str(h.shape[-1])]
        seen.append((h.shape[-1], tuple(feature.shape[-2:]) == tuple(h.shape[-2:])))

    handles = [r.spade.register_forward_hook(spy) for r in resnets]
    z, lr, ctx = _inputs()
    with torch.no_grad():
        model(z, 999, lr, ctx)
    for handle in handles:
        handle.remove()
    # down (2 per level), mid (2), up (3 per level, deepest first)
    expected = [40, 40, 20, 20, 10, 10, 5, 5] + [5, 5] + [5, 5, 5, 10, 10, 10, 20, 20, 20, 40, 40, 40]
    assert [w for w, _ in seen] == expected
    assert all(match for _, match in seen)


def test_sft_is_applied_to_the_residual_branch_before_the_skip(model):
    resnet = model.unet.down_blocks[0].resnets[0]
    x = torch.randn(1, 32, 6, 10)
    temb = torch.randn(1, model.config.unet.time_embed_dim)
    feature = {"10": torch.randn(1, 32, 6, 10)}
    with torch.no_grad():
        h = resnet.conv1(torch.nn.functional.silu(resnet.norm1(x))) + resnet.time_emb_proj(torch.nn.functional.silu(temb))[:, :, None, None]
        h = resnet.conv2(torch.nn.functional.silu(resnet.norm2(h)))
        expected = x + resnet.spade(h, feature)
        assert torch.allclose(resnet(x, temb, feature), expected, atol=1e-6)


def test_encoder_returns_features_keyed_by_width(model):
    _, lr, _ = _inputs(batch=2)
    with torch.no_grad():
        features = model.struct_encoder(lr, torch.tensor([999, 10]))
    assert list(features) == ["40", "20", "10", "5"]
    assert [tuple(f.shape) for f in features.values()] == [(2, 32, 24, 40), (2, 32, 12, 20), (2, 32, 6, 10), (2, 32, 3, 5)]


def test_encoder_depends_on_the_timestep(model):
    _, lr, _ = _inputs()
    with torch.no_grad():
        a, b = model.struct_encoder(lr, 999), model.struct_encoder(lr, 0)
    assert (a["40"] - b["40"]).abs().max() > 1e-3


def test_encoder_rejects_a_latent_too_small_to_tell_its_levels_apart():
    encoder = seeded_weights(TimeAwareEncoder(TINY_STABLESR.encoder), 0)
    with pytest.raises(ValueError, match="too small"):
        encoder(torch.randn(1, 4, 8, 1), 500)


def test_sft_names_the_missing_width(model):
    z, lr, ctx = _inputs()
    with pytest.raises(ValueError, match="no time-aware encoder feature of width 40"):
        model.unet(z, 999, ctx, struct_cond={"12": torch.zeros(1, 32, 24, 12)})


def test_model_rejects_lr_latent_of_another_size(model):
    z, lr, ctx = _inputs()
    with pytest.raises(ValueError, match="must match"):
        model(z, 999, lr[..., :16], ctx)


# --- CFW -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cfw():
    return tiny_cfw(0)


def _image_and_latent(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, 48, 80, generator=g) * 2 - 1, torch.randn(1, 4, 6, 10, generator=g)


def test_cfw_with_zero_fidelity_is_the_plain_decoder(cfw):
    plain = AutoencoderKL(TINY_CFW)
    plain.load_state_dict({k: v for k, v in cfw.state_dict().items() if ".fusion_layer_" not in k})
    image, latent = _image_and_latent()
    with torch.no_grad():
        _, feats = cfw.encode_with_features(image)
        reference = plain.decode(latent)
        assert torch.equal(cfw.decode(latent, feats, 0.0), reference)
        assert torch.equal(cfw.decode(latent), reference)
        assert (cfw.decode(latent, feats, 0.5) - reference).abs().max() > 1e-3


def test_cfw_features_are_the_lr_encoder_levels_1_and_2(cfw):
    image, _ = _image_and_latent()
    with torch.no_grad():
        moments, feats = cfw.encode_with_features(image)
        plain_moments = AutoencoderKL.encode_moments(cfw, image)
        early = cfw.lr_features(image)
    assert torch.equal(moments, plain_moments)
    assert [tuple(f.shape) for f in feats] == [(1, 32, 24, 40), (1, 64, 12, 20)]  # H/2 (256 ch full size), H/4 (512)
    assert all(torch.equal(a, b) for a, b in zip(early, feats))


def test_cfw_fidelity_is_linear_in_the_fused_residual(cfw):
    """dec + w*F: the decoder output is not linear in w, but the fused block output is."""
    h = torch.randn(1, 64, 12, 20)
    enc = torch.randn(1, 64, 12, 20)
    block = cfw.decoder.fusion_layer_2
    with torch.no_grad():
        one, half = block(enc, h, 1.0), block(enc, h, 0.5)
    assert torch.allclose(half - h, (one - h) / 2, atol=1e-6)


def test_cfw_rejects_features_of_another_image_size(cfw):
    image, latent = _image_and_latent()
    with torch.no_grad():
        _, feats = cfw.encode_with_features(image[..., :40, :40])
        with pytest.raises(ValueError, match="8x the latent"):
            cfw.decode(latent, feats, 0.5)


# --- LDM <-> diffusers UNet keys -----------------------------------------------------------------


def test_ldm_unet_mapping_round_trips(model):
    ours = {k[5:]: v for k, v in model.state_dict().items() if k.startswith("unet.")}
    ldm = diffusers_unet_to_ldm(ours)
    assert all(k.startswith(LDM_UNET_PREFIX) for k in ldm)
    assert {k for k in ldm if ".spade." in k} and "model.diffusion_model.input_blocks.1.0.spade.mlp_gamma.weight" in ldm
    back, unplaced = ldm_unet_to_diffusers(ldm)
    assert not unplaced and back.keys() == ours.keys()
    assert all(back[k] is ours[k] for k in ours)


def test_plain_sd2_unet_via_ldm_file_equals_via_diffusers_keys(tmp_path):
    cfg = sd2_unet_config(block_out_channels=(32, 64), attention_heads=(4, 8), cross_attention_dim=TINY_CONTEXT_DIM,
                          down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    unet = seeded_weights(UNet2DConditionModel(cfg), 3, std=0.05).eval()
    # An SD2 single file: UNet + VAE + text encoder + EMA copy; only the UNet part must be taken.
    ldm = {k: v.clone() for k, v in diffusers_unet_to_ldm(unet.state_dict()).items()}
    ldm["first_stage_model.decoder.conv_in.weight"] = torch.zeros(1)
    ldm["cond_stage_model.model.positional_embedding"] = torch.zeros(1)
    ldm["model_ema.decay"] = torch.tensor(0.999)
    save_file(ldm, tmp_path / "sd21.safetensors")
    sd, _ = read_base_unet(tmp_path / "sd21.safetensors")
    loaded = UNet2DConditionModel(cfg)
    loaded.load_state_dict(sd, strict=True)
    z, _, ctx = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded.eval()(z[..., :16, :16], 500, ctx), unet(z[..., :16, :16], 500, ctx))


def test_ldm_unet_mapping_places_upsamplers_after_attention_or_not():
    ldm = {
        "model.diffusion_model.output_blocks.2.1.conv.weight": 0,  # level without attention: upsample at .1
        "model.diffusion_model.output_blocks.5.2.conv.weight": 1,  # with attention: .2
        "model.diffusion_model.output_blocks.5.1.proj_in.weight": 2,
        "model.diffusion_model.input_blocks.3.0.op.bias": 3,
        "model.diffusion_model.middle_block.2.out_layers.3.weight": 4,
        "model.diffusion_model.time_embed.2.bias": 5,
        "model.diffusion_model.out.0.weight": 6,
    }
    ours, unplaced = ldm_unet_to_diffusers(ldm)
    assert not unplaced
    assert ours == {
        "up_blocks.0.upsamplers.0.conv.weight": 0, "up_blocks.1.upsamplers.0.conv.weight": 1,
        "up_blocks.1.attentions.2.proj_in.weight": 2, "down_blocks.0.downsamplers.0.conv.bias": 3,
        "mid_block.resnets.1.conv2.weight": 4, "time_embedding.linear_2.bias": 5, "conv_norm_out.weight": 6,
    }
    assert diffusers_unet_to_ldm(ours) == ldm


def test_ldm_unet_mapping_reports_keys_it_cannot_place():
    _, unplaced = ldm_unet_to_diffusers({"model.diffusion_model.label_emb.0.weight": 0, "model.diffusion_model.input_blocks.1.2.x": 1})
    assert sorted(unplaced) == ["model.diffusion_model.input_blocks.1.2.x", "model.diffusion_model.label_emb.0.weight"]


# --- Full-size manifests (meta device) -----------------------------------------------------------


@pytest.fixture(scope="module")
def unet_manifest():
    return json.loads((MANIFESTS / "stablesr_unet_ldm.json").read_text())


def test_full_size_stablesr_matches_the_manifest_both_ways(unet_manifest):
    tensors = unet_manifest["tensors"]
    with torch.device("meta"):
        full = StableSRModel()
    ours = {k: tuple(v.shape) for k, v in _ldm_state(full).items()}
    assert ours == {k: tuple(v) for k, v in tensors.items()}
    assert sum(".spade." in k for k in ours) == unet_manifest["spade_tensors"] == 176
    fake = {k: torch.empty(v, device="meta") for k, v in tensors.items()}
    fake.update({f"first_stage_model.{k}": torch.empty(v, device="meta") for k, v in unet_manifest["first_stage_tensors"].items()})
    base, sft, encoder = split_stablesr_state_dict(fake)
    state = {f"unet.{k}": v for k, v in {**base, **sft}.items()} | {f"struct_encoder.{k}": v for k, v in encoder.items()}
    check_state_dict(full, state, family="StableSR", source="manifest")


def test_full_size_cfw_vae_matches_the_manifest():
    manifest = json.loads((MANIFESTS / "stablesr_cfw_vae_ldm.json").read_text())
    fake = {k: torch.empty(v, device="meta") for k, v in manifest["tensors"].items()}
    fake["loss.logvar"] = torch.empty((), device="meta")
    vae, fusion = cfw_state_dict_from_any(fake)
    assert len(fusion) == manifest["fusion_tensors"] == 156
    with torch.device("meta"):
        full = CFWAutoencoder(VAEConfig())
    check_state_dict(full, {**vae, **fusion}, family="CFW", source="manifest")


# --- Reading Lightning checkpoints safely --------------------------------------------------------


class _FakeModule:
    """Registers classes under the module paths Lightning pickles use, only while saving a test file."""

    def __init__(self, dotted: str, **attrs):
        self.names = [dotted.rsplit(".", i)[0] for i in range(dotted.count("."), -1, -1)]
        self.attrs, self.dotted = attrs, dotted

    def __enter__(self):
        for name in self.names:
            sys.modules.setdefault(name, types.ModuleType(name))
        for key, value in self.attrs.items():
            value.__module__, value.__qualname__ = self.dotted, key
            setattr(sys.modules[self.dotted], key, value)

    def __exit__(self, *exc):
        for name in self.names:
            sys.modules.pop(name, None)


def _lightning_ckpt(path, state_dict, legacy=False):
    class ModelCheckpoint:
        pass

    with _FakeModule("pytorch_lightning.callbacks.model_checkpoint", ModelCheckpoint=ModelCheckpoint):
        obj = {
            "epoch": 3, "global_step": 117000, "pytorch-lightning_version": "1.4.2", "state_dict": state_dict,
            "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.1), "kth": np.float64(0.5), "dirpath": "/x"}},
            "hyper_parameters": argparse.Namespace(lr=5e-5), "optimizer_states": [{"state": {}}], "arr": np.zeros(2),
        }
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)


@pytest.mark.parametrize("legacy", [False, True])
def test_lightning_checkpoint_loads_its_tensors_only(tmp_path, legacy):
    path = tmp_path / "lightning.ckpt"
    _lightning_ckpt(path, {"a.weight": torch.ones(2), "b": torch.zeros(1)}, legacy)
    assert "pytorch_lightning" not in sys.modules
    with pytest.raises(Exception):  # plain weights_only refuses it
        torch.load(path, weights_only=True)
    sd = read_checkpoint(path)
    assert sd.keys() == {"a.weight", "b"} and torch.equal(sd["a.weight"], torch.ones(2))
    whole = load_lightning_checkpoint(path)
    assert whole["global_step"] == 117000 and "inert" in repr(whole["hyper_parameters"])


class _RunsCode:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("func", [os.system, eval, __import__("subprocess").getoutput])
def test_checkpoint_that_imports_a_callable_is_refused_and_nothing_runs(tmp_path, func):
    marker = tmp_path / "ran"
    arg = f"open({str(marker)!r}, 'w').close()" if func is eval else f"touch {marker}"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "payload": _RunsCode(func, arg)}, path)
    with pytest.raises(CheckpointError, match="never do"):
        read_checkpoint(path)
    assert not marker.exists()


def test_missing_and_corrupt_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.ckpt")
    (tmp_path / "torn.ckpt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="corrupt"):
        read_checkpoint(tmp_path / "torn.ckpt")


# --- Loading the released file layouts -----------------------------------------------------------


def _outputs(m, seed=0):
    z, lr, ctx = _inputs(seed)
    with torch.no_grad():
        return m(z, torch.tensor([333]), lr, ctx)


@pytest.fixture(scope="module")
def model_outputs(model):
    return _outputs(model)


def _same_network(loaded, expected):
    # Same weights; only CPU kernel choice may differ (freshly loaded vs in-memory tensors).
    assert_matches(_outputs(loaded), expected, tol=1e-6, name="loaded model output")


def test_load_official_lightning_checkpoint(tmp_path, model, model_outputs):
    # The release also carries the SD2 VAE, the text encoder and schedule buffers: all ignored.
    extra = {"first_stage_model.decoder.conv_in.weight": torch.zeros(1), "cond_stage_model.model.ln_final.weight": torch.zeros(1),
             "betas": torch.zeros(1000), "alphas_cumprod": torch.zeros(1000)}
    _lightning_ckpt(tmp_path / "stablesr_000117.ckpt", _ldm_state(model, extra))
    loaded = load_stablesr(tmp_path / "stablesr_000117.ckpt", config=TINY_STABLESR)
    assert loaded.config.prediction_type == "epsilon"
    _same_network(loaded, model_outputs)


def test_prediction_type_from_the_release_name_or_given(tmp_path, model):
    from addsr_core.stablesr import guess_prediction_type

    assert guess_prediction_type("models/stablesr_768v_000139.ckpt") == "v_prediction"
    assert guess_prediction_type("stablesr_turbo.ckpt") == guess_prediction_type("stablesr_000117.ckpt") == "epsilon"
    save_file(_ldm_state(model), tmp_path / "stablesr_768v_000139.safetensors")
    loaded = load_stablesr(tmp_path / "stablesr_768v_000139.safetensors", config=TINY_STABLESR, prediction_type="v_prediction")
    assert loaded.config.prediction_type == "v_prediction"
    assert load_stablesr(tmp_path / "stablesr_768v_000139.safetensors", config=TINY_STABLESR).config.prediction_type == "epsilon"


def test_sr_module_on_top_of_a_base_checkpoint(tmp_path, model, model_outputs):
    full = _ldm_state(model)
    module = {k: v for k, v in full.items() if ".spade." in k or k.startswith("structcond_stage_model.")}
    base = {k: v for k, v in full.items() if k.startswith(LDM_UNET_PREFIX) and ".spade." not in k}
    torch.save(module, tmp_path / "webui_sr_module.ckpt")
    save_file(base, tmp_path / "sd_turbo.safetensors")
    with pytest.raises(CheckpointError, match="SR module"):
        load_stablesr(tmp_path / "webui_sr_module.ckpt", config=TINY_STABLESR)
    loaded = load_stablesr(tmp_path / "webui_sr_module.ckpt", base=tmp_path / "sd_turbo.safetensors", config=TINY_STABLESR)
    _same_network(loaded, model_outputs)


def test_base_overrides_the_unet_of_a_full_checkpoint(tmp_path, model):
    other = tiny_stablesr(5)
    save_file(_ldm_state(model), tmp_path / "stablesr.safetensors")
    save_file({k: v for k, v in _ldm_state(other).items() if k.startswith(LDM_UNET_PREFIX) and ".spade." not in k}, tmp_path / "base.safetensors")
    loaded = load_stablesr(tmp_path / "stablesr.safetensors", base=tmp_path / "base.safetensors", config=TINY_STABLESR)
    sd = loaded.state_dict()
    assert torch.equal(sd["unet.conv_in.weight"], other.state_dict()["unet.conv_in.weight"])
    assert torch.equal(sd["unet.down_blocks.0.resnets.0.spade.mlp_beta.weight"], model.state_dict()["unet.down_blocks.0.resnets.0.spade.mlp_beta.weight"])


def test_non_stablesr_file_is_named(tmp_path, model):
    save_file({k: v for k, v in _ldm_state(model).items() if ".spade." not in k and k.startswith(LDM_UNET_PREFIX)}, tmp_path / "sd21.safetensors")
    with pytest.raises(CheckpointError, match="not a StableSR checkpoint.*Stable Diffusion single-file"):
        load_stablesr(tmp_path / "sd21.safetensors", config=TINY_STABLESR)


def test_wrong_size_checkpoint_lists_the_mismatch(tmp_path, model):
    save_file(_ldm_state(model), tmp_path / "stablesr.safetensors")
    with pytest.raises(CheckpointError, match="Wrong shapes"):
        load_stablesr(tmp_path / "stablesr.safetensors", config=StableSRConfig())  # the full-size config, forced


def test_architecture_is_recognised_from_the_shapes_and_the_recorded_heads(tmp_path, model, model_outputs):
    from addsr_core.stablesr.metadata import stablesr_metadata

    # Our file records the tiny heads (8-channel) in its metadata: exactly the tiny configuration.
    save_file(_ldm_state(model), tmp_path / "stablesr.safetensors", metadata=stablesr_metadata(TINY_STABLESR))
    loaded = load_stablesr(tmp_path / "stablesr.safetensors")  # no config: sizes from the shapes, heads from the metadata
    assert loaded.config.unet == TINY_STABLESR.unet and loaded.config.encoder == TINY_STABLESR.encoder
    assert torch.equal(loaded.state_dict()["unet.conv_in.weight"], model.state_dict()["unet.conv_in.weight"])
    _same_network(loaded, model_outputs)
    odd = {k: v for k, v in _ldm_state(model).items() if "output_blocks.11" not in k}  # a UNet of no known size
    save_file(odd, tmp_path / "odd.safetensors")
    with pytest.raises(CheckpointError, match="not a StableSR model of a known size.*width 32"):
        load_stablesr(tmp_path / "odd.safetensors")


def test_without_recorded_heads_the_sd2_rule_applies_never_the_tiny_config(tmp_path, model):
    """A file without our metadata (every release) gets SD 2.x's heads, 64 channels each (4 in the
    encoder), whatever its size: the tiny test configuration is never tried on real loads."""
    from addsr_core.stablesr.loading import SD2_HEAD_CHANNELS, known_configs

    assert known_configs() == [StableSRConfig()]  # only the released SD2 size
    assert StableSRConfig().unet.attention_heads == tuple(w // SD2_HEAD_CHANNELS for w in StableSRConfig().unet.block_out_channels)
    save_file(_ldm_state(model), tmp_path / "stablesr.safetensors")
    torch.save(_ldm_state(model), tmp_path / "stablesr.ckpt")
    for name in ("stablesr.safetensors", "stablesr.ckpt"):
        loaded = load_stablesr(tmp_path / name)
        assert loaded.config.unet.attention_heads == (1, 1, 1, 1)  # widths 32/64: one head of up to 64 channels
        assert loaded.config.unet != TINY_STABLESR.unet and loaded.config.encoder.num_heads == 4
        assert loaded.config.unet == replace(TINY_STABLESR.unet, attention_heads=(1, 1, 1, 1))  # every size read off the shapes
    # The official SD2 size without metadata: the released configuration, as before.
    with torch.device("meta"):
        official = StableSRModel(StableSRConfig()).state_dict()
    assert infer_stablesr_config(official) == StableSRConfig()
    assert infer_stablesr_config(official, metadata={"converted_from": "stablesr_000117.ckpt"}) == StableSRConfig()


def test_recorded_heads_are_checked(tmp_path, model):
    from addsr_core.stablesr.metadata import ENCODER_HEADS_KEY, UNET_HEADS_KEY

    state = {k: v for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="unreadable attention head layout"):
        infer_stablesr_config(state, metadata={UNET_HEADS_KEY: "eight"})
    with pytest.raises(CheckpointError, match="known size with the heads its metadata records.*UNet \\[4, 8\\]"):
        infer_stablesr_config(state, metadata={UNET_HEADS_KEY: "[4, 8]"})  # two levels recorded, four in the file
    assert infer_stablesr_config(state, metadata={UNET_HEADS_KEY: "[2, 2, 4, 4]", ENCODER_HEADS_KEY: "2"}).unet.attention_heads == (2, 2, 4, 4)


def test_tiny_files_record_their_heads(tmp_path):
    """The tiny release-layout files (full .ckpt, 768v .ckpt, SR module .safetensors) say their
    heads, so they load as the tiny configuration with no config given."""
    from addsr_core.loading.io import read_safetensors_metadata
    from addsr_core.stablesr.metadata import UNET_HEADS_KEY
    from addsr_core.stablesr.tiny import write_tiny_stablesr_files

    files = write_tiny_stablesr_files(tmp_path)["files"]
    assert json.loads(read_safetensors_metadata(files["sr_module"])[UNET_HEADS_KEY]) == list(TINY_STABLESR.unet.attention_heads)
    for kind in ("full", "full_768v"):
        loaded = load_stablesr(files[kind])
        assert loaded.config.unet == TINY_STABLESR.unet and loaded.config.encoder == TINY_STABLESR.encoder, kind
    on_base = load_stablesr(files["sr_module"], base=files["base"])
    assert on_base.config.unet == TINY_STABLESR.unet


def test_sr_module_written_for_a_base_of_another_size_loads_on_it(tmp_path):
    """A base UNet of no known size (two levels, one resnet each): the SR module made for it
    (write_tiny_stablesr_files(base_unet=...)) loads on it with the architecture read off the
    shapes, and the full file's UNet is the base's."""
    from addsr_core.stablesr.tiny import write_tiny_stablesr_files

    cfg = sd2_unet_config(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                          attention_heads=(1, 1), cross_attention_dim=24)
    base = seeded_weights(UNet2DConditionModel(cfg), 5)
    ldm = diffusers_unet_to_ldm(base.state_dict(), layers_per_block=1)
    written = write_tiny_stablesr_files(tmp_path, base_unet=ldm)
    assert written["context_dim"] == 24
    bare = {k[len(LDM_UNET_PREFIX):]: v for k, v in ldm.items()}  # what ComfyUI's diffusion_model gives
    on_base = load_stablesr(written["files"]["sr_module"], base=bare)
    full = load_stablesr(written["files"]["full"])
    assert on_base.config.unet == full.config.unet == cfg
    assert on_base.config.encoder.channel_mult == (1, 1)  # one encoder level per UNet level
    for key, value in base.state_dict().items():
        assert torch.equal(on_base.unet.state_dict()[key], value) and torch.equal(full.unet.state_dict()[key], value)
    g = torch.Generator().manual_seed(0)
    z, lr = torch.randn(1, 4, 8, 12, generator=g), torch.randn(1, 4, 8, 12, generator=g)
    ctx = torch.randn(1, 3, 24, generator=g)
    with torch.no_grad():
        out = on_base(z, 500, lr, ctx)
        torch.testing.assert_close(out, full(z, 500, lr, ctx))  # same SFT/encoder weights, same base
    assert torch.isfinite(out).all() and out.shape == z.shape


def _cfw_ldm_state(cfw):
    sd = cfw.state_dict()
    fusion = {k: v for k, v in sd.items() if ".fusion_layer_" in k}
    ldm = diffusers_vae_to_ldm({k: v for k, v in sd.items() if k not in fusion}, prefix="")
    return ldm, fusion


def test_load_cfw_vae_official_and_split_files(tmp_path, cfw):
    ldm, fusion = _cfw_ldm_state(cfw)
    _lightning_ckpt(tmp_path / "vqgan_cfw_00011.ckpt", {**ldm, **fusion, "loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.zeros(2)})
    torch.save({"state_dict": {**ldm, "loss.logvar": torch.zeros(())}}, tmp_path / "vqgan_cfw_00011_vae_only.ckpt")
    torch.save(fusion, tmp_path / "vqgan_cfw_00011_cfw_only.ckpt")
    image, latent = _image_and_latent()
    with torch.no_grad():
        _, feats = cfw.encode_with_features(image)
        expected = cfw.decode(latent, feats, 0.5)
        for vae in (load_cfw_vae(tmp_path / "vqgan_cfw_00011.ckpt"),
                    load_cfw_vae(tmp_path / "vqgan_cfw_00011_vae_only.ckpt", fusion_path=tmp_path / "vqgan_cfw_00011_cfw_only.ckpt")):
            assert vae.config == TINY_CFW
            _, got_feats = vae.encode_with_features(image)
            assert torch.equal(vae.decode(latent, got_feats, 0.5), expected)
    with pytest.raises(CheckpointError, match="without CFW fusion layers"):
        load_cfw_vae(tmp_path / "vqgan_cfw_00011_vae_only.ckpt")
    with pytest.raises(CheckpointError, match="only CFW fusion layers"):
        load_cfw_vae(tmp_path / "vqgan_cfw_00011_cfw_only.ckpt")
