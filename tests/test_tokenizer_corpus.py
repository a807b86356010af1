"""End to end on the real Debian Chinese corpus: domain gain, expansion recovering it, exact round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from danlu.tokenizer.compare import compare_tokenizers
from danlu.tokenizer.encode import load_encoder
from danlu.tokenizer.expand import expand_tokenizer
from danlu.tokenizer.train import train_tokenizer
from tokenizer_corpus import DOMAIN_HELDOUT, DOMAIN_TRAIN, GENERAL, part_texts, write_txt

pytestmark = pytest.mark.slow
VOCAB = 8192


@pytest.fixture(scope="module")
def built(debian_corpus: Path, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tok-debian")
    parts = {name: part_texts(debian_corpus, p) for name, p in
             [("ops", DOMAIN_TRAIN), ("heldout", DOMAIN_HELDOUT), ("general", GENERAL)]}
    for name, texts in parts.items():
        assert texts, f"no text in the {name} part of {debian_corpus}"
        write_txt(texts, root / "corpus" / name, name)
    train_tokenizer([root / "corpus" / "ops"], root / "ops", vocab_size=VOCAB)
    train_tokenizer([root / "corpus" / "general"], root / "general", vocab_size=VOCAB)
    expand_tokenizer(root / "general", root / "ops", root / "expanded")
    return {"root": root, "parts": parts}


def test_domain_tokenizer_wins_on_heldout_ops_and_expansion_recovers_it(built: dict):
    root = built["root"]
    result = compare_tokenizers(
        [root / "general", root / "ops", root / "expanded"], [root / "corpus" / "heldout"], examples=3
    )
    rows = {r["tokenizer"]: r for r in result["rows"] if r["source"] == "(all)"}
    general, ops, expanded = rows["general"]["tokens"], rows["ops"]["tokens"], rows["expanded"]["tokens"]
    assert ops < 0.97 * general  # measurably fewer tokens on held-out ops text
    assert general - expanded >= 0.7 * (general - ops)  # expansion recovers most of the gain
    assert rows["ops"]["tokens_per_1000_cjk"] < rows["general"]["tokens_per_1000_cjk"]
    assert result["examples"][0]["lines"]


def test_round_trip_and_engines_agree_on_whole_corpus(built: dict, debian_corpus: Path):
    raw = [p.read_text(encoding="utf-8") for p in sorted(debian_corpus.rglob("*")) if p.is_file() and p.suffix != ".pdf"]
    texts = [t for ts in built["parts"].values() for t in ts] + raw  # extracted text and every raw file (HTML, roff)
    for name in ("ops", "expanded"):
        path = built["root"] / name
        hf = Tokenizer.from_file(str(path / "tokenizer.json"))
        enc = load_encoder(path)
        assert enc.engine == "tiktoken"
        ids = enc.encode_batch(texts)
        assert ids == [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)], name
        assert hf.decode_batch(ids, skip_special_tokens=False) == texts, name


def test_expanded_keeps_base_ids_on_lines_without_new_tokens(built: dict):
    lines = [ln for t in built["parts"]["heldout"] for ln in t.splitlines(keepends=True)]
    base = load_encoder(built["root"] / "general")
    expanded = load_encoder(built["root"] / "expanded")
    a, b = base.encode_batch(lines), expanded.encode_batch(lines)
    first_new = base.vocab_size
    untouched = [i for i, ids in enumerate(b) if all(x < first_new for x in ids)]
    assert len(untouched) > len(lines) // 10
    assert all(a[i] == b[i] for i in untouched)
    assert all(len(b[i]) <= len(a[i]) for i in range(len(lines)))


def test_danlu_trainer_compresses_as_well_as_rustbpe(built: dict):
    """The C trainer builds characters first (see _bpe.c); that must not cost compression against a plain
    byte-level BPE trained on the same text with the same vocabulary."""
    import rustbpe
    import tiktoken

    from danlu.tokenizer.bytelevel import GPT4_PATTERN
    from danlu.tokenizer.train import SPECIAL_TOKENS

    ops = load_encoder(built["root"] / "ops")
    assert ops.engine == "tiktoken"
    peer = rustbpe.Tokenizer()
    peer.train_from_iterator(iter(built["parts"]["ops"]), VOCAB - len(SPECIAL_TOKENS), pattern=GPT4_PATTERN)
    peer_enc = tiktoken.Encoding("rustbpe", pat_str=GPT4_PATTERN, mergeable_ranks=dict(peer.get_mergeable_ranks()),
                                 special_tokens={})
    for part in ("heldout", "general"):
        texts = built["parts"][part]
        ours = sum(map(len, ops.encode_batch(texts)))
        theirs = sum(map(len, peer_enc.encode_ordinary_batch(texts)))
        assert ours <= 1.01 * theirs, (part, ours, theirs)
