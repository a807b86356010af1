"""`danlu data tokenize` and the token store: round trip, dtype, rejects, resume, reuse, parallel == serial."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer
from tokstore_helpers import make_tokenizer, write_docs

import danlu.data.tokenize as tokmod
from danlu.data.tokenize import tokenize
from danlu.runs import read_report
from danlu.tokenizer.encode import load_encoder
from danlu.train.store import TokenStore

BAD = {3: "{not json", 7: json.dumps({"id": "x", "source": "ops"}), 9: "[1, 2]",
       12: json.dumps({"id": "e", "text": "   ", "source": "ops"})}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def test_round_trip_tokens_framing_rejects_and_counts(tmp_path, tok):
    docs = write_docs(tmp_path / "in" / "a.jsonl", 40, bad_lines=BAD)
    docs += write_docs(tmp_path / "in" / "b.jsonl", 25, source="faq", seed=1)
    report = tokenize([tmp_path / "in"], tmp_path / "store", tok, workers=1, shard_mb=0.002, progress=False)

    c = report["counts"]
    rejected = sum(c["filtered"].values()) + sum(c["rejected"].values())
    assert c["in"] == 65 + len(BAD) == c["kept"] + rejected
    assert c["kept"] == 65 and rejected == len(BAD) and report["shards"] > 3
    assert report["mb_per_s"] > 0 and report["dtype"] == "uint16"
    rejects = [json.loads(x) for x in (tmp_path / "store" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["path"].endswith("a.jsonl")) for r in rejects] == [(n, True) for n in sorted(BAD)]
    reasons = [r["reason"] for r in rejects]
    assert "invalid JSON" in reasons[0] and "missing field 'text'" in reasons[1]
    assert "expected a JSON object" in reasons[2] and reasons[3] == "empty text"

    store = TokenStore(tmp_path / "store")
    enc = load_encoder(tok)
    hf = Tokenizer.from_file(str(tok / "tokenizer.json"))
    assert len(store) == 65 and store.ids() == [d["id"] for d in docs]
    assert store.dtype == np.uint16 and store.doc(0).dtype == np.uint16
    assert isinstance(store._shard(0), np.memmap)  # streamed from disk, not loaded
    for i, d in enumerate(docs):
        body = hf.encode(d["text"], add_special_tokens=False).ids
        assert body == enc.encode_batch([d["text"]])[0]
        assert store.doc(i).tolist() == [enc.bos_id, *body, enc.eos_id]
    assert store.num_tokens == report["tokens"]
    assert [store.source_names[c] for c in store.source_codes] == [d["source"] for d in docs]
    assert store.doc(3, start=2, length=5).tolist() == store.doc(3).tolist()[2:7]


def test_dtype_is_uint32_for_large_vocab(tmp_path, tok):
    big = tmp_path / "bigtok"
    big.mkdir()
    hf = Tokenizer.from_file(str(tok / "tokenizer.json"))
    hf.add_tokens([f"zzextra{i}" for i in range(65536)])
    hf.save(str(big / "tokenizer.json"))
    (big / "tokenizer_config.json").write_bytes((tok / "tokenizer_config.json").read_bytes())  # bos/eos names
    (tmp_path / "a.jsonl").write_text(json.dumps({"id": "1", "text": "apt zzextra65535 dpkg", "source": "s"}) + "\n")
    report = tokenize([tmp_path / "a.jsonl"], tmp_path / "store", big, workers=1, progress=False)
    store = TokenStore(tmp_path / "store")
    assert report["dtype"] == "uint32" and store.dtype == np.uint32
    assert hf.token_to_id("zzextra65535") in store.doc(0).tolist()  # an id >= 65536 survives the round trip


def test_killed_run_resumes_from_completed_shards_and_finished_store_is_reused(tmp_path, tok, monkeypatch):
    write_docs(tmp_path / "a.jsonl", 60)
    kw = dict(workers=1, shard_mb=0.002, progress=False)
    full = tokenize([tmp_path / "a.jsonl"], tmp_path / "ref", tok, **kw)

    real = tokmod._write_shard
    calls = []

    def dies_on_third_shard(job):
        calls.append(job["name"])
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(job)

    monkeypatch.setattr(tokmod, "_write_shard", dies_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        tokenize([tmp_path / "a.jsonl"], tmp_path / "store", tok, **kw)
    assert read_report(tmp_path / "store") is None  # not mistaken for a finished store
    monkeypatch.setattr(tokmod, "_write_shard", real)

    resumed = tokenize([tmp_path / "a.jsonl"], tmp_path / "store", tok, **kw)
    assert resumed["shards_reused"] == 2 and resumed["shards"] == full["shards"] > 3
    assert resumed["counts"]["kept"] == full["counts"]["kept"] == 60 and resumed["tokens"] == full["tokens"]
    a, b = TokenStore(tmp_path / "ref"), TokenStore(tmp_path / "store")
    assert all(a.doc(i).tolist() == b.doc(i).tolist() for i in range(60))

    marker = (tmp_path / "store" / "report.json").stat().st_mtime_ns
    again = tokenize([tmp_path / "a.jsonl"], tmp_path / "store", tok, **kw)
    assert again["reused"] is True and (tmp_path / "store" / "report.json").stat().st_mtime_ns == marker

    write_docs(tmp_path / "a.jsonl", 61)  # changed input: the store is rebuilt, not reused
    changed = tokenize([tmp_path / "a.jsonl"], tmp_path / "store", tok, **kw)
    assert not changed.get("reused") and changed["counts"]["kept"] == 61 and changed["shards_reused"] == 0


def test_process_pool_gives_the_same_store_as_one_process(tmp_path, tok):
    write_docs(tmp_path / "a.jsonl", 80, max_words=300)
    one = tokenize([tmp_path / "a.jsonl"], tmp_path / "one", tok, workers=1, shard_mb=0.01, progress=False)
    two = tokenize([tmp_path / "a.jsonl"], tmp_path / "two", tok, workers=2, shard_mb=0.01, progress=False)
    assert one["shards"] == two["shards"] > 2 and one["tokens"] == two["tokens"]
    for name in json.loads((tmp_path / "one" / "store.json").read_text())["shards"]:
        assert (tmp_path / "one" / "shards" / f"{name}.tokens").read_bytes() == \
               (tmp_path / "two" / "shards" / f"{name}.tokens").read_bytes()


def test_cli_tokenize_and_source_override(tmp_path, tok):
    from typer.testing import CliRunner

    from danlu.cli import app

    write_docs(tmp_path / "a.jsonl", 10, bad_lines={2: "oops"})
    args = ["data", "tokenize", str(tmp_path / "a.jsonl"), "-o", str(tmp_path / "s"), "--tokenizer", str(tok),
            "--source", "handbook", "--workers", "1"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "kept=10" in res.output and "rejected=1" in res.output and "mb_per_s=" in res.output
    assert TokenStore(tmp_path / "s").source_names == ["handbook"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and "already tokenized" in res.output


def test_unfinished_store_is_refused_with_a_clear_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="danlu data tokenize"):
        TokenStore(tmp_path)


@pytest.mark.slow
def test_real_corpus_store_mix_and_stream(debian_corpus, tmp_path):
    """Debian ops (domain) + fortunes (general): tokenize in parallel, plan the mix, stream packed batches."""
    from tokstore_helpers import corpus_to_jsonl

    from danlu.tokenizer.train import train_tokenizer
    from danlu.train.batches import PackedBatches, SourceSpec, heldout_batches
    from danlu.train.mixing import plan

    n_ops = corpus_to_jsonl(debian_corpus, "ops", tmp_path / "ops.jsonl")
    n_gen = corpus_to_jsonl(debian_corpus, "general", tmp_path / "general.jsonl")
    tok = tmp_path / "tok"
    train_tokenizer([tmp_path / "ops.jsonl", tmp_path / "general.jsonl"], tok, vocab_size=2048)
    ops = tokenize([tmp_path / "ops.jsonl"], tmp_path / "s-ops", tok, workers=2, shard_mb=2, progress=False)
    gen = tokenize([tmp_path / "general.jsonl"], tmp_path / "s-gen", tok, workers=2, shard_mb=2, progress=False)
    assert ops["counts"]["kept"] == n_ops > 500 and gen["counts"]["kept"] == n_gen > 0 and ops["shards"] > 2
    assert ops["mb_per_s"] > 0.1 and ops["dtype"] == "uint16"
    print(f"\ntokenize ops: {ops['text_bytes'] / 2**20:.1f} MB, {ops['tokens']} tokens, {ops['mb_per_s']} MB/s")

    store, enc = TokenStore(tmp_path / "s-ops"), load_encoder(tok)
    records = [json.loads(x) for x in (tmp_path / "ops.jsonl").read_text(encoding="utf-8").splitlines()]
    for i in range(0, len(records), 97):
        assert store.doc(i).tolist() == [enc.bos_id, *enc.encode_batch([records[i]["text"]])[0], enc.eos_id]

    sources = [SourceSpec(name="ops", store=str(tmp_path / "s-ops"), weight=0.15, domain=True),
               SourceSpec(name="general", store=str(tmp_path / "s-gen"), weight=0.85)]
    p = plan(sources, 10_000_000)
    print(p.table())
    assert p.warnings and "general" in p.warnings[0]  # the small general corpus would repeat many epochs
    stream = PackedBatches(sources, seq_len=512, batch_size=8, seed=0)
    for _ in range(30):
        next(stream)
    stats = stream.stats()
    assert stats["pad_fraction"] < 0.02
    share = stats["source_tokens"]["ops"] / sum(stats["source_tokens"].values())
    assert share == pytest.approx(0.15, abs=0.01)
    held = heldout_batches(sources[0], 512, 8)
    assert held and all(b["input_ids"].shape[1] == 512 for b in held)


def test_a_stage_output_folder_is_read_without_its_side_files(tok, tmp_path):
    from danlu.data.clean import clean

    write_docs(tmp_path / "in" / "a.jsonl", 20, bad_lines={3: "oops"})
    clean([tmp_path / "in"], tmp_path / "clean", preset="pretrain", progress=False)
    assert (tmp_path / "clean" / "rejects.jsonl").exists()
    report = tokenize([tmp_path / "clean"], tmp_path / "store", tok, workers=1, progress=False)
    # only clean.jsonl was read: the rejects file beside it is not taken for documents
    assert report["counts"]["rejected"] == {} and report["counts"]["in"] == report["counts"]["kept"] > 0
