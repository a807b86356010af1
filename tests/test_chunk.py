"""Chunking: round trip (no text lost or duplicated), token budget, unit boundaries, heading paths, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from typer.testing import CliRunner

from danlu.cli import app
from danlu.data.chunk import chunk, load_counter, plan_chunks
from danlu.records import document, stable_id

TABLE = "| 命令 | 作用 |\n|------|------|\n" + "".join(f"| cmd{i} | 第{i}个命令的说明 |\n" for i in range(8)).rstrip("\n")
CODE = "```bash\n" + "\n".join(f"echo step {i}  # 第{i}步" for i in range(10)) + "\n\n\n# after blank lines\n```"
DOC = f"""# Debian 手册

Debian 是一个自由的操作系统。它由志愿者维护！Is it free? Yes. 它提供很多软件包。

## 安装

- 下载镜像
- 写入 U 盘
- 启动安装程序

{TABLE}

{CODE}

## 配置

### 网络

{"网络配置文件位于 /etc/network/interfaces。修改后需要重启服务；也可以使用 NetworkManager。" * 12}

### 软件源

编辑 sources.list 文件，然后运行 apt update。

## 结语

完。"""


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A tiny byte-level BPE trained here (no downloads), saved as a Hugging Face tokenizer folder."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([DOC] * 3 + ["The quick brown fox jumps over the lazy dog."] * 3, trainer)
    folder = tmp_path_factory.mktemp("tok")
    tok.save(str(folder / "tokenizer.json"))
    return folder


def _check_round_trip(text: str, chunks) -> None:
    pos = 0
    for c in chunks:
        assert c.start >= pos
        assert text[pos : c.start].strip() == "", f"text lost between chunks: {text[pos:c.start]!r}"
        pos = c.end
    assert text[pos:].strip() == ""
    body = "".join(text[c.start : c.end] for c in chunks)
    assert "".join(body.split()) == "".join(text.split())  # nothing lost or duplicated, up to separators


@pytest.mark.parametrize("budget", [4096, 200, 60, 25, 9])
def test_round_trip_and_budget(tokenizer_dir, budget):
    count = load_counter(tokenizer_dir)
    chunks, _ = plan_chunks(DOC, count, budget)
    _check_round_trip(DOC, chunks)
    assert all(c.tokens <= budget for c in chunks)
    assert [count([DOC[c.start : c.end]])[0] for c in chunks] == [c.tokens for c in chunks]
    if budget == 4096:
        assert len(chunks) == 1


def test_units_are_not_cut_when_they_fit(tokenizer_dir):
    count = load_counter(tokenizer_dir)
    table_tokens, code_tokens = count([TABLE, CODE])
    budget = max(table_tokens, code_tokens) + 5
    chunks, stats = plan_chunks(DOC, count, budget)
    texts = [DOC[c.start : c.end] for c in chunks]
    assert any(TABLE in t for t in texts) and any(CODE in t for t in texts)
    long_para = DOC.index("网络配置文件"), DOC.index("### 软件源")  # the only unit over this budget
    for c in chunks:  # elsewhere chunks start at block starts
        assert c.start == 0 or DOC[c.start - 1] == "\n" or long_para[0] < c.start < long_para[1]
    assert stats["hard_splits"] == 0


def test_oversized_paragraph_splits_at_sentences(tokenizer_dir):
    count = load_counter(tokenizer_dir)
    chunks, stats = plan_chunks(DOC, count, 60)
    assert stats["sentence_splits"] >= 1
    para = [DOC[c.start : c.end] for c in chunks if "网络配置文件" in DOC[c.start : c.end]]
    assert len(para) > 1
    assert all(t.rstrip().endswith(("。", "；", "NetworkManager。")) or t.endswith("；") for t in para[:-1])


def test_heading_path_prefix(tokenizer_dir):
    count = load_counter(tokenizer_dir)
    chunks, _ = plan_chunks(DOC, count, 60, heading_prefix=True)
    net = [c for c in chunks if "网络配置文件" in DOC[c.start : c.end]]
    assert net[1].path == ("Debian 手册", "配置", "网络")
    assert net[1].prefix == "Debian 手册 > 配置 > 网络\n\n"
    assert all(c.tokens <= 60 for c in chunks)
    assert all(count([c.prefix + DOC[c.start : c.end]])[0] == c.tokens for c in chunks)


def test_chunk_stage_records_and_cli(tmp_path, tokenizer_dir):
    docs = [document(DOC, "manual", "debian.md", "markdown", 0), document("短文。", "manual", "short.md", "markdown", 0)]
    inp = tmp_path / "docs.jsonl"
    with open(inp, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
        f.write('{"id": "bad"}\n')
    result = CliRunner().invoke(app, ["data", "chunk", str(inp), "-o", str(tmp_path / "out"), "--tokenizer",
                                      str(tokenizer_dir), "--max-tokens", "80", "--heading-prefix", "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    c = report["counts"]
    assert c["in"] == 3 and c["kept"] == 2 and sum(c["rejected"].values()) == 1
    rows = [json.loads(line) for line in open(tmp_path / "out" / "chunks.jsonl", encoding="utf-8")]
    parent = docs[0]["id"]
    mine = [r for r in rows if r["meta"]["parent_id"] == parent]
    assert len(mine) > 1 and [r["meta"]["chunk_index"] for r in mine] == list(range(len(mine)))
    assert mine[0]["id"] == stable_id(parent, 0) and len({r["id"] for r in rows}) == len(rows)
    assert all(r["meta"]["tokens"] <= 80 and r["source"] == "manual" for r in rows)
    bodies = [r["text"][r["meta"]["prefix_chars"] :] for r in mine]
    assert bodies == [DOC[r["meta"]["char_start"] : r["meta"]["char_end"]] for r in mine]
    assert "".join("".join(bodies).split()) == "".join(DOC.split())
    rejects = [json.loads(line) for line in open(tmp_path / "out" / "rejects.jsonl", encoding="utf-8")]
    assert rejects[0]["line"] == 3 and "text" in rejects[0]["reason"]
    again = chunk(inp, tmp_path / "again", tokenizer=tokenizer_dir, max_tokens=80, heading_prefix=True,
                  progress=False)
    assert again["chunks"] == report["chunks"]  # ids and splits are deterministic


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_counter(tmp_path)


@pytest.mark.slow
def test_chunk_real_debian_docs(tmp_path, debian_corpus):
    """Ingest + chunk the Debian FAQ: every document round-trips and every chunk fits the budget."""
    from danlu.data.ingest import ingest

    ingest([debian_corpus / "ops" / "debian-faq"], tmp_path / "ing", progress=False)
    docs = [json.loads(line) for line in open(tmp_path / "ing" / "documents.jsonl", encoding="utf-8")]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([d["text"] for d in docs], trainers.BpeTrainer(
        vocab_size=2000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    (tmp_path / "tok").mkdir()
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))
    report = chunk(tmp_path / "ing", tmp_path / "chunks", tokenizer=tmp_path / "tok", max_tokens=512,
                   progress=False)
    assert report["counts"]["kept"] == len(docs) and report["over_budget_chunks"] == 0
    rows = [json.loads(line) for line in open(tmp_path / "chunks" / "chunks.jsonl", encoding="utf-8")]
    assert report["chunks"] == len(rows) > len(docs)
    by_parent: dict[str, list[dict]] = {}
    for r in rows:
        by_parent.setdefault(r["meta"]["parent_id"], []).append(r)
    for d in docs:
        parts = by_parent[d["id"]]
        assert "".join("".join(p["text"] for p in parts).split()) == "".join(d["text"].split())


def test_tiktoken_rank_file(tmp_path):
    """A local .tiktoken rank file works as the tokenizer (here: bytes only, so tokens == UTF-8 bytes)."""
    import base64

    path = tmp_path / "bytes.tiktoken"  # tiktoken's format: base64(token) rank, one a line
    path.write_text("".join(f"{base64.b64encode(bytes([i])).decode()} {i}\n" for i in range(256)))
    count = load_counter(path)
    assert count(["abc 中文", ""]) == [len("abc 中文".encode("utf-8")), 0]
    chunks, _ = plan_chunks(DOC, count, 100)
    assert all(c.tokens <= 100 for c in chunks)
    _check_round_trip(DOC, chunks)


def test_counts_match_the_token_store_on_special_token_text(tmp_path):
    """Chunk counts are the ids `danlu data tokenize` stores: "<|eos|>" typed in a document is plain text."""
    from danlu.tokenizer.encode import load_encoder

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([DOC] * 3, trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|bos|>", "<|eos|>"],
        show_progress=False))
    (tmp_path / "tok").mkdir()
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))
    enc = load_encoder(tmp_path / "tok")
    text = DOC.replace("。", "。<|eos|> ").replace("## ", "## <|bos|>")
    assert load_counter(tmp_path / "tok")(["hello <|eos|> world <|bos|>"]) == [
        len(enc.encode_batch(["hello <|eos|> world <|bos|>"])[0])]
    inp = tmp_path / "docs.jsonl"
    inp.write_text(json.dumps(document(text, "manual", "eos.md", "markdown", 0), ensure_ascii=False) + "\n",
                   encoding="utf-8")
    chunk(inp, tmp_path / "out", tokenizer=tmp_path / "tok", max_tokens=60, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "out" / "chunks.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) > 1 and any("<|eos|>" in r["text"] for r in rows)
    assert [r["meta"]["tokens"] for r in rows] == [len(ids) for ids in enc.encode_batch([r["text"] for r in rows])]
    assert all(r["meta"]["tokens"] <= 60 for r in rows)


def test_long_unpunctuated_text_is_cut_in_linear_work(tokenizer_dir):
    """200 KB without any sentence break: hard cuts fill the budget, round trip, and the tokenizer sees O(text)
    characters in all (the old search re-encoded the whole remainder per cut: ~300x the text)."""
    import random

    rng = random.Random(0)
    text = "".join(rng.choice("网络配置文件位于修改后需要重启服务也可以使用abcdefg ") for _ in range(200_000))
    real = load_counter(tokenizer_dir)
    seen = [0]

    def count(texts):
        seen[0] += sum(map(len, texts))
        return real(texts)

    chunks, stats = plan_chunks(text, count, 512)
    _check_round_trip(text, chunks)
    assert stats["hard_splits"] == len(chunks) - 1 > 100
    assert all(c.tokens <= 512 for c in chunks)
    assert sum(c.tokens > 480 for c in chunks) >= len(chunks) - 1  # cuts are nearly full, not just small
    assert seen[0] < 40 * len(text), f"tokenizer saw {seen[0] / len(text):.0f}x the text"
    assert real([text[c.start : c.end] for c in chunks]) == [c.tokens for c in chunks]


def test_repack_of_chunks_over_budget(tokenizer_dir):
    """A counter whose chunk counts exceed the sum of their units' counts forces the re-pack path (units of an
    over-budget chunk are found by bisection): every chunk still fits and the text round-trips."""
    real = load_counter(tokenizer_dir)

    def count(texts):  # every newline costs 4 extra tokens: the gaps between units are under-estimated
        return [n + 4 * t.count("\n") for n, t in zip(real(texts), texts)]

    text = "\n\n".join(f"第{i}段。Debian 的软件包 {i}。" for i in range(3000))
    for budget in (200, 40):
        chunks, _ = plan_chunks(text, count, budget)
        _check_round_trip(text, chunks)
        assert all(c.tokens <= budget for c in chunks)
        assert count([text[c.start : c.end] for c in chunks]) == [c.tokens for c in chunks]
        assert max(c.tokens for c in chunks) > budget * 0.7
