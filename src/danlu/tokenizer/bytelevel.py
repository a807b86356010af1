"""Byte-level BPE as "mergeable ranks" (token bytes -> id, id = merge priority), and its two encodings on disk/in memory.

A byte-level BPE whose merge priority equals its token id can be run by two engines that must agree:
- Hugging Face `tokenizers` (the saved artefact: tokenizer.json, loadable by AutoTokenizer), and
- `tiktoken` (3-6x faster encoding, used for pretraining tokenization).

tiktoken merges any adjacent pair whose concatenation is a token, lowest token id first. HF merges only the
pairs listed in `merges`, lowest list position first. Listing *every* split of every token into two tokens,
ordered by the id of the token they make, makes HF follow the same rule (this is what transformers'
TikTokenConverter does when it converts Llama 3). `ignore_merges=True` matches tiktoken's whole-piece lookup.
No library exposes these conversions as functions (transformers hides them in a slow-tokenizer converter
that needs a tiktoken file), hence the few lines here.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE

# GPT-4 (cl100k) split pattern, as used by rustbpe and tiktoken: letters runs, numbers in groups of 1-3,
# punctuation runs, whitespace. CJK text is \p{L}, so a run of Chinese characters is one pre-token.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
# GPT-2's pattern, which tokenizers' ByteLevel(use_regex=True) applies.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map that HF ByteLevel uses for token strings."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def token_str(token: bytes) -> str:
    """Token bytes -> the HF ByteLevel vocabulary string."""
    return token.decode("latin-1").translate(bytes_to_unicode())  # latin-1 maps byte b to code point b


def token_bytes(s: str) -> bytes | None:
    """HF ByteLevel vocabulary string -> token bytes; None if `s` is not in the byte alphabet."""
    table = unicode_to_bytes()
    try:
        return bytes(table[c] for c in s)
    except KeyError:
        return None


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Every split of every multi-byte token into two tokens, ordered by the id of the token they make."""
    out: list[tuple[int, int, int, bytes, bytes]] = []
    for tok, rank in ranks.items():
        for i in range(1, len(tok)):
            left, right = tok[:i], tok[i:]
            if left in ranks and right in ranks:
                out.append((rank, ranks[left], ranks[right], left, right))
    out.sort()
    return [(left, right) for _, _, _, left, right in out]


def hf_tokenizer_from_ranks(
    ranks: dict[bytes, int], pattern: str, special_tokens: dict[str, int] | None = None
) -> Tokenizer:
    """An HF byte-level BPE Tokenizer that encodes exactly like tiktoken with the same ranks and pattern."""
    vocab = {token_str(t): i for t, i in ranks.items()}
    merges = [(token_str(a), token_str(b)) for a, b in merges_from_ranks(ranks)]
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    if special_tokens:
        from tokenizers import AddedToken

        for name, idx in sorted(special_tokens.items(), key=lambda kv: kv[1]):
            if tok.get_vocab_size(with_added_tokens=True) != idx:
                raise ValueError(f"special token {name} must take id {tok.get_vocab_size(True)}, asked for {idx}")
            tok.add_special_tokens([AddedToken(name, special=True, normalized=False)])
    return tok


def ranks_from_tokenizer_json(tokenizer_json: str | Path | dict) -> tuple[dict[bytes, int], str, dict[str, int]] | str:
    """(ranks, pattern, special tokens) if this tokenizer.json is a byte-level BPE that tiktoken runs exactly;
    otherwise a string saying why not (callers then fall back to HF tokenizers)."""
    spec = tokenizer_json if isinstance(tokenizer_json, dict) else json.loads(Path(tokenizer_json).read_text("utf-8"))
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        return f"model type {model.get('type')} is not BPE"
    if spec.get("normalizer"):
        return "has a normalizer"
    if model.get("byte_fallback") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return "BPE options tiktoken lacks (byte_fallback / subword prefix / suffix)"
    if not model.get("ignore_merges"):
        return "ignore_merges is off (tiktoken always looks whole pieces up first)"
    pattern = _split_pattern(spec.get("pre_tokenizer"))
    if pattern is None:
        return "pre-tokenizer is not one regex Split followed by ByteLevel"
    specials = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    ranks: dict[bytes, int] = {}
    for s, idx in model["vocab"].items():
        if s in specials:  # an added token may also sit in the model vocabulary (expand puts it there)
            continue
        b = token_bytes(s)
        if b is None:
            return f"vocabulary entry {s!r} is not byte-level"
        ranks[b] = idx
    if any(bytes([b]) not in ranks for b in range(256)):
        return "vocabulary lacks some of the 256 single bytes"
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    expected = [(token_str(a), token_str(b)) for a, b in merges_from_ranks(ranks)]
    if merges != expected:
        return "merges are not every split ordered by token id (merge priority differs from tiktoken's)"
    return ranks, pattern, specials


def _split_pattern(pre: dict | None) -> str | None:
    if not pre:
        return None
    if pre.get("type") == "ByteLevel":
        return GPT2_PATTERN if pre.get("use_regex", True) and not pre.get("add_prefix_space") else None
    if pre.get("type") != "Sequence":
        return None
    steps = pre.get("pretokenizers", [])
    if len(steps) != 2:
        return None
    split, byte_level = steps
    ok_split = (
        split.get("type") == "Split"
        and "Regex" in (split.get("pattern") or {})
        and split.get("behavior") == "Isolated"
        and not split.get("invert")
    )
    ok_bl = byte_level.get("type") == "ByteLevel" and not byte_level.get("use_regex") and not byte_level.get("add_prefix_space")
    return split["pattern"]["Regex"] if ok_split and ok_bl else None
