"""DINO / DINOv2 ViTs (key layouts, transformers parity), DiffAugment and the projected discriminator."""
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

from addsr_core.loading.io import CheckpointError
from addsr_core.training.augment import diff_augment, rand_cutout, rand_translation
from addsr_core.training.config import DiscriminatorConfig
from addsr_core.training.discriminator import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LRConditionEncoder,
    ProjectedDiscriminator,
)
from addsr_core.training.vit import DINO_VITS16, DINOV2_VITS14, VisionTransformer, ViTConfig, load_dino_vits16, load_dinov2_vits14

pytestmark = pytest.mark.usefixtures("single_thread")


TINY_DINO = ViTConfig(img_size=32, patch_size=16, embed_dim=32, depth=4, num_heads=2)
TINY_DINOV2 = ViTConfig(
    img_size=56, patch_size=14, embed_dim=32, depth=3, num_heads=2, layerscale=True, mask_token=True,
    pos_interpolation="dinov2_bicubic",
)
TINY_DISC = DiscriminatorConfig(hooks=(0, 1, 2, 3), c_dim=16, cmap_dim=8)


def _randomise(module, seed=0, std=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def _official_vit_keys(dim, depth, n_pos, patch, dinov2):
    """Key -> shape of the released files, as the official loaders (strict=True) require them."""
    keys = {
        "cls_token": (1, 1, dim), "pos_embed": (1, n_pos, dim),
        "patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,), "norm.bias": (dim,),
    }
    if dinov2:
        keys["mask_token"] = (1, dim)
    for i in range(depth):
        b = f"blocks.{i}."
        keys.update({
            b + "norm1.weight": (dim,), b + "norm1.bias": (dim,),
            b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
            b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
            b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
            b + "mlp.fc1.weight": (4 * dim, dim), b + "mlp.fc1.bias": (4 * dim,),
            b + "mlp.fc2.weight": (dim, 4 * dim), b + "mlp.fc2.bias": (dim,),
        })
        if dinov2:
            keys.update({b + "ls1.gamma": (dim,), b + "ls2.gamma": (dim,)})
    return keys


@pytest.mark.parametrize(
    "cfg, n_keys, n_pos, patch, dinov2",
    [(DINO_VITS16, 150, 197, 16, False), (DINOV2_VITS14, 175, 1370, 14, True)],
    ids=["dino_deitsmall16", "dinov2_vits14"],
)
def test_full_size_key_layout_equals_the_released_files(cfg, n_keys, n_pos, patch, dinov2):
    with torch.device("meta"):
        model = VisionTransformer(cfg)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = _official_vit_keys(384, 12, n_pos, patch, dinov2)
    assert len(expected) == n_keys
    assert ours == expected


# ------------------------------------------------------------------------------------------------ transformers parity
def _hf_to_ours(sd):
    """transformers ViT/Dinov2 keys (4.x or 5.x naming) -> the DINO release layout."""
    out, qkv = {}, {}
    embed = {"cls_token": "cls_token", "mask_token": "mask_token", "position_embeddings": "pos_embed",
             "patch_embeddings.projection.weight": "patch_embed.proj.weight",
             "patch_embeddings.projection.bias": "patch_embed.proj.bias"}
    names = {"layernorm_before": "norm1", "norm1": "norm1", "layernorm_after": "norm2", "norm2": "norm2",
             "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
             "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj"}
    for k, v in sd.items():
        if k.startswith("embeddings."):
            out[embed[k[len("embeddings."):]]] = v
            continue
        if k.startswith("layernorm."):
            out["norm." + k.split(".")[-1]] = v
            continue
        i, rest = re.match(r"^(?:encoder\.layer|encoder\.layers|layers)\.(\d+)\.(.+)$", k).groups()
        m = re.match(r"attention\.(?:attention\.)?(query|key|value|q_proj|k_proj|v_proj)\.(weight|bias)$", rest)
        if m:
            slot = {"query": 0, "q_proj": 0, "key": 1, "k_proj": 1, "value": 2, "v_proj": 2}[m.group(1)]
            qkv.setdefault((i, m.group(2)), {})[slot] = v
        elif rest.startswith("layer_scale"):
            out[f"blocks.{i}.ls{rest[len('layer_scale')]}.gamma"] = v
        else:
            base, t = rest.rsplit(".", 1)
            out[f"blocks.{i}.{names[base]}.{t}"] = v
    for (i, t), parts in qkv.items():
        out[f"blocks.{i}.attn.qkv.{t}"] = torch.cat([parts[0], parts[1], parts[2]])
    return out


def test_dino_vit_matches_transformers_vit_hidden_states():
    transformers = pytest.importorskip("transformers")
    warnings.filterwarnings("ignore")
    hf_cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=128,
                                    image_size=32, patch_size=16, layer_norm_eps=1e-6, qkv_bias=True)
    hf = _randomise(transformers.ViTModel(hf_cfg, add_pooling_layer=False).eval())
    ours = VisionTransformer(TINY_DINO)
    ours.load_state_dict(_hf_to_ours(hf.state_dict()), strict=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True)
        states = ours.forward_tokens(x)
    assert len(states) == len(ref.hidden_states) == 5
    for a, b in zip(states, ref.hidden_states):
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(ours.norm(states[-1]), ref.last_hidden_state, atol=1e-5)


def test_dinov2_matches_transformers_dinov2_cls_with_layerscale():
    transformers = pytest.importorskip("transformers")
    warnings.filterwarnings("ignore")
    hf_cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, mlp_ratio=4,
                                       image_size=56, patch_size=14, layerscale_value=1.0, layer_norm_eps=1e-6)
    hf = _randomise(transformers.Dinov2Model(hf_cfg).eval(), seed=3)
    ours = VisionTransformer(TINY_DINOV2)
    ours.load_state_dict(_hf_to_ours(hf.state_dict()), strict=True)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 56, 56, generator=g)
    with torch.no_grad():
        assert torch.allclose(ours.cls_features(x), hf(pixel_values=x).pooler_output, atol=1e-5)
        # Other sizes interpolate the position embedding. DINOv2's own code scales by
        # (grid + 0.1) / side (what we do); transformers resizes to the grid size, which samples
        # slightly different positions, so the two agree only closely.
        x = torch.randn(1, 3, 84, 70, generator=g)
        assert torch.allclose(ours.cls_features(x), hf(pixel_values=x).pooler_output, atol=1e-3)


def test_dinov2_pos_embed_interpolation_uses_the_official_scale_factor():
    vit = _randomise(VisionTransformer(TINY_DINOV2), seed=4)
    pos = vit._pos_embed(6, 5)
    grid = vit.pos_embed[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, scale_factor=(6.1 / 4, 5.1 / 4), mode="bicubic", antialias=False)
    assert torch.equal(pos[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 30, 32))
    assert vit._pos_embed(4, 4) is vit.pos_embed  # native size: untouched


def test_dino_pos_embed_is_bilinear_to_the_patch_grid():
    vit = _randomise(VisionTransformer(TINY_DINO), seed=5)
    assert torch.equal(vit._pos_embed(2, 2), vit.pos_embed)  # same grid: identity
    grid = vit.pos_embed[:, 1:].reshape(1, 2, 2, 32).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(3, 4), mode="bilinear", align_corners=False)
    assert torch.equal(vit._pos_embed(3, 4)[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 12, 32))


def test_loaders_read_release_files_strictly(tmp_path):
    full = {k: torch.randn(s) * 0.02 for k, s in _official_vit_keys(384, 12, 197, 16, False).items()}
    path = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(full, path)
    vit = load_dino_vits16(str(path))
    assert torch.equal(vit.blocks[11].mlp.fc2.weight, full["blocks.11.mlp.fc2.weight"])
    # a classifier head or 'module.' prefix in a re-export is tolerated
    torch.save({"module." + k: v for k, v in {**full, "head.weight": torch.zeros(2, 384)}.items()}, path)
    load_dino_vits16(str(path))
    bad = dict(full)
    bad.pop("blocks.3.attn.qkv.bias")
    torch.save(bad, path)
    with pytest.raises(CheckpointError, match="blocks.3.attn.qkv.bias"):
        load_dino_vits16(str(path))
    v2 = {k: torch.zeros(s) for k, s in _official_vit_keys(384, 12, 1370, 14, True).items()}
    v2_path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(v2, v2_path)
    assert load_dinov2_vits14(str(v2_path)).pos_embed.shape == (1, 1370, 384)
    with pytest.raises(CheckpointError, match="pos_embed has 1370 positions"):
        load_dino_vits16(str(v2_path))


# ------------------------------------------------------------------------------------------------ DiffAugment
def test_diffaugment_is_deterministic_with_a_generator_and_differentiable():
    x = torch.rand(3, 3, 16, 20, generator=torch.Generator().manual_seed(0), requires_grad=True)
    a = diff_augment(x, "translation,cutout", torch.Generator().manual_seed(9))
    b = diff_augment(x, "translation,cutout", torch.Generator().manual_seed(9))
    c = diff_augment(x, "translation,cutout", torch.Generator().manual_seed(10))
    assert torch.equal(a, b) and not torch.equal(a, c)
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="Unknown DiffAugment op"):
        diff_augment(x, "color")


def test_translation_shifts_with_zero_fill():
    x = torch.arange(1, 2 * 8 * 8 + 1, dtype=torch.float32).view(1, 2, 8, 8).repeat(4, 1, 1, 1)
    out = rand_translation(x, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # replay the draws: shift = int(8 * 0.125 + 0.5) = 1
    ty = torch.randint(-1, 2, (4, 1, 1), generator=g)
    tx = torch.randint(-1, 2, (4, 1, 1), generator=g)
    for i in range(4):
        dy, dx = int(ty[i]), int(tx[i])
        ref = torch.zeros(2, 8, 8)
        for y in range(8):
            for xx in range(8):
                sy, sx = y + dy, xx + dx
                if 0 <= sy < 8 and 0 <= sx < 8:
                    ref[:, y, xx] = x[i, :, sy, sx]
        assert torch.equal(out[i], ref)


def test_cutout_zeroes_one_square_per_image():
    x = torch.ones(6, 3, 20, 20)
    out = rand_cutout(x, generator=torch.Generator().manual_seed(1))
    for i in range(6):
        zero = out[i, 0] == 0
        assert torch.equal(out[i, 0] == 0, out[i, 2] == 0)  # same mask on every channel
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert 0 < rows.numel() <= 4 and 0 < cols.numel() <= 4  # int(20 * 0.2 + 0.5) = 4, clipped at borders
        assert int(zero.sum()) == rows.numel() * cols.numel()


# ------------------------------------------------------------------------------------------------ discriminator
def _tiny_disc(seed=0, **cfg_kw):
    cfg = DiscriminatorConfig(**{**TINY_DISC.__dict__, **cfg_kw})
    torch.manual_seed(seed)
    d = ProjectedDiscriminator(cfg, TINY_DINO)
    _randomise(d.dino, seed=seed + 1)
    return d


def test_discriminator_shapes_trainable_heads_and_spectral_norm():
    d = _tiny_disc()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    c = torch.randn(2, 16)
    logits, feats = d(x, c, torch.Generator().manual_seed(0))
    assert len(logits) == 5 and all(t.shape == (2, 4) for t in logits)  # (32/16)^2 tokens per head
    assert sorted(feats) == ["0", "1", "2", "3", "4"] and all(f.shape == (2, 32, 4) for f in feats.values())
    trainable = {n for n, p in d.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("heads.") for n in trainable)
    assert trainable == {f"heads.{n}" for n, _ in d.heads.named_parameters()}
    convs = [m for m in d.heads.modules() if isinstance(m, torch.nn.Conv1d)]
    assert len(convs) == 5 * 3
    for conv in convs:
        assert hasattr(conv, "weight_orig") and hasattr(conv, "weight_u") and hasattr(conv, "weight_v")
    d.train()
    with torch.no_grad():
        for _ in range(30):  # one power iteration per training forward
            d(x, c)
    for conv in convs:
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert abs(float(sigma) - 1) < 0.05
    head_keys = set(d.heads_state_dict())
    assert "heads.0.main.0.0.weight_orig" in head_keys and "heads.4.cls.weight_u" in head_keys
    assert "heads.2.main.1.fn.0.weight_v" in head_keys and "heads.1.cmapper.weight" in head_keys
    assert not d.dino.training and d.heads.training
    (sum(t.sum() for t in logits)).backward()
    assert all(p.grad is None for p in d.dino.parameters())
    assert all(p.grad is not None for p in d.heads.parameters())


def test_discriminator_features_are_cls_readout_of_hooked_blocks_and_patch_embedding():
    d = _tiny_disc(diffaug=False, p_crop=0.0)
    x = torch.rand(2, 3, 64, 64) * 2 - 1  # larger than 32: area-resized (no crop with p_crop 0)
    _, feats = d(x, torch.randn(2, 16))
    x01 = F.interpolate((x + 1) / 2, 32, mode="area")
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    states = d.dino.model.forward_tokens((x01 - mean) / std)
    for key, state in zip("01234", [states[1], states[2], states[3], states[4], states[0]]):
        ref = (state[:, 1:] + state[:, :1]).transpose(1, 2)
        assert torch.allclose(feats[key], ref, atol=1e-6)


def test_discriminator_is_replayable_and_passes_gradient_to_the_image():
    d = _tiny_disc(p_crop=1.0).eval()  # eval: spectral norm stops its power iteration
    x = (torch.rand(2, 3, 48, 48) * 2 - 1).requires_grad_(True)
    c = torch.randn(2, 16)
    a, _ = d(x, c, torch.Generator().manual_seed(5))
    b, _ = d(x, c, torch.Generator().manual_seed(5))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    sum(t.sum() for t in a).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_load_heads_accepts_official_state_dict_and_rejects_wrong_shapes():
    src, dst = _tiny_disc(seed=0), _tiny_disc(seed=7)
    official = {**src.heads_state_dict(), "dino.model.model.cls_token": torch.zeros(1, 1, 32)}
    dst.load_heads(official)
    for (k, v), (k2, v2) in zip(src.heads.state_dict().items(), dst.heads.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    official["heads.0.cmapper.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match="heads"):
        dst.load_heads(official)


def test_lr_condition_encoder_is_frozen_dinov2_cls_of_the_resized_lr():
    vit = _randomise(VisionTransformer(TINY_DINOV2), seed=8)
    enc = LRConditionEncoder(vit, image_size=56)
    lr = torch.rand(2, 3, 40, 40)
    c = enc(lr)
    assert c.shape == (2, 32) and not c.requires_grad
    ref = vit.cls_features(F.interpolate(lr, size=56, mode="bilinear"))
    assert torch.allclose(c, ref, atol=1e-6)
    normed = LRConditionEncoder(vit, image_size=56, imagenet_normalize=True)(lr)
    assert not torch.allclose(normed, c)
    assert all(not p.requires_grad for p in enc.parameters())
