"""RAM/DAPE: Swin image tokens (parity with the official run), the LoRA merge, loaders, preprocessing,
the full-size key layout, and the tag head / tagger on a tiny random model."""
import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from conftest import MANIFESTS, PARITY, assert_matches

from addsr_core.loading.io import CheckpointError
from addsr_core.ram import (
    DEFAULT_THRESHOLD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RAM,
    RAMConfig,
    RamTagger,
    TaggingHeadConfig,
    TagListError,
    expected_lora_keys,
    infer_ram_config,
    linear_lora_delta,
    load_ram,
    ram_preprocess,
    save_merged_ram,
)
from addsr_core.ram.tiny import TINY_RAM_CONFIG, TINY_TAGS, tiny_ram_files_state, write_tiny_ram

CASE = PARITY / "ram_small"
BASE = CASE / "ram_base_like.safetensors"
DAPE = CASE / "dape_lora_like.safetensors"
MANIFEST = MANIFESTS / "ram_swinl_dape.json"


@pytest.fixture(scope="module")
def expected():
    return load_file(str(CASE / "expected.safetensors"))


@pytest.fixture(scope="module")
def image_normalized():
    return load_file(str(CASE / "inputs.safetensors"))["image_normalized"]


@pytest.fixture(scope="module")
def ram_dape():
    model, tagger = load_ram(BASE, DAPE)
    assert tagger is None
    return model


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    return write_tiny_ram(tmp_path_factory.mktemp("tiny_ram"))


@pytest.fixture(scope="module")
def tiny(tiny_files):
    return load_ram(tiny_files["ram"], tiny_files["dape"], tag_list=tiny_files["tag_list"])


def _embeds(model, image):
    with torch.no_grad():
        return model(image)


# ---------------------------------------------------------------------------------------------
# Parity with the official Swin + DAPE (parity/ram_small)


def test_embeds_match_official_with_dape(ram_dape, expected, image_normalized):
    assert_matches(_embeds(ram_dape, image_normalized), expected["embeds"], name="embeds")


def test_every_merged_qkv_matches_loralib(ram_dape, expected):
    ours = ram_dape.state_dict()
    merged = [k for k in expected if k.startswith("merged.")]
    assert len(merged) == 8
    for key in merged:
        assert_matches(ours[key[len("merged."):]], expected[key], name=key)


def test_base_only_matches_official_without_lora(expected, image_normalized):
    model, _ = load_ram(BASE)
    got = _embeds(model, image_normalized)
    assert_matches(got, expected["embeds_base_only_no_lora"], name="embeds_base_only_no_lora")
    assert (got - expected["embeds"]).abs().max() > 0.1  # the LoRA is not a no-op


def test_official_pth_layout_loads_the_same(tmp_path, expected, image_normalized):
    """Pickled {'model': ...} with persistent buffers and unused Tag2Text parts; DAPE with BERT LoRAs."""
    base = load_file(str(BASE))
    with torch.device("meta"):
        skeleton = RAM(infer_ram_config(base))
    skeleton.rebuild_buffers("cpu")
    extra = {name: buf for name, buf in skeleton.named_buffers()}
    assert any(k.endswith("attn_mask") for k in extra)
    extra["tag_encoder.encoder.layer.0.output.dense.weight"] = torch.randn(4, 4)
    extra["text_decoder.bert.embeddings.word_embeddings.weight"] = torch.randn(4, 4)
    extra["text_decoder.bert.encoder.layer.0.attention.self.query.lora_A"] = torch.randn(8, 4)  # a RAMLora dump
    torch.save({"model": {**base, **extra}}, tmp_path / "ram_swin_large_14m.pth")
    lora = load_file(str(DAPE))
    lora["tag_encoder.encoder.layer.3.attention.self.query.lora_A"] = torch.randn(8, 4)
    lora["text_decoder.bert.encoder.layer.0.crossattention.self.key.lora_B"] = torch.randn(4, 8)
    torch.save(lora, tmp_path / "DAPE.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the skipped parts are deliberate: no warning
        model, _ = load_ram(tmp_path / "ram_swin_large_14m.pth", tmp_path / "DAPE.pth")
    assert_matches(_embeds(model, image_normalized), expected["embeds"], name="embeds via .pth")
    base_only, _ = load_ram(tmp_path / "ram_swin_large_14m.pth")
    assert_matches(_embeds(base_only, image_normalized), expected["embeds_base_only_no_lora"], name="base-only .pth")


def test_merged_file_roundtrip(tmp_path, ram_dape, expected, image_normalized):
    path = tmp_path / "ram_dape_merged.safetensors"
    save_merged_ram(ram_dape, path)
    model, _ = load_ram(path)
    assert model.config == ram_dape.config
    assert_matches(_embeds(model, image_normalized), expected["embeds"], name="embeds from merged file")
    with pytest.raises(CheckpointError, match="already has DAPE merged"):
        load_ram(path, DAPE)


def test_meta_build_materialises_the_geometry_buffers(ram_dape):
    reference = RAM(ram_dape.config)  # built on the CPU directly
    ours = dict(ram_dape.named_buffers())
    theirs = dict(reference.named_buffers())
    assert ours.keys() == theirs.keys()
    case = json.loads((CASE / "case.json").read_text())
    assert sorted(ours) == sorted(case["buffer_keys"])
    for name, buf in ours.items():
        assert not buf.is_meta, name
        assert torch.equal(buf, theirs[name]), name
    # shift is forced to 0 where the stage is no bigger than the window (12 tokens at stage 3)
    assert ram_dape.visual_encoder.layers[3].blocks[1].shift == 0
    assert ram_dape.visual_encoder.layers[0].blocks[1].shift == 6


def test_batch_is_per_image(ram_dape, image_normalized):
    """The shifted-window mask and the pooled token are per image, whatever the batch."""
    other = torch.randn(1, 3, 384, 384, generator=torch.Generator().manual_seed(2))
    batch = _embeds(ram_dape, torch.cat([other, image_normalized]))
    assert_matches(batch[0:1], _embeds(ram_dape, other), name="batch[0]")
    assert_matches(batch[1:2], _embeds(ram_dape, image_normalized), name="batch[1]")


def test_dtype_choice_at_load(image_normalized, ram_dape):
    model, _ = load_ram(BASE, DAPE, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        low = model(image_normalized.bfloat16()).float()
    ref = _embeds(ram_dape, image_normalized)
    assert (low - ref).abs().max() < 0.05 * ref.abs().max()


# ---------------------------------------------------------------------------------------------
# Loader errors


def _save_variant(tmp_path, name, sd, metadata=None):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=metadata)
    return path


def test_missing_base_tensor_is_listed(tmp_path):
    base = load_file(str(BASE))
    gone = "visual_encoder.layers.2.blocks.1.mlp.fc2.bias"
    del base[gone]
    with pytest.raises(CheckpointError, match="Missing 1 keys") as err:
        load_ram(_save_variant(tmp_path, "base.safetensors", base), DAPE)
    assert gone in str(err.value)


def test_missing_lora_tensor_is_listed(tmp_path):
    lora = load_file(str(DAPE))
    gone = "visual_encoder.layers.1.blocks.0.attn.qkv.lora_B"
    del lora[gone]
    with pytest.raises(CheckpointError, match="lacks 1 of the 16 Swin qkv LoRA") as err:
        load_ram(BASE, _save_variant(tmp_path, "dape.safetensors", lora))
    assert gone in str(err.value)


def test_misshapen_lora_is_refused(tmp_path):
    lora = load_file(str(DAPE))
    key = "visual_encoder.layers.0.blocks.0.attn.qkv.lora_B"
    lora[key] = lora[key][:, :4].contiguous()
    with pytest.raises(CheckpointError, match="qkv LoRA shapes"):
        load_ram(BASE, _save_variant(tmp_path, "dape.safetensors", lora))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_file(tmp_path, suffix):
    path = tmp_path / f"ram{suffix}"
    if suffix == ".pth":
        torch.save({"model": load_file(str(BASE))}, path)
    else:
        path.write_bytes(BASE.read_bytes())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.*Re-download it"):
        load_ram(path, DAPE)


def test_wrong_family_file_is_named():
    unet = PARITY / "unet_small" / "unet" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(CheckpointError, match="diffusers UNet|AddSR/SeeSR UNet"):
        load_ram(unet)


def test_swapped_base_and_dape():
    with pytest.raises(CheckpointError, match="only LoRA tensors: it is a DAPE file"):
        load_ram(DAPE, BASE)


def test_base_given_as_dape():
    with pytest.raises(CheckpointError, match="not a DAPE LoRA file"):
        load_ram(BASE, BASE)


def test_unknown_tensors_warn_but_load(tmp_path, expected, image_normalized):
    base = {**load_file(str(BASE)), "some_other_head.weight": torch.zeros(3)}
    with pytest.warns(UserWarning, match="some_other_head.weight"):
        model, _ = load_ram(_save_variant(tmp_path, "base.safetensors", base), DAPE)
    assert_matches(_embeds(model, image_normalized), expected["embeds"], name="embeds")


def test_tags_need_a_tag_head(tiny_files):
    with pytest.raises(CheckpointError, match="no RAM tag head"):
        load_ram(BASE, DAPE, tag_list=tiny_files["tag_list"])


def test_missing_tag_list_fails_before_loading(tmp_path):
    with pytest.raises(TagListError, match="tag list not found"):
        load_ram(tmp_path / "nope.pth", tag_list=tmp_path / "ram_tag_list.txt")


# ---------------------------------------------------------------------------------------------
# Preprocessing: the official resizes, written out as interpolation matrices


def _source_index(o, n_in, n_out):
    """align_corners=False: src = scale * (o + .5) - .5 with scale = in/out, both rounded to float32
    as PyTorch's float kernels round them (the product is fused, not rounded)."""
    scale = float(np.float32(n_in / n_out))
    return float(np.float32(scale * (o + 0.5) - 0.5))


def _bilinear_matrix(n_in, n_out):
    """PyTorch's linear resize: the source index clamped at 0, two taps."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        src = max(_source_index(o, n_in, n_out), 0.0)
        i0 = int(math.floor(src))
        t = src - i0
        m[o, min(i0, n_in - 1)] += 1 - t
        m[o, min(i0 + 1, n_in - 1)] += t
    return m


def _bicubic_matrix(n_in, n_out, a=-0.75):
    """PyTorch's cubic convolution (Keys, a = -0.75), indices clamped to the border, no antialias."""
    def cubic1(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def cubic2(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        src = _source_index(o, n_in, n_out)
        i = int(math.floor(src))
        t = src - i
        weights = (cubic2(t + 1), cubic1(t), cubic1(1 - t), cubic2(2 - t))
        for k, w in enumerate(weights):
            m[o, min(max(i - 1 + k, 0), n_in - 1)] += w
    return m


def _reference_preprocess(images, mode):
    make = _bilinear_matrix if mode == "bilinear" else _bicubic_matrix
    h, w = images.shape[-2:]
    x = make(h, 384) @ images.double() @ make(w, 384).T
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(96, 130), (420, 401)])  # up (the usual LR) and down
def test_preprocess_is_the_official_resize(mode, size):
    images = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(3))
    got = ram_preprocess(images, 384, mode)
    assert got.dtype == torch.float32 and got.shape == (2, 3, 384, 384)
    assert_matches(got, _reference_preprocess(images, mode), tol=1e-5, name=f"{mode} {size}")


def test_represent_is_preprocess_then_encoder(ram_dape):
    images = torch.rand(1, 3, 80, 64, generator=torch.Generator().manual_seed(4))
    for mode in ("bilinear", "bicubic"):
        tokens = ram_dape.represent(images, resize=mode)
        expected = _embeds(ram_dape, _reference_preprocess(images, mode).float())
        assert_matches(tokens, expected, name=f"represent {mode}")
    assert not torch.equal(ram_dape.represent(images, "bilinear"), ram_dape.represent(images, "bicubic"))


def test_preprocess_rejects_bad_input():
    with pytest.raises(ValueError, match="resize must be one of"):
        ram_preprocess(torch.rand(1, 3, 8, 8), 384, "nearest")
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        ram_preprocess(torch.rand(3, 8, 8), 384)


# ---------------------------------------------------------------------------------------------
# Full-size layout (meta device) against the official manifest


@pytest.fixture(scope="module")
def manifest():
    return json.loads(MANIFEST.read_text())


@pytest.fixture(scope="module")
def full_size(manifest):
    config = RAMConfig.from_manifest(manifest["config"], tagging=TaggingHeadConfig())
    with torch.device("meta"):
        return RAM(config)


def _split(tensors):
    plain = {k: v for k, v in tensors.items() if ".lora_" not in k}
    lora = {k: v for k, v in tensors.items() if ".lora_" in k}
    return plain, lora


def test_full_size_keys_match_manifest(manifest, full_size):
    """Our module holds the official tensors minus the LoRA, which is merged on load: every LoRA
    tensor of the manifest must be one our merge expects, with the official shapes."""
    ours = {k: list(v.shape) for k, v in full_size.state_dict().items()}
    ours_encoder = {k: v for k, v in ours.items() if k.startswith(("visual_encoder.", "image_proj."))}
    ours_tagging = {k: v for k, v in ours.items() if k not in ours_encoder}
    plain, lora = _split(manifest["tensors"])
    tag_plain, tag_lora = _split(manifest["tagging_tensors"])
    assert ours_encoder == plain
    assert ours_tagging == tag_plain
    assert len(ours_encoder) + len(lora) == len(manifest["tensors"]) == 377
    assert len(ours_tagging) + len(tag_lora) == len(manifest["tagging_tensors"]) == 45

    targets = expected_lora_keys(full_size)
    assert set(targets) == set(lora) | set(tag_lora)
    for key, weight in targets.items():
        shape = (lora | tag_lora)[key]
        out_features, in_features = ours[weight]
        if ".attn.qkv." in key:  # MergedLinear: q and v only
            assert shape == ([16, in_features] if key.endswith("lora_A") else [2 * in_features, 8]), key
        else:  # lora.Linear
            assert shape == ([8, in_features] if key.endswith("lora_A") else [out_features, 8]), key
    # The tag_encoder LoRAs that reach the tag head through the tied weights exist in DAPE.pth.
    tied = {g[1]: g[0] for g in manifest["tied_parameter_groups"] if g[1].startswith("tagging_head.")}
    for key, weight in targets.items():
        if key.startswith("tagging_head."):
            partner = tied[weight][: -len(".weight")] + key[len(weight) - len(".weight"):]
            assert partner in manifest["lora_keys_all"], partner


def test_full_size_recomputed_buffers_match_manifest(manifest, full_size):
    encoder_only = RAMConfig(full_size.config.swin)
    with torch.device("meta"):
        model = RAM(encoder_only)
    model.rebuild_buffers("cpu")
    assert {k: list(v.shape) for k, v in model.named_buffers()} == manifest["buffers_recomputed"]


def test_config_is_read_back_from_the_shapes(manifest, full_size):
    shapes = {**manifest["tensors"], **manifest["tagging_tensors"]}
    assert infer_ram_config(shapes) == full_size.config
    assert full_size.config.swin.num_tokens == 145
    assert infer_ram_config(manifest["tensors"]).tagging is None


def test_ignored_prefixes_cover_the_unused_official_parts(manifest):
    from addsr_core.ram.loading import UNUSED_PREFIXES

    assert all(k.startswith(UNUSED_PREFIXES) for k in manifest["other_tensors_unused_by_addsr"])
    assert all(k.startswith(UNUSED_PREFIXES + ("visual_encoder.", "tagging_head.")) for k in manifest["lora_keys_all"])


# ---------------------------------------------------------------------------------------------
# Tag head and tagger (tiny random model in the official file layout)


def _naive_tag_logits(sd, cfg: TaggingHeadConfig, tokens):
    """The official BERT 'tagging' mode written out with plain matmuls (reference for our SDPA code)."""
    def lin(x, name):
        return x @ sd[name + ".weight"].T + sd[name + ".bias"]

    def ln(x, name):
        return F.layer_norm(x, (x.shape[-1],), sd[name + ".weight"], sd[name + ".bias"], cfg.layer_norm_eps)

    h = torch.relu(lin(sd["label_embed"], "wordvec_proj")).expand(tokens.shape[0], -1, -1)
    heads, d = cfg.num_heads, cfg.hidden_size // cfg.num_heads
    for i in range(cfg.num_layers):
        p = f"tagging_head.encoder.layer.{i}."
        q, k, v = (lin(x, p + "crossattention.self." + n) for x, n in ((h, "query"), (tokens, "key"), (tokens, "value")))
        q, k, v = (t.view(t.shape[0], t.shape[1], heads, d).transpose(1, 2) for t in (q, k, v))
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
        ctx = (attn @ v).transpose(1, 2).reshape(h.shape)
        a = ln(lin(ctx, p + "crossattention.output.dense") + h, p + "crossattention.output.LayerNorm")
        m = F.gelu(lin(a, p + "intermediate.dense"))
        h = ln(lin(m, p + "output.dense") + a, p + "output.LayerNorm")
    return lin(h, "fc").squeeze(-1)


def test_tag_head_merge_includes_the_tied_tag_encoder_lora(tiny):
    """loralib merges the tag head's and the tied tag_encoder layer's LoRA into one shared weight."""
    model, _ = tiny
    base, lora = tiny_ram_files_state()
    ours = model.state_dict()
    for i in range(2):
        for proj in ("query", "key"):
            module = f"encoder.layer.{i}.crossattention.self.{proj}"
            w = base[f"vision_multi.{module}.weight"]
            for owner in ("tag_encoder.", "tagging_head."):
                w = w + linear_lora_delta(lora[f"{owner}{module}.lora_A"], lora[f"{owner}{module}.lora_B"])
            assert_matches(ours[f"tagging_head.{module}.weight"], w, name=module)


def test_tag_logits_match_the_naive_official_formula(tiny):
    model, _ = tiny
    tokens = torch.randn(2, 145, 512, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got = model.tag_logits(tokens)
        ref = _naive_tag_logits(model.state_dict(), model.config.tagging, tokens)
    assert got.shape == (2, len(TINY_TAGS))
    assert_matches(got, ref, name="tag logits")


def test_tags_end_to_end(tiny, tiny_files):
    model, tagger = tiny
    images = torch.rand(2, 3, 72, 90, generator=torch.Generator().manual_seed(6))
    got = tagger.tags(images)
    assert isinstance(got, list) and len(got) == 2
    probs = torch.sigmoid(model.tag_logits(model.represent(images, "bilinear")))
    thresholds = [float(x) for x in tiny_files["thresholds"].read_text().split()]
    for row, text in zip(probs, got):
        names = [TINY_TAGS[i] for i in range(len(TINY_TAGS)) if row[i] > thresholds[i]]
        assert names, "the tiny thresholds are set so some tags pass"
        assert text == ", ".join(names)


def test_selection_is_strict_ordered_and_honours_deletions(tiny):
    model, _ = tiny
    n = len(TINY_TAGS)
    thresholds = torch.full((n,), 0.5)
    tagger = RamTagger(model, TINY_TAGS, thresholds, delete_tag_index=[3])
    probs = torch.zeros(1, n)
    probs[0, 7], probs[0, 1], probs[0, 3] = 0.99, 0.51, 0.9  # 3 is deleted
    probs[0, 4] = 0.5  # equal to the threshold: not kept (official ">")
    assert tagger.select(probs) == [["cat", "building"]]  # tag-list order, not score order


def test_tag_list_and_threshold_file_errors(tiny, tmp_path):
    model, _ = tiny
    short = tmp_path / "short.txt"
    short.write_text("dog\ncat\n", encoding="utf-8")
    with pytest.raises(TagListError, match="has 2 names but this RAM scores 12"):
        RamTagger.from_files(model, short)
    tags = tmp_path / "ram_tag_list.txt"
    tags.write_text("\n".join(TINY_TAGS), encoding="utf-8")
    bad = tmp_path / "bad_thresholds.txt"
    bad.write_text("0.5\nabc\n", encoding="utf-8")
    with pytest.raises(TagListError, match="line 2"):
        RamTagger.from_files(model, tags, bad)
    long = tmp_path / "long_thresholds.txt"
    long.write_text("0.5\n" * 13, encoding="utf-8")
    with pytest.raises(TagListError, match="13 thresholds"):
        RamTagger.from_files(model, tags, long)
    with pytest.raises(TagListError, match="not found"):
        RamTagger.from_files(model, tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(TagListError, match="empty"):
        RamTagger.from_files(model, empty)


def test_thresholds_default_and_sibling_file(tiny, tmp_path):
    model, _ = tiny
    tags = tmp_path / "ram_tag_list.txt"
    tags.write_text("\n".join(TINY_TAGS) + "\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="ram_tag_list_threshold.txt"):
        tagger = RamTagger.from_files(model, tags)
    assert torch.equal(tagger.thresholds, torch.full((12,), DEFAULT_THRESHOLD))
    # Official: 0.68 everywhere, then the file's lines overwrite the first classes.
    (tmp_path / "ram_tag_list_threshold.txt").write_text("0.9\n0.65\n", encoding="utf-8")
    tagger = RamTagger.from_files(model, tags)
    assert tagger.thresholds[:3].tolist() == pytest.approx([0.9, 0.65, 0.68])


def test_no_tag_list_means_no_tag_head(tiny_files):
    model, tagger = load_ram(tiny_files["ram"], tiny_files["dape"])
    assert tagger is None and not model.has_tag_head
    assert not any(k.startswith(("tagging_head.", "label_embed", "fc.")) for k in model.state_dict())
    with pytest.raises(TagListError, match="no tag head"):
        RamTagger(model, TINY_TAGS)


def test_tiny_config_is_what_the_files_hold(tiny):
    model, _ = tiny
    assert model.config == TINY_RAM_CONFIG
    assert model.represent(torch.rand(1, 3, 40, 40)).shape == (1, 145, 512)


def test_merged_file_keeps_the_tag_head(tiny, tiny_files, tmp_path):
    model, _ = tiny
    path = tmp_path / "ram_merged.safetensors"
    save_merged_ram(model, path)
    again, tagger = load_ram(path, tag_list=tiny_files["tag_list"])
    tokens = torch.randn(1, 145, 512, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert torch.equal(again.tag_logits(tokens), model.tag_logits(tokens))
    encoder_only, none = load_ram(path)
    assert none is None and not encoder_only.has_tag_head


def test_partial_tag_head_lora_is_refused(tmp_path, tiny_files):
    lora = torch.load(tiny_files["dape"], weights_only=True)
    del lora["tagging_head.encoder.layer.1.crossattention.self.key.lora_A"]
    del lora["tagging_head.encoder.layer.1.crossattention.self.key.lora_B"]
    torch.save(lora, tmp_path / "DAPE.pth")
    with pytest.raises(CheckpointError, match="only part of the tag head"):
        load_ram(tiny_files["ram"], tmp_path / "DAPE.pth", tag_list=tiny_files["tag_list"])
