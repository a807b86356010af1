"""Tokenizer training, the HF folder it saves, exact round trips, and the fast (tiktoken) encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from danlu.tokenizer.bytelevel import ranks_from_tokenizer_json
from danlu.tokenizer.encode import load_encoder
from danlu.tokenizer.train import SPECIAL_TOKENS, train_tokenizer
from tokenizer_corpus import GENERAL_WORDS, OPS_WORDS, make_corpus, write_jsonl


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tok")
    write_jsonl(root / "corpus" / "docs.jsonl", make_corpus(GENERAL_WORDS + OPS_WORDS, 200, 0), bad_lines=2)
    (root / "corpus" / "extra.txt").write_text("Plain text file: 纯文本 🙂 emoji.\n" * 20, encoding="utf-8")
    train_tokenizer([root / "corpus"], root / "bpe", vocab_size=600)
    return root


def test_train_writes_hf_folder_with_specials_and_chat_template(trained: Path):
    from transformers import AutoTokenizer

    out = trained / "bpe"
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "complete"
    c = report["counts"]
    assert (c["in"], c["kept"], sum(c["rejected"].values())) == (203, 201, 2)
    assert c["in"] == c["kept"] + sum(c["rejected"].values())
    assert (out / "rejects.jsonl").read_text().count("missing field 'text'") == 2
    tok = AutoTokenizer.from_pretrained(str(out))
    assert len(tok) == 600 and tok.bos_token == "<|bos|>" and tok.eos_token == "<|eos|>" and tok.pad_token == "<|pad|>"
    vocab = tok.get_vocab()
    assert all(t in vocab for t in SPECIAL_TOKENS)
    assert [vocab[t] for t in SPECIAL_TOKENS] == list(range(600 - len(SPECIAL_TOKENS), 600))
    assert tok("安装 软件包")["input_ids"][0] == vocab["<|bos|>"]
    chat = tok.apply_chat_template(
        [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "安装?"}], tokenize=False,
        add_generation_prompt=True,
    )
    assert chat == "<|bos|><|system|>你是助手<|end|><|user|>安装?<|end|><|assistant|>"
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids[:2] == [vocab["<|bos|>"], vocab["<|user|>"]] and ids[-1] == vocab["<|assistant|>"]


def test_trained_bpe_compresses_its_corpus(trained: Path):
    tok = Tokenizer.from_file(str(trained / "bpe" / "tokenizer.json"))
    text = "".join(make_corpus(OPS_WORDS, 5, 99))
    assert len(tok.encode(text, add_special_tokens=False).ids) < len(text.encode("utf-8")) / 3


def test_fast_encoder_uses_tiktoken_and_matches_hf(trained: Path):
    enc = load_encoder(trained / "bpe")
    assert enc.engine == "tiktoken"
    assert (enc.vocab_size, enc.bos_id, enc.eos_id) == (600, 592, 593)
    hf = Tokenizer.from_file(str(trained / "bpe" / "tokenizer.json"))
    texts = make_corpus(OPS_WORDS + GENERAL_WORDS, 30, 7) + ["  \n\n\t x  ", "", "🙂" * 50, "a" * 3000]
    assert enc.encode_batch(texts) == [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    # special-token strings inside documents are plain text, never control ids
    ids = enc.encode_batch(["文档 <|eos|> 结束"])[0]
    assert enc.eos_id not in ids and hf.decode(ids, skip_special_tokens=False) == "文档 <|eos|> 结束"
    assert load_encoder(trained / "bpe", engine="tokenizers").encode_batch(["文档 <|eos|> 结束"])[0] == ids


# Text that stresses byte-level round trips: rare CJK (extension B), emoji with modifiers/ZWJ, control chars,
# combining marks, RTL, BOM, zero-width and surrogate-free arbitrary code points.
TRICKY = st.one_of(
    st.text(max_size=200),
    st.lists(
        st.sampled_from(
            ["𠀀𪚥𰻝", "👨‍👩‍👧‍👦", "🏳️‍🌈", "\x00\x01\x1b[31m\x7f", "e\u0301", "שלום", "\ufeff\u200b", "  \t\r\n", "软件包",
             "apt-get", "１２３", "ｆｕｌｌ", "\u3000", "¡¿", "ÿ\xad", "<|user|>", "<|eos|>"]
        ),
        max_size=30,
    ).map("".join),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TRICKY)
def test_round_trip_is_exact_and_engines_agree(trained: Path, text: str):
    from transformers import AutoTokenizer

    hf = Tokenizer.from_file(str(trained / "bpe" / "tokenizer.json"))
    hf.encode_special_tokens = True  # the encoder reads "<|user|>" inside a text as text, never as a control id
    enc = _encoder_cache(trained / "bpe")
    ids = enc.encode_batch([text])[0]
    assert ids == hf.encode(text, add_special_tokens=False).ids
    assert hf.decode(ids, skip_special_tokens=False) == text
    auto = _auto_cache(trained / "bpe", AutoTokenizer)
    assert auto.decode(auto(text, add_special_tokens=False)["input_ids"]) == text


_CACHE: dict = {}


def _encoder_cache(path: Path):
    return _CACHE.setdefault(("enc", path), load_encoder(path))


def _auto_cache(path: Path, cls):
    return _CACHE.setdefault(("auto", path), cls.from_pretrained(str(path)))


def test_unigram_is_lossless_and_uses_hf_engine(trained: Path):
    out = trained / "uni"
    train_tokenizer([trained / "corpus"], out, vocab_size=400, type="unigram")
    enc = load_encoder(out)
    assert enc.engine == "tokenizers"
    hf = Tokenizer.from_file(str(out / "tokenizer.json"))
    for text in ["安装软件包 apt-get", "𠀀🙂\x00\x1b ÿ", "never seen: Ωmega ß"]:
        ids = enc.encode_batch([text])[0]
        assert hf.decode(ids) == text and hf.token_to_id("[UNK]") is None


def test_hf_trained_bpe_is_not_mapped_to_tiktoken_but_still_encodes(tmp_path: Path):
    """A BPE whose merges are not "every split by id" (HF's own trainer) must fall back to HF, not encode wrongly."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        make_corpus(OPS_WORDS, 100, 1),
        trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False),
    )
    tok.save(str(tmp_path / "tokenizer.json"))
    assert isinstance(ranks_from_tokenizer_json(tmp_path / "tokenizer.json"), str)
    enc = load_encoder(tmp_path)
    assert enc.engine == "tokenizers" and enc.bos_id is None
    assert enc.encode_batch(["安装 dpkg"]) == [tok.encode("安装 dpkg").ids]
    with pytest.raises(ValueError, match="tiktoken cannot encode"):
        load_encoder(tmp_path, engine="tiktoken")


def test_train_errors_name_the_problem(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nope"):
        train_tokenizer([tmp_path / "nope"], tmp_path / "out", vocab_size=500)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt: not UTF-8"):
        train_tokenizer([tmp_path / "latin1.txt"], tmp_path / "out", vocab_size=500)
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer([tmp_path], tmp_path / "out", vocab_size=100)


def test_bytelevel_strings_and_merges_from_ranks():
    from danlu.tokenizer.bytelevel import merges_from_ranks, token_bytes, token_str

    assert all(token_bytes(token_str(bytes([a, b]))) == bytes([a, b]) for a in range(256) for b in range(256))
    assert token_str(" 软".encode()) == "Ġè½¯" and token_bytes("not byte-level: 软") is None
    ranks = {bytes([i]): i for i in range(256)} | {b"ab": 256, b"abc": 257, b"bc": 258}
    # every split into two tokens, ordered by the id of the token made: (a,b)->ab, then both splits of abc
    assert merges_from_ranks(ranks) == [(b"a", b"b"), (b"a", b"bc"), (b"ab", b"c"), (b"b", b"c")]
