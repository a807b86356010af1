"""danlu's C BPE trainer (danlu/tokenizer/_bpe.c): its GPT-4 splitter, the greediness and bookkeeping of every
merge, the character tokens it builds first, and the rustbpe fallback."""

from __future__ import annotations

import json
import random
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.tokenizer.bytelevel import GPT2_PATTERN, GPT4_PATTERN
from danlu.tokenizer.train import train_tokenizer
from tokenizer_corpus import GENERAL_WORDS, OPS_WORDS, make_corpus, write_jsonl

try:
    from danlu.tokenizer import _bpe
except ImportError:  # pragma: no cover - depends on the machine
    if shutil.which("cc") or shutil.which("gcc"):
        raise  # a compiler is here, so `pip install -e .` must have built the extension
    pytest.skip("no C compiler: the trainer extension is not built (train falls back to rustbpe)", allow_module_level=True)

GPT4 = regex.compile(GPT4_PATTERN)

# Every character class the pattern distinguishes, with the edge cases: contractions in both cases, CJK and
# Unihan numerals (letters, not numbers), other numerals, CR/LF runs, NBSP and ideographic spaces, emoji.
ALPHABET = list("aZé中文的一二Ⅻ½0123456789'sStTdlLvVrReE.,;!?()[]-—“”、。，") + [
    " ", "  ", "\t", "\n", "\r", "\r\n", "\u00a0", "\u3000", "\u2028", "🙂", "\x00", "\x1c",
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(ALPHABET), max_size=40).map("".join))
def test_splitter_equals_the_gpt4_regex(text: str):
    assert _bpe.split_gpt4(text) == GPT4.findall(text)


def test_splitter_equals_the_gpt4_regex_on_real_text():
    text = "".join(make_corpus(OPS_WORDS + GENERAL_WORDS, 300, 5))
    text += "It's 2024 -- we'll    run `apt-get install`\r\n\n  again。  价格：１２３元\n\t\n"
    assert _bpe.split_gpt4(text) == GPT4.findall(text)


def initial_symbols(word: str, built: dict[bytes, int]) -> list[int]:
    """What the trainer starts a chunk from: built characters, else the longest built prefix and bytes."""
    out: list[int] = []
    for ch in word:
        b = ch.encode("utf-8")
        if b in built:
            out.append(built[b])
            continue
        for p in range(len(b) - 1, 1, -1):
            if b[:p] in built:
                out += [built[b[:p]], *b[p:]]
                break
        else:
            out += list(b)
    return out


def is_whole(t: bytes) -> bool:
    try:
        t.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def within_one_character(t: bytes) -> bool:
    cont = all(0x80 <= x < 0xC0 for x in t[1:])
    if t[0] >= 0xC0:  # a lead byte: what follows must fit in its character
        return cont and len(t) <= (2 if t[0] < 0xE0 else 3 if t[0] < 0xF0 else 4)
    return cont and 0x80 <= t[0] < 0xC0 and len(t) <= 3


def may_join(a: bytes, b: bytes) -> bool:
    """Whole characters join whole characters; pieces of a character join only within it."""
    return (is_whole(a) and is_whole(b)) or within_one_character(a + b)


def replay(texts: list[str], n_tokens: int, **kw) -> tuple[list[bytes], list[tuple[int, int, int, int]]]:
    """Train, then redo every merge naively: each must be the most frequent joinable adjacent pair at its turn,
    with the count the trainer reports, and make the token the trainer returned."""
    trainer = _bpe.Trainer()
    for t in texts:
        trainer.add_text(t)
    tokens, merges = trainer.train(n_tokens, details=True, **kw)
    made = {z for *_, z, _ in merges}
    built = {t: i for i, t in enumerate(tokens) if i not in made}  # bytes and the characters built first
    words = Counter(c for t in texts for c in GPT4.findall(t))
    segs = {w: initial_symbols(w, built) for w in words}
    for a, b, z, count in merges:
        pairs: Counter = Counter()
        for w, seg in segs.items():
            for x, y in zip(seg, seg[1:]):
                if may_join(tokens[x], tokens[y]):
                    pairs[x, y] += words[w]
        assert pairs[a, b] == count == max(pairs.values()), (tokens[a], tokens[b], count)
        assert tokens[z] == tokens[a] + tokens[b]
        for w, seg in segs.items():  # apply left to right, as tiktoken and HF do
            out, i = [], 0
            while i < len(seg):
                if i + 1 < len(seg) and seg[i] == a and seg[i + 1] == b:
                    out.append(z)
                    i += 2
                else:
                    out.append(seg[i])
                    i += 1
            segs[w] = out
    return tokens, merges


def test_every_merge_is_the_most_frequent_pair_with_its_true_count():
    texts = make_corpus(OPS_WORDS + GENERAL_WORDS, 60, 1) + ["龘龘 " * 30, "𠀀𠀁 🙂🙃 " * 9]  # rare 3- and 4-byte
    tokens, merges = replay(texts, 900, coverage=0.9)
    assert len(tokens) == 900 and len(set(tokens)) == 900
    assert tokens[:256] == [bytes([b]) for b in range(256)]
    assert len(merges) > 300


def test_ranks_are_valid_bpe_and_tokens_never_cut_across_characters():
    texts = make_corpus(OPS_WORDS + GENERAL_WORDS, 200, 7) + ["龘龘 𠀀𠀁 🙂🙃 é" * 20]
    trainer = _bpe.Trainer()
    for t in texts:
        trainer.add_text(t)
    tokens = trainer.train(2000, coverage=0.95)
    rank = {t: i for i, t in enumerate(tokens)}
    for i, t in enumerate(tokens[256:], 256):  # buildable from two lower-ranked tokens
        assert any(rank.get(t[:k], i) < i and rank.get(t[k:], i) < i for k in range(1, len(t))), t
        assert is_whole(t) or within_one_character(t), t


def test_runs_of_one_symbol_overlap_correctly():
    rng = random.Random(0)
    texts = [" ".join(c * rng.randint(1, 40) for _ in range(200)) for c in "=-哈ab"]
    texts += ["".join(rng.choice("ab") for _ in range(rng.randint(1, 30))) + " " for _ in range(300)]
    tokens, _ = replay(texts, 420)
    assert len(set(tokens)) == len(tokens)
    assert "哈哈".encode() in tokens and b"====" in tokens


def test_frequent_characters_become_tokens_before_any_merge_and_rare_ones_stay_bytes():
    common, rare = "的是在了不", "龘"
    texts = [common * 50 + " abc " * 20, rare + " xyz"]
    trainer = _bpe.Trainer()
    for t in texts:
        trainer.add_text(t)
    tokens, merges = trainer.train(300, coverage=0.99, details=True)
    made = {z for *_, z, _ in merges}
    built = [t for i, t in enumerate(tokens[256:], 256) if i not in made]
    for ch in common:  # the character, and the 2-byte prefix it is assembled from (ranked before it)
        b = ch.encode()
        assert b in built and b[:2] in built and built.index(b[:2]) < built.index(b)
    assert rare.encode() not in built  # below coverage and seen once: left to the merges, as bytes


def test_character_tokens_respect_the_budget():
    rng = random.Random(1)
    cjk = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    texts = ["".join(rng.choice(cjk) for _ in range(50)) for _ in range(400)]
    trainer = _bpe.Trainer()
    for t in texts:
        trainer.add_text(t)
    tokens, merges = trainer.train(600, max_char_fraction=0.5, details=True)
    built = len(tokens) - 256 - len({z for *_, z, _ in merges})
    assert 0 < built <= (600 - 256) // 2 and len(tokens) == 600


def test_progress_is_reported_and_its_errors_stop_training():
    trainer = _bpe.Trainer()
    for t in make_corpus(OPS_WORDS, 100, 2):
        trainer.add_text(t)
    seen: list[int] = []
    trainer.train(1500, progress=lambda done, total: seen.append(done))
    assert seen and seen == sorted(seen) and seen[-1] <= 1500

    def stop(done, total):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        trainer.train(1500, progress=stop)
    with pytest.raises(ValueError, match="n_tokens"):
        trainer.train(10)


def test_other_split_patterns_train_through_python_chunks(tmp_path: Path):
    from tokenizers import Tokenizer

    write_jsonl(tmp_path / "c" / "d.jsonl", make_corpus(GENERAL_WORDS + OPS_WORDS, 100, 3))
    report = train_tokenizer([tmp_path / "c"], tmp_path / "tok", vocab_size=500, pattern=GPT2_PATTERN)
    assert report["engine"] == "danlu-bpe"
    tok = Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json"))
    assert json.loads(tok.to_str())["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] == GPT2_PATTERN
    text = "".join(make_corpus(OPS_WORDS, 3, 4))
    assert tok.decode(tok.encode(text, add_special_tokens=False).ids) == text


def test_without_the_extension_training_falls_back_to_rustbpe(tmp_path: Path, monkeypatch):
    import danlu.tokenizer
    from tokenizers import Tokenizer

    monkeypatch.setitem(sys.modules, "danlu.tokenizer._bpe", None)  # import now raises ImportError
    monkeypatch.delattr(danlu.tokenizer, "_bpe", raising=False)
    write_jsonl(tmp_path / "c" / "d.jsonl", make_corpus(GENERAL_WORDS + OPS_WORDS, 100, 3))
    report = train_tokenizer([tmp_path / "c"], tmp_path / "tok", vocab_size=500)
    assert report["engine"] == "rustbpe" and report["vocab_size"] == 500
    assert "rustbpe" in (tmp_path / "tok" / "run.log").read_text()
    tok = Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json"))
    text = "".join(make_corpus(OPS_WORDS, 3, 4))
    assert tok.decode(tok.encode(text, add_special_tokens=False).ids) == text


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from(ALPHABET + ["ab", "的的", "龘", "𠀀"]), max_size=30).map("".join), min_size=1,
                max_size=12),
       st.integers(257, 420), st.sampled_from([0.5, 0.9, 1.0]))
def test_merges_stay_greedy_and_exact_on_any_text(texts: list[str], n_tokens: int, coverage: float):
    tokens, _ = replay(texts, n_tokens, coverage=coverage)
    assert len(set(tokens)) == len(tokens) <= n_tokens
    rank = {t: i for i, t in enumerate(tokens)}
    for i, t in enumerate(tokens[256:], 256):
        assert any(rank.get(t[:k], i) < i and rank.get(t[k:], i) < i for k in range(1, len(t))), t
