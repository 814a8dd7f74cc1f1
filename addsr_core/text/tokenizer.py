"""CLIP's byte-level BPE tokenizer, in plain Python (no downloads, no extra dependency).

What it reproduces: transformers 4.37.2's slow ``CLIPTokenizer`` (AddSR's pin) as it runs when
``ftfy`` is not installed (AddSR's requirements do not list ftfy), loaded from SD2's diffusers
``tokenizer/`` folder. Text handling, step by step:

0. special tokens (BOS, EOS and the declared pad token) are split out of the raw text first and
   map straight to their ids. SD2's pad token is ``"!"``, so with SD2's diffusers tokenizer every
   ``"!"`` in a prompt becomes id 0 (the pad id), never ``"!</w>"`` (id 256) as OpenCLIP would
   have it; the text between special tokens is tokenized piece by piece (``"!'s"`` -> ``!``, ``'s``).
   This is what transformers (4.37 and 5.x alike) and so AddSR do. Built from OpenCLIP's
   ``.txt.gz``, only BOS/EOS are special, as in OpenCLIP.
1. cleanup: drop NUL, U+FFFD and control/format characters (Unicode category C*, except tab/CR/LF);
   tab/CR/LF and space separators become spaces; CJK ideographs get a space on each side;
   NFC normalisation; whitespace collapsed; lowercase. No ``ftfy.fix_text`` and no HTML unescaping.
2. split with CLIP's pattern: the two special tokens, the contractions 's 't 're 've 'm 'll 'd, runs
   of letters, single digits, runs of other non-space characters. Spaces themselves vanish, so
   ``"a,b"`` and ``"a, b"`` give the same ids.
3. each piece -> UTF-8 bytes -> printable stand-in characters -> BPE merges (the last symbol carries
   ``</w>``) -> vocabulary ids.
4. ``[BOS] + ids + [EOS]``, truncated so the sequence keeps its EOS (BOS + first 75 ids + EOS for a
   77-token context), padded with the pad id to the context length.

Where the variants disagree (only for unusual text): OpenCLIP (StableSR's LDM path) and
transformers-with-ftfy apply ``ftfy.fix_text`` (curly quotes straightened, mojibake repaired,
full-width characters narrowed; OpenCLIP also unescapes HTML entities) and do not space CJK
ideographs; OpenCLIP BPEs "!" like any character (step 0); transformers >= 5 (the ``tokenizers``
backend) keeps control characters, does not space CJK ideographs and lowercases a word-final
sigma to "σ" rather than "ς". For plain text, ASCII or accented, every variant gives the same ids.

Padding: SD2's diffusers tokenizer declares ``pad_token = "!"``, which is id 0, and OpenCLIP pads
with 0: the same ids. (SD1's tokenizer pads with ``<|endoftext|>`` instead.) We read the pad token
from the folder's ``special_tokens_map.json``/``tokenizer_config.json`` and fall back to
transformers' default (``<|endoftext|>``) when neither names one; the OpenCLIP vocabulary pads with 0.
"""
from __future__ import annotations

import gzip
import json
import logging
import os
import re
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import torch

from ..errors import AddSRError

logger = logging.getLogger(__name__)

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN)
END_OF_WORD = "</w>"
CONTEXT_LENGTH = 77
CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
# The OpenAI merges file holds far more merges than the model's vocabulary uses; CLIP keeps this many.
NUM_MERGES = 49152 - 256 - 2


class TokenizerError(AddSRError):
    """A tokenizer folder or vocabulary file that cannot be used."""


@lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (ids 0..255 of the vocabulary).

    Printable Latin-1 bytes map to themselves; the rest (controls, space, soft hyphen...) are
    shifted to code points 256+ so no BPE symbol is whitespace. Dict order is vocabulary order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return {b: table[b] for b in (*printable, *(b for b in range(256) if b not in printable))}


def _is_cjk_ideograph(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def clean_text(text: str) -> str:
    """Step 1 of the module docstring: the no-ftfy cleanup of transformers' CLIPTokenizer."""
    out = []
    for ch in text:
        if ch in "\t\n\r " or unicodedata.category(ch) == "Zs":
            out.append(" ")
        elif ch in "\x00\ufffd" or unicodedata.category(ch).startswith("C"):
            continue
        elif _is_cjk_ideograph(ord(ch)):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    return " ".join(word.lower() for word in unicodedata.normalize("NFC", "".join(out)).split())


def _kind(ch: str) -> str:
    cat = unicodedata.category(ch)
    if ch.isspace():
        return "space"
    return {"L": "letter", "N": "number"}.get(cat[0], "other")


def split_words(text: str) -> list[str]:
    """Step 2: CLIP's pre-tokenisation pattern, matched left to right like ``re.findall``.

    ``<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+``,
    case-insensitive. The alternatives are only tried where a match starts, so an apostrophe inside
    a run of punctuation stays in that run (``"!'s"`` -> ``"!'"``, ``"s"``).
    """
    words, i, n = [], 0, len(text)
    while i < n:
        rest = text[i:]
        special = next((s for s in SPECIAL_TOKENS if rest[: len(s)].casefold() == s), None)
        if special is None:
            special = next((c for c in CONTRACTIONS if _casefold_equal(rest[: len(c)], c)), None)
        if special is not None:
            words.append(rest[: len(special)])
            i += len(special)
            continue
        kind = _kind(text[i])
        if kind == "space":
            i += 1
            continue
        j = i + 1
        if kind != "number":  # digits are single tokens; letters and "other" form runs
            while j < n and _kind(text[j]) == kind:
                j += 1
        words.append(text[i:j])
        i = j
    return words


def _casefold_equal(piece: str, target: str) -> bool:
    return len(piece) == len(target) and all(a.casefold() == b for a, b in zip(piece, target))


def _read_merges(lines: Iterable[str], source: str) -> list[tuple[str, str]]:
    lines = list(lines)
    if lines and "#version" in lines[0]:
        lines = lines[1:]
    merges = []
    for number, line in enumerate(lines[:NUM_MERGES]):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise TokenizerError(f"{source}: merge line {number + 2} is {line!r}, expected two symbols.")
        merges.append((parts[0], parts[1]))
    if not merges:
        raise TokenizerError(f"{source} holds no BPE merges; it is not a CLIP merges file.")
    return merges


def _special_token_name(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class CLIPTokenizer:
    """Text -> [B, context_length] int64 token ids for the CLIP text encoder.

    Build it with :meth:`from_pretrained` (a diffusers ``tokenizer/`` folder, the release root
    that contains one, or OpenCLIP's ``bpe_simple_vocab_16e6.txt.gz``).
    """

    def __init__(
        self,
        vocab: dict[str, int],
        merges: Sequence[tuple[str, str]],
        *,
        pad_token: str | None = EOS_TOKEN,
        pad_id: int | None = None,
        context_length: int = CONTEXT_LENGTH,
    ):
        """``pad_token`` is matched in the text as a special token (transformers' behaviour); pass
        ``pad_token=None, pad_id=...`` to pad with an id without making any text special (OpenCLIP)."""
        for token in SPECIAL_TOKENS:
            if token not in vocab:
                raise TokenizerError(f"the vocabulary lacks {token!r}; it is not a CLIP vocabulary.")
        missing_bytes = [c for c in bytes_to_unicode().values() if c not in vocab]
        if missing_bytes:
            raise TokenizerError(f"the vocabulary lacks {len(missing_bytes)} byte symbols (e.g. {missing_bytes[:3]}); it is not a CLIP vocabulary.")
        if context_length < 2:
            raise TokenizerError(f"context_length must leave room for BOS and EOS, got {context_length}.")
        self.encoder = dict(vocab)
        self.decoder = {i: t for t, i in self.encoder.items()}
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.bos_id = self.encoder[BOS_TOKEN]
        self.eos_id = self.encoder[EOS_TOKEN]
        if pad_token is not None and pad_token not in self.encoder:
            raise TokenizerError(f"pad token {pad_token!r} is not in the vocabulary.")
        if pad_id is None:
            if pad_token is None:
                raise TokenizerError("give a pad_token or a pad_id.")
            pad_id = self.encoder[pad_token]
        self.pad_id = pad_id
        self.added_tokens = {t: self.encoder[t] for t in (*SPECIAL_TOKENS, pad_token) if t is not None}
        # longest first, so a special token never loses to one of its own substrings
        self._added_pattern = re.compile("|".join(re.escape(t) for t in sorted(self.added_tokens, key=len, reverse=True)))
        self.context_length = context_length
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self._cache: dict[str, tuple[str, ...]] = {}

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, context_length: int | None = None) -> "CLIPTokenizer":
        path = Path(path)
        if path.is_dir():
            folder = path / "tokenizer" if (path / "tokenizer" / "vocab.json").is_file() else path
            return cls.from_diffusers_folder(folder, context_length=context_length)
        if path.is_file() and path.name.endswith((".txt.gz", ".txt")):
            return cls.from_openclip_bpe(path, context_length=context_length or CONTEXT_LENGTH)
        raise TokenizerError(
            f"{str(path)!r} is neither a tokenizer folder (vocab.json + merges.txt) nor OpenCLIP's "
            "bpe_simple_vocab_16e6.txt.gz. Point to SD2's tokenizer/ folder."
        )

    @classmethod
    def from_diffusers_folder(cls, folder: str | os.PathLike, *, context_length: int | None = None) -> "CLIPTokenizer":
        folder = Path(folder)
        vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
        for file in (vocab_file, merges_file):
            if not file.is_file():
                raise TokenizerError(
                    f"{str(file)!r} not found. Point to SD2's tokenizer/ folder (vocab.json + merges.txt) or the release root."
                )
        try:
            vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise TokenizerError(f"{str(vocab_file)!r} is not valid JSON ({err}); download it again.") from None
        merges = _read_merges(merges_file.read_text(encoding="utf-8").strip().split("\n"), str(merges_file))
        pad_token, max_length = EOS_TOKEN, CONTEXT_LENGTH
        # special_tokens_map.json wins over tokenizer_config.json, as in transformers.
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            file = folder / name
            if file.is_file():
                data = json.loads(file.read_text(encoding="utf-8"))
                pad_token = _special_token_name(data.get("pad_token")) or pad_token
                if name == "tokenizer_config.json" and isinstance(data.get("model_max_length"), int):
                    if data["model_max_length"] < 10_000:  # transformers writes a huge sentinel for "no limit"
                        max_length = data["model_max_length"]
        return cls(vocab, merges, pad_token=pad_token, context_length=context_length or max_length)

    @classmethod
    def from_openclip_bpe(cls, path: str | os.PathLike, *, context_length: int = CONTEXT_LENGTH) -> "CLIPTokenizer":
        """OpenCLIP/OpenAI ``bpe_simple_vocab_16e6.txt.gz``: the vocabulary is rebuilt from the merges."""
        path = Path(path)
        opener = gzip.open if path.name.endswith(".gz") else open
        try:
            with opener(path, "rt", encoding="utf-8") as f:
                lines = f.read().split("\n")
        except (OSError, UnicodeDecodeError) as err:
            raise TokenizerError(f"could not read {str(path)!r}: {err}. Download it again.") from None
        merges = _read_merges(lines, str(path))
        symbols = list(bytes_to_unicode().values())
        symbols += [s + END_OF_WORD for s in symbols]
        symbols += ["".join(pair) for pair in merges]
        symbols += list(SPECIAL_TOKENS)
        return cls({s: i for i, s in enumerate(symbols)}, merges, pad_token=None, pad_id=0, context_length=context_length)

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    # -- text -> ids ----------------------------------------------------------------------------
    def bpe(self, word: str) -> tuple[str, ...]:
        """Merge the symbols of one byte-encoded word, lowest-ranked pair first, until none applies."""
        if word in self._cache:
            return self._cache[word]
        symbols = [*word[:-1], word[-1] + END_OF_WORD]
        while len(symbols) > 1:
            pairs = list(zip(symbols, symbols[1:]))
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        self._cache[word] = result = tuple(symbols)
        return result

    def tokenize(self, text: str) -> list[str]:
        """Text -> BPE symbols (no BOS/EOS, no truncation)."""
        if not isinstance(text, str):
            raise TypeError(f"prompt must be a str, got {type(text).__name__}.")
        tokens, start = [], 0
        for match in self._added_pattern.finditer(text):
            tokens += self._tokenize_plain(text[start : match.start()])
            tokens.append(match.group())
            start = match.end()
        return tokens + self._tokenize_plain(text[start:])

    def _tokenize_plain(self, text: str) -> list[str]:
        tokens = []
        for word in split_words(clean_text(text)):
            if word in SPECIAL_TOKENS:  # e.g. an upper-case "<|ENDOFTEXT|>", lowercased by the cleanup
                tokens.append(word)
            else:
                tokens.extend(self.bpe("".join(self.byte_encoder[b] for b in word.encode("utf-8"))))
        return tokens

    def encode(self, text: str) -> list[int]:
        """Text -> ids without BOS/EOS, untruncated. Unknown symbols map to EOS, as transformers does."""
        return [self.encoder.get(token, self.eos_id) for token in self.tokenize(text)]

    def encode_padded(self, text: str) -> list[int]:
        """BOS + ids + EOS, truncated to keep the EOS, padded to ``context_length``."""
        ids = self.encode(text)
        room = self.context_length - 2
        if len(ids) > room:
            logger.warning(
                "prompt is %d tokens long; CLIP sees only %d, this part is cut off: %r",
                len(ids), room, self.decode(ids[room:]),
            )
            ids = ids[:room]
        ids = [self.bos_id, *ids, self.eos_id]
        return ids + [self.pad_id] * (self.context_length - len(ids))

    def __call__(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """One prompt or a list of prompts -> int64 [B, context_length]."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise ValueError("no prompts given: pass a string or a non-empty list of strings.")
        return torch.tensor([self.encode_padded(p) for p in prompts], dtype=torch.long)

    # -- ids -> text ----------------------------------------------------------------------------
    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        """Ids -> text (lowercased, cleaned: tokenization is not reversible). Unknown ids are skipped."""
        skip = {self.bos_id, self.eos_id} if skip_special else set()
        symbols = "".join(self.decoder.get(int(i), "") for i in ids if int(i) not in skip)
        # special tokens and "</w>" are printable ASCII, so they survive the byte mapping verbatim
        data = bytes(self.byte_decoder[c] for c in symbols)
        return data.decode("utf-8", errors="replace").replace(END_OF_WORD, " ").strip()
