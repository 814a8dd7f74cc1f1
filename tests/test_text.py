"""SD2 text conditioning: tokenizer, text encoder (both checkpoint layouts), prompt recipe.

Parity tests against transformers (CLIPTokenizer / CLIPTextModel) skip when it is not installed;
everything else runs without it.
"""
import gzip
import json
import logging
import shutil
from collections import Counter

import pytest
import torch
from safetensors.torch import save_file

from conftest import assert_matches

from addsr_core.loading.io import CheckpointError, check_state_dict
from addsr_core.models.config import ConfigError
from addsr_core.text import (
    DEFAULT_ADDED_PROMPT,
    DEFAULT_NEGATIVE_PROMPT,
    SD2_TEXT_ENCODER,
    CLIPTextEncoder,
    CLIPTokenizer,
    TextConditioner,
    TextEncoderConfig,
    TokenizerError,
    build_prompt,
    load_text_encoder,
    openclip_to_transformers,
    text_encoder_from_openclip,
)
from addsr_core.text.loading import infer_openclip_config
from addsr_core.text.tokenizer import bytes_to_unicode, clean_text, split_words

# ---------------------------------------------------------------------------------------------
# A tiny CLIP-structured vocabulary: 256 byte symbols, the same with </w>, learned merges, specials.
CORPUS = """
A photo of a dog, grass, tree, sky, cloud, building, street, car, person, woman, man, child.
clean, high-resolution, 8k, extremely detailed, best quality, sharp, dotted, noise, blur, lowres, smooth.
It's the dog's toy; we'll see what you've done. I'm sure they'd agree, don't you think?
Café naïve résumé façade 1920s 2024 3.14 the quick brown fox jumps over the lazy dog.
landscape mountain river lake forest flower portrait face hair eye window door road city night.
"""
NUM_MERGES = 200

TRICKY = [
    "A photo of a cat, 8k!!",
    "it's a dog's life; we'll see what you've done, I'm sure they'd agree",
    "rock'n'roll don't WON'T O'Neil ''s !'s",
    "Café naïve résumé ÀÉÎÕÜ façade",
    "3.14159 and 1,000,000 pixels at 4096x2160",
    "emoji 🐱🔥 and symbols © ® ™ € £ ¥ ½",
    "  multiple   spaces\tand\nnewlines  ",
    "hello-world_foo/bar (baz) [qux] {x} a+b=c #tag @user",
    "'quoted' \"double\" `back`",
    "",
    "dog, grass, ,clean, high-resolution, 8k, extremely detailed, best quality, sharp",
    "a<|endoftext|>b",
    "wow! so sharp!!",
]
# transformers 5 (tokenizers backend) differs here from 4.37's slow tokenizer, which AddSR ran and
# which we follow: CJK ideographs are spaced, control/format characters dropped, final sigma kept.
SLOW_ONLY = ["一只猫 東京", "cat\u200bdog\x07 x", "ΣΊΣΥΦΟΣ straße"]


def train_bpe(text: str, num_merges: int) -> list[tuple[str, str]]:
    """Deterministic toy BPE training over CLIP-style words (no merge may duplicate a symbol)."""
    byte_map = bytes_to_unicode()
    words = Counter()
    for word in split_words(clean_text(text)):
        symbols = [byte_map[b] for b in word.encode("utf-8")]
        words[tuple(symbols[:-1] + [symbols[-1] + "</w>"])] += 1
    known = set(byte_map.values()) | {s + "</w>" for s in byte_map.values()}
    merges = []
    while len(merges) < num_merges:
        pairs = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                if "".join(pair) not in known:
                    pairs[pair] += count
        if not pairs:
            break
        best = max(sorted(pairs), key=lambda p: pairs[p])
        merges.append(best)
        known.add("".join(best))
        merged = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


@pytest.fixture(scope="module")
def vocab_files(tmp_path_factory):
    """SD2-like ``tokenizer/`` folder, the same without a pad declaration, and an OpenCLIP .txt.gz."""
    root = tmp_path_factory.mktemp("clip_vocab")
    merges = train_bpe(CORPUS, NUM_MERGES)
    assert len(merges) == NUM_MERGES
    symbols = list(bytes_to_unicode().values())
    symbols += [s + "</w>" for s in symbols]
    symbols += ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {s: i for i, s in enumerate(symbols)}
    assert len(vocab) == len(symbols)
    merges_text = "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"

    sd2 = root / "sd2" / "tokenizer"
    sd2.mkdir(parents=True)
    (sd2 / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (sd2 / "merges.txt").write_text(merges_text, encoding="utf-8")
    # As in stabilityai/stable-diffusion-2(-base)/tokenizer: pad is "!" (id 0).
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "!"}
    (sd2 / "special_tokens_map.json").write_text(json.dumps(specials))
    (sd2 / "tokenizer_config.json").write_text(json.dumps({**specials, "model_max_length": 77, "do_lower_case": True}))

    bare = root / "bare"
    bare.mkdir()
    (bare / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (bare / "merges.txt").write_text(merges_text, encoding="utf-8")

    gz = root / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write('"bpe_simple_vocab_16e6.txt#version: 0.2\n' + "\n".join(" ".join(m) for m in merges) + "\n")
    return {"root": root / "sd2", "folder": sd2, "bare": bare, "gz": gz, "vocab": vocab}


@pytest.fixture(scope="module")
def tokenizer(vocab_files):
    return CLIPTokenizer.from_pretrained(vocab_files["root"])


# ---------------------------------------------------------------------------------------------
# Tokenizer


def test_tokenizer_special_ids_and_padding(tokenizer, vocab_files):
    vocab = vocab_files["vocab"]
    assert tokenizer.bos_id == vocab["<|startoftext|>"] == len(vocab) - 2
    assert tokenizer.eos_id == vocab["<|endoftext|>"] == len(vocab) - 1
    assert tokenizer.pad_id == 0 == vocab["!"]  # SD2 declares pad "!"
    ids = tokenizer(["a photo of a dog", ""])
    assert ids.dtype == torch.long and ids.shape == (2, 77)
    body = tokenizer.encode("a photo of a dog")
    assert ids[0].tolist() == [tokenizer.bos_id, *body, tokenizer.eos_id] + [0] * (75 - len(body))
    assert ids[1].tolist() == [tokenizer.bos_id, tokenizer.eos_id] + [0] * 75
    # Without a pad declaration transformers pads with <|endoftext|>; OpenCLIP's vocabulary pads with 0.
    assert CLIPTokenizer.from_pretrained(vocab_files["bare"]).pad_id == tokenizer.eos_id
    assert CLIPTokenizer.from_pretrained(vocab_files["gz"]).pad_id == 0


def test_openclip_gz_builds_the_same_vocabulary(tokenizer, vocab_files):
    from_gz = CLIPTokenizer.from_pretrained(vocab_files["gz"])
    assert from_gz.encoder == tokenizer.encoder
    assert from_gz.ranks == tokenizer.ranks
    bare = CLIPTokenizer.from_pretrained(vocab_files["bare"])  # no "!" special either
    for text in TRICKY:
        assert from_gz.encode(text) == bare.encode(text), text


def test_bpe_merges_and_roundtrip(tokenizer):
    # Learned merges collapse frequent corpus words into whole-word symbols.
    assert tokenizer.tokenize("the dog") == ["the</w>", "dog</w>"]
    assert tokenizer.decode(tokenizer.encode("A Photo,  of the DOG's café!")) == "a photo , of the dog 's café !"
    # Spaces vanish in pre-tokenisation: "a,b" and "a, b" are the same ids.
    assert tokenizer.encode("dog,grass") == tokenizer.encode("dog, grass")


def test_exclamation_mark_is_the_sd2_pad_token(tokenizer, vocab_files):
    """SD2's diffusers tokenizer declares pad "!", so a "!" in text is the special id 0 (as in
    transformers, hence AddSR); OpenCLIP's vocabulary has no such special and BPEs it to "!</w>"."""
    bang_end = tokenizer.encoder["!</w>"]
    assert tokenizer.encode("wow!") == tokenizer.encode("wow") + [0]
    assert tokenizer.tokenize("!'s") == ["!", "'s</w>"]
    openclip = CLIPTokenizer.from_pretrained(vocab_files["gz"])
    assert openclip.encode("wow!") == tokenizer.encode("wow") + [bang_end]
    assert openclip.tokenize("!'s") == openclip.tokenize("!'") + ["s</w>"]  # "!'" is one punctuation run


def test_split_words_follows_clip_pattern():
    assert split_words("it's a dog's 1920s!'s <|endoftext|>x") == [
        "it", "'s", "a", "dog", "'s", "1", "9", "2", "0", "s", "!'", "s", "<|endoftext|>", "x",
    ]
    assert split_words("naïve ½ ... ''ll") == ["naïve", "½", "...", "''", "ll"]


def test_cleanup_without_ftfy():
    assert clean_text("  Hello\tWORLD\n ") == "hello world"
    assert clean_text("cat\u200bdog\x07!") == "catdog!"  # format/control characters dropped
    assert clean_text("一只猫") == "一 只 猫"  # CJK ideographs spaced, as transformers' BasicTokenizer does
    assert clean_text("e\u0301") == "\u00e9"  # NFC
    assert clean_text("&amp; “curly”") == "&amp; “curly”"  # no ftfy, no HTML unescaping


def test_truncation_keeps_eos(tokenizer, caplog):
    words = " ".join(["dog"] * 100)
    with caplog.at_level(logging.WARNING, logger="addsr_core.text.tokenizer"):
        ids = tokenizer(words)[0].tolist()
    assert ids == [tokenizer.bos_id] + tokenizer.encode(words)[:75] + [tokenizer.eos_id]
    assert "cut off" in caplog.text


def test_tokenizer_errors(vocab_files, tmp_path):
    with pytest.raises(TokenizerError, match="merges.txt"):
        (tmp_path / "vocab.json").write_text("{}")
        CLIPTokenizer.from_pretrained(tmp_path)
    with pytest.raises(TokenizerError, match="startoftext"):
        CLIPTokenizer({"a": 0, "<|endoftext|>": 1}, [("a", "b")])
    with pytest.raises(TokenizerError, match="byte symbols"):
        CLIPTokenizer({"a": 0, "<|endoftext|>": 1, "<|startoftext|>": 2}, [("a", "b")])
    with pytest.raises(TokenizerError, match="neither a tokenizer folder"):
        CLIPTokenizer.from_pretrained(tmp_path / "missing.safetensors")
    tok = CLIPTokenizer.from_pretrained(vocab_files["folder"])
    with pytest.raises(TypeError, match="must be a str"):
        tok([None])
    with pytest.raises(ValueError, match="no prompts"):
        tok([])


def _transformers_tokenizer(folder):
    transformers = pytest.importorskip("transformers")
    return transformers.CLIPTokenizer.from_pretrained(str(folder))


def test_tokenizer_matches_transformers(tokenizer, vocab_files):
    reference = _transformers_tokenizer(vocab_files["folder"])
    long_prompt = "a photo of " + ", ".join(["a fluffy dog on green grass"] * 12)
    prompts = TRICKY + [long_prompt]
    if not getattr(reference, "is_fast", True) and getattr(reference, "fix_text", None) is None:
        prompts += SLOW_ONLY  # transformers 4.x without ftfy: the exact code AddSR ran
    # diffusers' call in the SD2 pipeline
    expected = reference(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    ours = tokenizer(prompts)
    for text, a, b in zip(prompts, ours, expected):
        assert a.tolist() == b.tolist(), f"token ids differ for {text!r}"
    assert reference.pad_token_id == tokenizer.pad_id == 0


# ---------------------------------------------------------------------------------------------
# Prompt recipe


def test_build_prompt_reproduces_test_addsr_exactly():
    assert DEFAULT_ADDED_PROMPT == "clean, high-resolution, 8k, extremely detailed, best quality, sharp"
    assert DEFAULT_NEGATIVE_PROMPT == "dotted, noise, blur, lowres, smooth"
    assert build_prompt("dog, grass", "") == (
        "dog, grass, ,clean, high-resolution, 8k, extremely detailed, best quality, sharp"
    )
    assert build_prompt(["dog", "grass"], "a photo") == (
        "dog, grass, a photo,clean, high-resolution, 8k, extremely detailed, best quality, sharp"
    )
    assert build_prompt("", "") == ", ,clean, high-resolution, 8k, extremely detailed, best quality, sharp"


def test_build_prompt_clean_option():
    assert build_prompt("dog, grass", "", clean_prompt=True) == (
        "dog, grass, clean, high-resolution, 8k, extremely detailed, best quality, sharp"
    )
    assert build_prompt(["dog"], " a photo, ", clean_prompt=True, added_prompt="sharp") == "dog, a photo, sharp"
    assert build_prompt([], "", clean_prompt=True) == DEFAULT_ADDED_PROMPT
    with pytest.raises(TypeError):
        build_prompt(["dog", 3], "")
    with pytest.raises(TypeError):
        build_prompt("dog", None)


def test_clean_prompt_only_drops_the_stray_comma(tokenizer):
    official = tokenizer.encode(build_prompt("dog, grass", ""))
    clean = tokenizer.encode(build_prompt("dog, grass", "", clean_prompt=True))
    comma = tokenizer.encode(",")
    assert len(comma) == 1
    stray = official.index(comma[0], official.index(comma[0]) + 1) + 1  # the ", ," pair's second comma
    assert official[stray] == comma[0]
    assert official[:stray] + official[stray + 1:] == clean
    # with a user prompt, official and clean differ only in spaces, which CLIP ignores
    assert tokenizer.encode(build_prompt("dog", "a photo")) == tokenizer.encode(build_prompt("dog", "a photo", clean_prompt=True))


# ---------------------------------------------------------------------------------------------
# Text encoder

TINY = TextEncoderConfig(vocab_size=1100, width=32, num_layers=3, num_heads=4, mlp_width=48, max_length=77, activation="gelu")


def _randomise(module, seed):
    """transformers' init is tiny (std 0.02); use weights large enough that every path matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "layer_norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(noise * (0.5 if "embedding" in name else 0.25))
    return module


def _ids(batch=2, seed=0, vocab=TINY.vocab_size):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros(batch, 77, dtype=torch.long)
    for b in range(batch):
        n = 5 + 11 * b
        ids[b, 0] = vocab - 2
        ids[b, 1 : n + 1] = torch.randint(1, vocab - 2, (n,), generator=gen)
        ids[b, n + 1] = vocab - 1
    return ids


@pytest.fixture(scope="module")
def hf_models():
    transformers = pytest.importorskip("transformers")

    def make(num_layers, seed):
        cfg = transformers.CLIPTextConfig(
            **{**TINY.to_transformers(), "num_hidden_layers": num_layers},
            bos_token_id=TINY.vocab_size - 2, eos_token_id=TINY.vocab_size - 1, pad_token_id=0,
        )
        torch.manual_seed(seed)
        return _randomise(transformers.CLIPTextModel(cfg), seed).eval()

    # "diffusers": what SD2's text_encoder/ holds (penultimate baked in); "full": all blocks (OpenCLIP)
    return {"diffusers": make(TINY.num_layers, 1), "full": make(TINY.num_layers + 1, 2)}


def _hf_state_dict(hf_model):
    """transformers 4.x keys start with ``text_model.``; 5.x dropped that level."""
    sd = {k: v.clone() for k, v in hf_model.state_dict().items() if not k.endswith("position_ids")}
    return {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in sd.items()}


def _hf_final_norm(hf_model):
    return getattr(hf_model, "text_model", hf_model).final_layer_norm


def _openclip_state_dict(hf_model, prefix="cond_stage_model.model."):
    """Convert a transformers CLIPTextModel to OpenCLIP's layout, fusing q/k/v into in_proj."""
    sd = _hf_state_dict(hf_model)
    out = {
        "token_embedding.weight": sd.pop("text_model.embeddings.token_embedding.weight"),
        "positional_embedding": sd.pop("text_model.embeddings.position_embedding.weight"),
        "ln_final.weight": sd.pop("text_model.final_layer_norm.weight"),
        "ln_final.bias": sd.pop("text_model.final_layer_norm.bias"),
    }
    rename = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    for i in range(hf_model.config.num_hidden_layers):
        src, dst = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat([sd.pop(f"{src}self_attn.{p}_proj.{kind}") for p in "qkv"])
            for old, new in rename.items():
                out[f"{dst}{new}.{kind}"] = sd.pop(f"{src}{old}.{kind}")
    assert not sd, f"unconverted keys {list(sd)}"
    gen = torch.Generator().manual_seed(5)
    # tensors SD2's conditioning never uses: must be dropped, not rejected
    out["text_projection"] = torch.randn(TINY.width, 16, generator=gen)
    out["logit_scale"] = torch.tensor(4.6052)
    out["visual.conv1.weight"] = torch.randn(8, 3, 4, 4, generator=gen)
    out["visual.proj"] = torch.randn(8, 16, generator=gen)
    return {prefix + k: v for k, v in out.items()}


SD2_CONFIG_JSON = {  # stabilityai/stable-diffusion-2(-base) text_encoder/config.json, the fields that matter
    "architectures": ["CLIPTextModel"], "hidden_act": "gelu", "hidden_size": 1024, "intermediate_size": 4096,
    "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "num_attention_heads": 16,
    "num_hidden_layers": 23, "vocab_size": 49408, "projection_dim": 512, "model_type": "clip_text_model",
}


def test_sd2_text_encoder_on_meta():
    """Full-size SD2 text encoder built on meta: 23 layers, 340M parameters."""
    assert TextEncoderConfig.from_transformers(SD2_CONFIG_JSON) == SD2_TEXT_ENCODER
    with torch.device("meta"):
        ours = CLIPTextEncoder(SD2_TEXT_ENCODER)
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert len(shapes) == 4 + 23 * 16
    assert shapes["text_model.embeddings.token_embedding.weight"] == (49408, 1024)
    assert shapes["text_model.encoder.layers.22.mlp.fc1.weight"] == (4096, 1024)
    assert sum(p.numel() for p in ours.parameters()) == 340_387_840


def test_sd2_config_matches_transformers_layout():
    """Our SD2 encoder has exactly transformers' CLIPTextModel keys/shapes for SD2's config.json."""
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        ours = CLIPTextEncoder(SD2_TEXT_ENCODER)
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    with torch.device("meta"):
        reference = transformers.CLIPTextModel(transformers.CLIPTextConfig(**SD2_CONFIG_JSON))
    theirs = {k: tuple(v.shape) for k, v in _hf_state_dict(reference).items()}
    assert theirs == shapes


def test_sd2_openclip_checkpoint_layout_maps_onto_ours():
    """The real SD2 single-file key set (24 blocks + projection) on meta: inferred config and strict check."""
    w = 1024
    sd = {"token_embedding.weight": (49408, w), "positional_embedding": (77, w), "ln_final.weight": (w,), "ln_final.bias": (w,),
          "text_projection": (w, w), "logit_scale": ()}
    for i in range(24):
        p = f"transformer.resblocks.{i}."
        sd.update({p + "ln_1.weight": (w,), p + "ln_1.bias": (w,), p + "attn.in_proj_weight": (3 * w, w), p + "attn.in_proj_bias": (3 * w,),
                   p + "attn.out_proj.weight": (w, w), p + "attn.out_proj.bias": (w,), p + "ln_2.weight": (w,), p + "ln_2.bias": (w,),
                   p + "mlp.c_fc.weight": (4 * w, w), p + "mlp.c_fc.bias": (4 * w,), p + "mlp.c_proj.weight": (w, 4 * w), p + "mlp.c_proj.bias": (w,)})
    sd = {k: torch.empty(s, device="meta") for k, s in sd.items()}
    assert infer_openclip_config(sd) == SD2_TEXT_ENCODER
    assert infer_openclip_config(sd, layer="last").num_layers == 24
    mapped = openclip_to_transformers(sd, num_layers=23)
    assert not any("layers.23." in k for k in mapped)
    with torch.device("meta"):
        ours = CLIPTextEncoder(SD2_TEXT_ENCODER)
    check_state_dict(ours, mapped, family="SD2 text encoder", source="SD2 checkpoint")


def test_diffusers_folder_matches_transformers(hf_models, tmp_path):
    reference = hf_models["diffusers"]
    reference.save_pretrained(tmp_path / "text_encoder")
    assert (tmp_path / "text_encoder" / "model.safetensors").is_file()
    ours = load_text_encoder(tmp_path)  # release root: finds text_encoder/
    assert ours.config == TINY
    assert not any(p.is_meta for p in ours.parameters())
    ids = _ids()
    with torch.no_grad():
        expected = reference(input_ids=ids).last_hidden_state
        got = ours(ids)
    assert got.shape == (2, 77, TINY.width)
    assert expected.abs().max() > 0.5
    assert_matches(got, expected, name="prompt_embeds (diffusers layout)")


def test_diffusers_bin_with_legacy_position_ids(hf_models, tmp_path):
    """transformers < 4.31 (SD2's own files) stored position_ids; .bin goes through weights_only."""
    reference = hf_models["diffusers"]
    folder = tmp_path / "text_encoder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["CLIPTextModel"], **TINY.to_transformers()}))
    sd = _hf_state_dict(reference)  # the prefixed layout of SD2's own files
    sd["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    torch.save(sd, folder / "pytorch_model.bin")
    ours = load_text_encoder(folder)
    ids = _ids(seed=3)
    with torch.no_grad():
        assert_matches(ours(ids), reference(input_ids=ids).last_hidden_state, name="prompt_embeds (.bin)")


@pytest.mark.parametrize("fmt", ["safetensors", "ckpt"])
def test_openclip_single_file_matches_penultimate_recipe(hf_models, tmp_path, fmt):
    """SD2's recipe on the 4-block tower: blocks 0..2, then ln_final (FrozenOpenCLIPEmbedder 'penultimate')."""
    full = hf_models["full"]
    sd = _openclip_state_dict(full)
    sd["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(2)  # rest of the checkpoint
    if fmt == "safetensors":
        path = tmp_path / "sd2.safetensors"
        save_file(sd, path)
    else:
        path = tmp_path / "sd2.ckpt"
        torch.save({"state_dict": sd, "global_step": torch.tensor(1)}, path)
    ours = load_text_encoder(path, config=TINY)
    ids = _ids(seed=4)
    with torch.no_grad():
        out = full(input_ids=ids, output_hidden_states=True)
        expected = _hf_final_norm(full)(out.hidden_states[-2])
        got = ours(ids)
    assert_matches(got, expected, name="prompt_embeds (OpenCLIP penultimate)")
    assert (got - out.last_hidden_state).abs().max() > 0.1  # the dropped block really mattered


def test_openclip_bare_last_layer(hf_models):
    full = hf_models["full"]
    sd = {k.removeprefix("cond_stage_model.model."): v for k, v in _openclip_state_dict(full).items()}
    cfg = TextEncoderConfig(**{**TINY.to_dict(), "num_layers": TINY.num_layers + 1})
    ours = text_encoder_from_openclip(sd, layer="last", config=cfg)
    ids = _ids(seed=6)
    with torch.no_grad():
        assert_matches(ours(ids), full(input_ids=ids).last_hidden_state, name="prompt_embeds (OpenCLIP last)")


def test_dtype_choice(hf_models, tmp_path):
    reference = hf_models["diffusers"]
    reference.save_pretrained(tmp_path / "text_encoder")
    ours = load_text_encoder(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}
    ids = _ids(seed=7)
    with torch.no_grad():
        got = ours(ids)
        expected = reference(input_ids=ids).last_hidden_state
    assert got.dtype == torch.bfloat16
    assert (got.float() - expected).abs().max() < 0.1 * expected.abs().max()


def test_text_conditioner_end_to_end(hf_models, vocab_files, tmp_path):
    root = tmp_path / "sd2"
    hf_models["diffusers"].save_pretrained(root / "text_encoder")
    shutil.copytree(vocab_files["folder"], root / "tokenizer")
    conditioner = TextConditioner.from_pretrained(root)
    prompt = build_prompt(["dog", "grass"], "")
    embeds = conditioner([prompt, DEFAULT_NEGATIVE_PROMPT])
    assert embeds.shape == (2, 77, TINY.width)
    ids = conditioner.tokenizer([prompt, DEFAULT_NEGATIVE_PROMPT])
    with torch.no_grad():
        assert_matches(embeds, hf_models["diffusers"](input_ids=ids).last_hidden_state, name="conditioner")
    with pytest.raises(ValueError, match="tokenizer_path"):
        TextConditioner.from_pretrained(tmp_path / "sd2.safetensors")


# ---------------------------------------------------------------------------------------------
# Errors (no transformers needed)


def _tiny_diffusers_folder(tmp_path, sd=None, **config):
    folder = tmp_path / "text_encoder"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["CLIPTextModel"], **TINY.to_transformers(), **config}))
    if sd is None:
        torch.manual_seed(0)
        sd = CLIPTextEncoder(TINY).state_dict()
    save_file(dict(sd), folder / "model.safetensors")
    return folder


def test_strict_loading_names_the_bad_keys(tmp_path):
    torch.manual_seed(0)
    sd = CLIPTextEncoder(TINY).state_dict()
    del sd["text_model.encoder.layers.1.mlp.fc2.bias"]
    sd["text_model.encoder.layers.0.mlp.fc1.weight"] = torch.zeros(5, 32)
    sd["text_projection.weight"] = torch.zeros(16, 32)  # a CLIPTextModelWithProjection is not SD2's encoder
    folder = _tiny_diffusers_folder(tmp_path, sd)
    with pytest.raises(CheckpointError) as err:
        load_text_encoder(folder)
    message = str(err.value)
    for key in ("layers.1.mlp.fc2.bias", "layers.0.mlp.fc1.weight", "text_projection.weight"):
        assert key in message


def test_folder_errors(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_text_encoder(tmp_path)
    folder = _tiny_diffusers_folder(tmp_path, hidden_act="relu")
    with pytest.raises(CheckpointError, match="activation 'relu'"):
        load_text_encoder(folder)
    (folder / "model.safetensors").unlink()
    (folder / "config.json").write_text(json.dumps({"architectures": ["CLIPTextModel"], **TINY.to_transformers()}))
    with pytest.raises(CheckpointError, match="No text encoder weights"):
        load_text_encoder(folder)
    (folder / "config.json").write_text(json.dumps({"architectures": ["CLIPVisionModel"]}))
    with pytest.raises(CheckpointError, match="CLIPTextModel"):
        load_text_encoder(folder)


def test_single_file_errors(tmp_path):
    torch.manual_seed(0)
    no_text = tmp_path / "unet_only.safetensors"
    save_file({"model.diffusion_model.out.0.weight": torch.zeros(3)}, no_text)
    with pytest.raises(CheckpointError, match="No OpenCLIP text encoder"):
        load_text_encoder(no_text)
    hf_layout = tmp_path / "sd1_style.safetensors"
    save_file({"cond_stage_model.transformer." + k: v for k, v in CLIPTextEncoder(TINY).state_dict().items()}, hf_layout)
    with pytest.raises(CheckpointError, match="transformers-layout"):
        load_text_encoder(hf_layout)

    block = lambda i: {f"transformer.resblocks.{i}.{n}": torch.zeros(s) for n, s in [
        ("ln_1.weight", (64,)), ("ln_1.bias", (64,)), ("attn.in_proj_weight", (192, 64)), ("attn.in_proj_bias", (192,)),
        ("attn.out_proj.weight", (64, 64)), ("attn.out_proj.bias", (64,)), ("ln_2.weight", (64,)), ("ln_2.bias", (64,)),
        ("mlp.c_fc.weight", (128, 64)), ("mlp.c_fc.bias", (128,)), ("mlp.c_proj.weight", (64, 128)), ("mlp.c_proj.bias", (64,))]}
    sd = {"token_embedding.weight": torch.zeros(600, 64), "positional_embedding": torch.zeros(77, 64),
          "ln_final.weight": torch.ones(64), "ln_final.bias": torch.zeros(64), **block(0), **block(1)}
    model = text_encoder_from_openclip(sd)  # 64-wide: one inferred head; block 1 dropped
    assert model.config.num_layers == 1 and model.config.num_heads == 1
    with pytest.raises(CheckpointError, match="config asks for 2"):
        text_encoder_from_openclip(sd, config=TextEncoderConfig(vocab_size=600, width=64, num_layers=2, num_heads=1, mlp_width=128))
    with pytest.raises(CheckpointError, match=r"ls_1\.gamma"):
        text_encoder_from_openclip({**sd, "transformer.resblocks.0.ls_1.gamma": torch.ones(64)})
    with pytest.raises(CheckpointError, match="numbered"):
        text_encoder_from_openclip({**sd, **block(3)})
    with pytest.raises(CheckpointError, match="needs more"):
        text_encoder_from_openclip({k: v for k, v in sd.items() if "resblocks.1." not in k})
    with pytest.raises(ValueError, match="layer must be"):
        text_encoder_from_openclip(sd, layer="middle")


def test_encoder_input_errors_and_config_errors():
    torch.manual_seed(0)
    model = CLIPTextEncoder(TINY)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.full((1, 77), TINY.vocab_size))
    with pytest.raises(ValueError, match="exceed"):
        model(torch.zeros(1, 78, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[batch, tokens\]"):
        model(torch.zeros(77, dtype=torch.long))
    with pytest.raises(ConfigError, match="divisible"):
        TextEncoderConfig(width=30, num_heads=4)
    with pytest.raises(ConfigError, match="quick_gelu"):
        TextEncoderConfig(activation="silu")


def test_quick_gelu_config_runs_and_differs():
    torch.manual_seed(0)
    gelu = _randomise(CLIPTextEncoder(TINY), 3).eval()
    quick = CLIPTextEncoder(TextEncoderConfig(**{**TINY.to_dict(), "activation": "quick_gelu"})).eval()
    quick.load_state_dict(gelu.state_dict())
    ids = _ids(seed=8)
    with torch.no_grad():
        assert (gelu(ids) - quick(ids)).abs().max() > 1e-3
