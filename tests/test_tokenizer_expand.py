"""Vocabulary expansion keeps every existing id's meaning; resized models keep their logits on old text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from danlu.tokenizer.encode import load_encoder
from danlu.tokenizer.expand import expand_tokenizer
from danlu.tokenizer.train import train_tokenizer
from tokenizer_corpus import GENERAL_WORDS, OPS_WORDS, make_corpus, write_jsonl


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("expand")
    write_jsonl(root / "general.jsonl", make_corpus(GENERAL_WORDS, 150, 1))
    write_jsonl(root / "ops.jsonl", make_corpus(OPS_WORDS, 150, 2))
    train_tokenizer([root / "general.jsonl"], root / "general", vocab_size=500)
    train_tokenizer([root / "ops.jsonl"], root / "ops", vocab_size=500)
    expand_tokenizer(root / "general", root / "ops", root / "expanded")
    return root


def _tok(path: Path) -> Tokenizer:
    return Tokenizer.from_file(str(path / "tokenizer.json"))


def test_expansion_adds_domain_tokens_and_keeps_every_id(tokenizers: Path):
    base, exp = _tok(tokenizers / "general"), _tok(tokenizers / "expanded")
    base_vocab, exp_vocab = base.get_vocab(True), exp.get_vocab(True)
    assert all(exp_vocab[t] == i for t, i in base_vocab.items())
    new = {t: i for t, i in exp_vocab.items() if t not in base_vocab}
    assert len(new) > 50 and min(new.values()) == len(base_vocab)
    report = json.loads((tokenizers / "expanded" / "report.json").read_text())
    assert report["counts"]["kept"] == len(new)
    assert report["counts"]["in"] == 500 - 8  # every domain BPE token was considered once
    ops_text = "".join(make_corpus(OPS_WORDS, 10, 3))
    n_base = len(base.encode(ops_text, add_special_tokens=False).ids)
    n_exp = len(exp.encode(ops_text, add_special_tokens=False).ids)
    n_dom = len(_tok(tokenizers / "ops").encode(ops_text, add_special_tokens=False).ids)
    assert n_dom < 0.6 * n_base and n_exp <= n_base - 0.8 * (n_base - n_dom)  # recovers >= 80% of the gain


def test_max_new_limits_in_domain_order(tokenizers: Path, tmp_path: Path):
    expand_tokenizer(tokenizers / "general", tokenizers / "ops", tmp_path / "small", max_new=20)
    small, full = _tok(tmp_path / "small").get_vocab(True), _tok(tokenizers / "expanded").get_vocab(True)
    base_size = _tok(tokenizers / "general").get_vocab_size(True)
    small_new = sorted((i, t) for t, i in small.items() if i >= base_size)
    full_new = sorted((i, t) for t, i in full.items() if i >= base_size)
    assert len(small_new) == 20 and small_new == full_new[:20]


MIXED = st.lists(
    st.sampled_from(GENERAL_WORDS + OPS_WORDS + [" ", "，", "。", "\n", "x", "🙂", "软", "件", "包", "apt", "-"]),
    max_size=60,
).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(MIXED, st.text(max_size=80)))
def test_expanded_encoding_only_joins_base_tokens(tokenizers: Path, text: str):
    """Expanded ids = base ids with some neighbours joined into new ids; with no new id they are the base ids."""
    base, exp = _cached(tokenizers / "general"), _cached(tokenizers / "expanded")
    base_ids = base.encode(text, add_special_tokens=False).ids
    exp_ids = exp.encode(text, add_special_tokens=False).ids
    first_new = base.get_vocab_size(True)
    if all(i < first_new for i in exp_ids):
        assert exp_ids == base_ids
    # every base token boundary that survives is a boundary of the expanded encoding (a coarsening)
    assert _boundaries(exp, exp_ids) <= _boundaries(base, base_ids)
    assert exp.decode(exp_ids) == text
    # the fast engine runs the expanded tokenizer exactly
    enc = _CACHE.setdefault("enc", load_encoder(tokenizers / "expanded"))
    assert enc.engine == "tiktoken" and enc.encode_batch([text])[0] == exp_ids


_CACHE: dict = {}


def _cached(path: Path) -> Tokenizer:
    if path not in _CACHE:
        _CACHE[path] = _tok(path)
        _CACHE[path].encode_special_tokens = True  # as the fast encoder: "<|eos|>" in a text is text
    return _CACHE[path]


def _boundaries(tok: Tokenizer, ids: list[int]) -> set[int]:
    from danlu.tokenizer.bytelevel import token_bytes

    out, pos = set(), 0
    for i in ids:
        pos += len(token_bytes(tok.id_to_token(i)))
        out.add(pos)
    return out


def _tiny_llama(vocab_size: int, tie: bool):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("tie", [False, True])
def test_resized_model_keeps_logits_on_old_text_and_loads_plainly(tokenizers: Path, tmp_path: Path, tie: bool):
    import torch
    from transformers import AutoModelForCausalLM

    base_tok = _tok(tokenizers / "general")
    model = _tiny_llama(base_tok.get_vocab_size(True), tie)
    model.save_pretrained(str(tmp_path / "base-model"))
    report = expand_tokenizer(
        tokenizers / "general", tokenizers / "ops", tmp_path / "tok", model=tmp_path / "base-model",
        model_out=tmp_path / "model",
    )
    assert list((tmp_path / "model").glob("*.safetensors")) and (tmp_path / "model" / "tokenizer.json").exists()
    resized = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model")).eval()
    old_n, new_n = base_tok.get_vocab_size(True), _tok(tmp_path / "tok").get_vocab_size(True)
    assert report["model"]["rows_after"] == new_n > old_n
    assert resized.get_input_embeddings().weight.shape[0] == new_n == resized.config.vocab_size

    exp_tok = _tok(tmp_path / "tok")
    text = "床前明月光，疑是地上霜。the moon light"
    ids = exp_tok.encode(text, add_special_tokens=False).ids
    assert ids and max(ids) < old_n  # this text uses no new token
    x = torch.tensor([ids])
    with torch.no_grad():
        before, after = model(x).logits, resized(x).logits
    assert after.shape[-1] == new_n
    assert torch.equal(before, after[..., :old_n])

    # a new token's rows are the mean of the rows of the base pieces it used to split into
    new_tok = next(t for t, i in exp_tok.get_vocab(True).items() if i == old_n)
    pieces = [t.id for t in base_tok.model.tokenize(new_tok)]
    assert len(pieces) >= 2
    w_old, w_new = model.get_input_embeddings().weight, resized.get_input_embeddings().weight
    assert torch.allclose(w_new[old_n], w_old[pieces].mean(0))
    out_old, out_new = model.get_output_embeddings().weight, resized.get_output_embeddings().weight
    assert torch.allclose(out_new[old_n], out_old[pieces].mean(0))


def test_expand_rejects_non_bpe_base(tokenizers: Path, tmp_path: Path):
    train_tokenizer([tokenizers / "general.jsonl"], tmp_path / "uni", vocab_size=300, type="unigram")
    with pytest.raises(ValueError, match="expand needs a BPE base"):
        expand_tokenizer(tmp_path / "uni", tokenizers / "ops", tmp_path / "out")
    with pytest.raises(ValueError, match="go together"):
        expand_tokenizer(tokenizers / "general", tokenizers / "ops", tmp_path / "o2", model=tmp_path / "m")


def test_cli_train_expand_compare(tokenizers: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from danlu.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["tokenizer", "train", str(tokenizers / "ops.jsonl"), "-o", str(tmp_path / "t"), "--vocab-size", "400"])
    assert r.exit_code == 0, r.output
    assert "vocab_size=400" in r.output
    r = runner.invoke(app, ["tokenizer", "expand", str(tokenizers / "general"), str(tmp_path / "t"), "-o", str(tmp_path / "e"), "--max-new", "10"])
    assert r.exit_code == 0, r.output
    assert "kept=10" in r.output
    r = runner.invoke(
        app,
        ["tokenizer", "compare", str(tokenizers / "general"), str(tmp_path / "t"), str(tmp_path / "e"),
         "--corpus", str(tokenizers / "ops.jsonl"), "--json", str(tmp_path / "cmp.json")],
    )
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "cmp.json").read_text())
    rows = {(x["source"], x["tokenizer"]): x for x in result["rows"]}
    gen, dom, exp = (rows[("s", n)] for n in ("general", "t", "e"))
    assert dom["tokens"] < exp["tokens"] < gen["tokens"]
    assert gen["tokens_per_1000_cjk"] > dom["tokens_per_1000_cjk"] and dom["chars_per_token"] > gen["chars_per_token"]
    general_vs_expanded = result["vocab_overlap"][1]
    assert (general_vs_expanded["a"], general_vs_expanded["b"]) == ("general", "e")
    assert general_vs_expanded["shared"] == general_vs_expanded["a_size"] == general_vs_expanded["b_size"] - 10
    assert result["examples"] and result["examples"][0]["lines"]
    assert "tokens/1k CJK" in r.output


def test_compare_all_row_sums_the_sources(tokenizers: Path, tmp_path: Path):
    from danlu.tokenizer.compare import compare_tokenizers

    texts = {"ops": make_corpus(OPS_WORDS, 20, 11), "general": make_corpus(GENERAL_WORDS, 30, 12)}
    for source, ts in texts.items():
        with open(tmp_path / f"{source}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": t, "source": source}, ensure_ascii=False) + "\n" for t in ts)
    result = compare_tokenizers([tokenizers / "general"], [tmp_path / "ops.jsonl", tmp_path / "general.jsonl"])
    rows = {r["source"]: r for r in result["rows"]}
    assert set(rows) == {"ops", "general", "(all)"}
    enc = load_encoder(tokenizers / "general")
    every = [t for ts in texts.values() for t in ts]
    assert rows["(all)"]["tokens"] == rows["ops"]["tokens"] + rows["general"]["tokens"] == sum(map(len, enc.encode_batch(every)))
    assert rows["(all)"]["documents"] == 50 and rows["(all)"]["characters"] == sum(map(len, every))
    assert rows["(all)"]["chars_per_token"] == round(rows["(all)"]["characters"] / rows["(all)"]["tokens"], 4)


def sentencepiece_base(folder: Path, texts: list[str], vocab_size: int) -> Path:
    """A Llama-2-style tokenizer folder: SentencePiece BPE with byte fallback, as transformers converts it
    (pieces with ▁, merges = every split of a piece into two pieces, Metaspace, ByteFallback decoding)."""
    import sentencepiece as spm
    from tokenizers import decoders, models, pre_tokenizers

    folder.mkdir(parents=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=str(folder / "sp"), vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        character_coverage=1.0, minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(folder / "sp.model"))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    merges = sorted((vocab[p], vocab[p[:k]], vocab[p[k:]], p[:k], p[k:]) for p in vocab for k in range(1, len(p))
                    if p[:k] in vocab and p[k:] in vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for *_, a, b in merges], unk_token="<unk>",
                               fuse_unk=True, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.save(str(folder / "tokenizer.json"))
    for text in texts[:20]:  # the helper really is the SentencePiece model
        assert tok.encode(text).tokens == sp.encode(text, out_type=str), text
    return folder


def test_expand_sentencepiece_base_like_chinese_llama(tokenizers: Path, tmp_path: Path):
    """A Llama-2-style base that lacks the domain's Chinese characters gets them (and multi-character pieces)
    from danlu's byte-level domain tokenizer; base ids and base tokenizations stay as they were."""
    import random

    import torch

    from danlu.model.resize import resize_for_tokenizer

    base_dir = sentencepiece_base(tmp_path / "llama", make_corpus(GENERAL_WORDS, 150, 1), 400)
    report = expand_tokenizer(base_dir, tokenizers / "ops", tmp_path / "exp")
    skipped = report["counts"]["filtered"]
    assert skipped["partial_character"] > 0 and "half_of_existing" not in skipped  # byte prefixes can't be pieces
    base, exp = _tok(base_dir), _tok(tmp_path / "exp")
    base_vocab, exp_vocab = base.get_vocab(True), exp.get_vocab(True)
    assert all(exp_vocab[t] == i for t, i in base_vocab.items())
    new = {t: i for t, i in exp_vocab.items() if t not in base_vocab}
    assert len(new) == report["counts"]["kept"] > 20
    assert {"软", "件", "包"} <= set(new) and any(len(t) > 1 and "\u2581" not in t for t in new)
    ops_text = "".join(make_corpus(OPS_WORDS, 10, 3))
    assert len(exp.encode(ops_text).ids) < 0.6 * len(base.encode(ops_text).ids)

    rng = random.Random(5)
    pool = GENERAL_WORDS + OPS_WORDS + [" ", "，", "\n", "🙂", "x", "  "]
    for _ in range(300):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 12)))
        b, e = base.encode(text), exp.encode(text)
        if all(i < len(base_vocab) for i in e.ids):
            assert e.ids == b.ids, text
        assert {end for _, end in e.offsets} <= {end for _, end in b.offsets}, text  # only joins base tokens
        assert exp.decode(e.ids) == base.decode(b.ids)
    enc = load_encoder(tmp_path / "exp")
    assert enc.engine == "tokenizers" and enc.encode_batch([ops_text])[0] == exp.encode(ops_text, add_special_tokens=False).ids

    model = _tiny_llama(len(base_vocab), tie=False)
    model.save_pretrained(str(tmp_path / "m"))
    resize_for_tokenizer(tmp_path / "m", base_dir, tmp_path / "exp", tmp_path / "m2")
    from transformers import AutoModelForCausalLM

    resized = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m2")).eval()
    old = torch.tensor([base.encode("床前明月光").ids])
    with torch.no_grad():
        assert torch.equal(model(old).logits, resized(old).logits[..., : len(base_vocab)])
    fallback = [t.id for t in base.model.tokenize("软")]  # a new character was three byte-fallback pieces
    assert [base.id_to_token(i) for i in fallback] == ["<0xE8>", "<0xBD>", "<0xAF>"]
    w0, w1 = model.get_input_embeddings().weight, resized.get_input_embeddings().weight
    assert torch.allclose(w1[exp_vocab["软"]], w0[fallback].mean(0))


def test_expand_sentencepiece_base_with_a_sentencepiece_domain(tmp_path: Path):
    """Chinese-LLaMA's recipe: a SentencePiece model trained on Chinese merged into Llama's. SentencePiece lists
    single characters after the pieces built from them, so characters are taken first."""
    base_dir = sentencepiece_base(tmp_path / "llama", make_corpus(GENERAL_WORDS, 150, 1), 400)
    dom_dir = sentencepiece_base(tmp_path / "zh", make_corpus(OPS_WORDS, 150, 2), 400)
    report = expand_tokenizer(base_dir, dom_dir, tmp_path / "exp")
    assert report["counts"]["filtered"]["byte_piece"] == 256 and "unreachable" not in report["counts"]["filtered"]
    exp, dom = _tok(tmp_path / "exp"), _tok(dom_dir)
    new = {t for t in exp.get_vocab(True)} - set(_tok(base_dir).get_vocab(True))
    assert {"软件包", "软", "件", "包"} <= new
    text = "".join(make_corpus(OPS_WORDS, 10, 3))
    assert len(exp.encode(text).ids) <= 1.05 * len(dom.encode(text).ids)  # close to the domain model itself
