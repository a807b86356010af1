"""Character (and token) accounting of the data stages: in = kept + removed in the report and per operator,
with records trimmed by section-level filters; warnings; dry runs and review.html; excerpts in rejects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from danlu.cli import app
from danlu.data.clean import CleanConfig, clean
from danlu.data.clean.normalize import Whitespace
from danlu.data.clean.pii import PII
from danlu.records import document

from test_clean_sections import clean_book, read_records, write_lines

PROSE = "Debian 是一个自由的操作系统，由遍布全球的志愿者共同开发和维护。它提供了数万个软件包，覆盖服务器、桌面和嵌入式设备。"

CONFIG = {
    "steps": [
        {"op": "whitespace"},
        {"op": "pii", "kinds": ["email"]},
        {"op": "length", "min_chars": 20},
        {"op": "repetition"},
        {"op": "langid", "languages": ["chinese", "english", "french"], "keep": ["chinese", "english"]},
        {"op": "exact_dedup"},
    ]
}


@pytest.fixture()
def corpus(tmp_path) -> Path:
    book, _ = clean_book()
    docs = [
        document(book, "t", "book.md", "markdown", 0),
        document(PROSE + "\n\n\n\n联系 admin@mirror-team.cn。", "t", "a.md", "markdown", 1),
        document(PROSE + "\n\n联系 admin@mirror-team.cn。", "t", "b.md", "markdown", 2),  # a duplicate of a.md
        document("太短", "t", "c.md", "markdown", 3),
        document("Ceci est un texte français sur le système Debian et ses paquets logiciels.", "t", "d.md", "markdown", 4),
    ]
    return write_lines(tmp_path / "in.jsonl", docs + ['{"id": "x", "text": 5}', "{not json"])


def _check_operators(report: dict) -> None:
    ops = report["operators"]
    assert ops[0]["op"] == "read" and ops[0]["chars_in"] == report["chars"]["in"]
    for prev, op in zip(ops, ops[1:]):
        assert op["chars_in"] == op["chars_kept"] + op["chars_removed"]
        assert op["chars_in"] == prev["chars_kept"]  # what one operator keeps is what the next one sees
        assert op["in"] == prev["kept"]
    assert ops[-1]["chars_kept"] == report["chars"]["kept"]
    c = report["chars"]
    assert c["in"] == c["kept"] + sum(c["filtered"].values()) + sum(c["rejected"].values())
    assert {o["op"]: o["chars_removed"] for o in ops[1:] if o["chars_removed"]} == c["filtered"]


def test_chars_add_up_with_sections_cut(tmp_path, corpus):
    report = clean(corpus, tmp_path / "out", config=CleanConfig.model_validate(CONFIG), progress=False)
    _check_operators(report)
    ops = {o["op"]: o for o in report["operators"]}
    assert ops["repetition"]["sections_removed"] == 2 and ops["repetition"]["trimmed"] == 1
    assert ops["read"]["chars_removed"] == report["chars"]["rejected"]["read"] > 0
    assert ops["exact_dedup"]["removed"] == 1 and ops["length"]["removed"] == 1 and ops["langid"]["removed"] == 1
    rejects = read_records(tmp_path / "out" / "rejects.jsonl")
    assert sum(r["chars"] for r in rejects if "span" in r) == ops["repetition"]["chars_removed"]
    kept = read_records(tmp_path / "out" / "clean.jsonl")
    assert report["chars_out"] == sum(len(r["text"]) for r in kept)
    # chars kept are characters of the input as read: they differ from chars_out by what transforms changed
    ws, pii = (Whitespace(), PII(kinds=["email"]))
    originals = {r["id"]: r["text"] for r in map(json.loads, open(corpus, encoding="utf-8").readlines()[:5])}
    shrunk = sum(len(originals[r["id"]]) - len(pii.apply(ws.apply(originals[r["id"]]))) for r in kept)
    assert report["chars"]["kept"] - report["chars_out"] == shrunk > len("admin@mirror-team.cn") - len("<EMAIL>")
    assert report["removed"]["repetition"].endswith("0rec+2sect")


def test_chars_kept_equal_the_output_without_transforms(tmp_path, corpus):
    cfg = CleanConfig.model_validate({"steps": CONFIG["steps"][2:]})
    report = clean(corpus, tmp_path / "out", config=cfg, progress=False)
    _check_operators(report)
    kept = read_records(tmp_path / "out" / "clean.jsonl")
    assert report["chars"]["kept"] == report["chars_out"] == sum(len(r["text"]) for r in kept)


def test_tokens_add_up_with_a_tokenizer(tmp_path, corpus):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    texts = [json.loads(line)["text"] for line in open(corpus, encoding="utf-8") if line.startswith('{"id": "')
             and '"text": "' in line]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"], show_progress=False))
    (tmp_path / "tok").mkdir()
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))
    report = clean(corpus, tmp_path / "out", config=CleanConfig.model_validate(CONFIG), tokenizer=str(tmp_path / "tok"),
                   progress=False)
    t = report["tokens"]
    assert t["in"] == sum(len(tok.encode(x).ids) for x in texts)
    assert t["in"] == t["kept"] + sum(t["filtered"].values()) and report["tokens_kept"] == t["kept"]
    ops = {o["op"]: o for o in report["operators"]}
    assert ops["repetition"]["tokens_removed"] > 0 and ops["exact_dedup"]["tokens_removed"] > 0
    assert {k: ops[k]["tokens_removed"] for k in t["filtered"]} == t["filtered"]


def test_dry_run_writes_the_review_not_the_output(tmp_path, corpus):
    out = tmp_path / "out"
    real = clean(corpus, out, config=CleanConfig.model_validate(CONFIG), progress=False)
    assert (out / "clean.jsonl").exists()
    dry = clean(corpus, out, config=CleanConfig.model_validate(CONFIG), dry_run=True, progress=False)
    assert not (out / "clean.jsonl").exists() and not (out / "duplicates.jsonl").exists()  # no stale output
    assert dry["dry_run"] and dry["counts"] == real["counts"] and dry["chars"] == real["chars"]
    assert "records" not in dry["outputs"] and dry["warnings"][0].startswith("dry run: nothing written")
    assert len(read_records(out / "rejects.jsonl")) == len(read_records(tmp_path / "out" / "rejects.jsonl"))
    page = (out / "review.html").read_text(encoding="utf-8")
    assert "Dry run" in page and "<h2 id='repetition'>repetition</h2>" in page
    assert "[错误] 数据库连接失败" in page and "section " in page  # an example of a removed section, with its span
    assert "<h2 id='exact_dedup'>" in page and "duplicate of" in page


def test_rejects_keep_an_excerpt_when_asked(tmp_path, corpus):
    clean(corpus, tmp_path / "out", config=CleanConfig.model_validate(CONFIG), keep_rejected_text=False,
          progress=False)
    rejects = read_records(tmp_path / "out" / "rejects.jsonl")
    spans = [r for r in rejects if "span" in r]
    assert spans and all(len(r["text"]) <= 200 and r["text_truncated"] for r in spans)
    whole = [r for r in rejects if r.get("op") == "langid"]
    assert whole[0]["text_chars"] == len(whole[0]["record"]["text"]) and not whole[0]["text_truncated"]


def test_share_warnings_and_dedup_exemption(tmp_path):
    docs = [document(PROSE + f" 第{i}版。", "t", f"{i}.md", "markdown", i) for i in range(3)]
    docs += [document(PROSE + " 第0版。", "t", "dup.md", "markdown", 9)]
    path = write_lines(tmp_path / "in.jsonl", docs)
    cfg = {"steps": [{"op": "length", "min_chars": 56}, {"op": "exact_dedup"}]}
    report = clean(path, tmp_path / "a", config=CleanConfig.model_validate(cfg), progress=False)
    assert report["counts"]["filtered"] == {"exact_dedup": 1}
    assert report["warnings"] == []  # a duplicate lives on in its kept copy
    report = clean(path, tmp_path / "b", config=CleanConfig.model_validate({**cfg, "warn": {"dedup": True}}),
                   progress=False)
    assert report["warnings"] and report["warnings"][0].startswith("exact_dedup removed 25.00% of the characters")


def test_cli_prints_operators_and_warnings(tmp_path, corpus):
    cfg = tmp_path / "clean.yaml"
    cfg.write_text(json.dumps(CONFIG), encoding="utf-8")
    result = CliRunner().invoke(app, ["data", "clean", str(corpus), "-o", str(tmp_path / "o"), "--config", str(cfg),
                                      "--dry-run", "--no-keep-rejected-text", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "chars     in=" in result.output and "filters_chars_share=" in result.output
    assert "repetition=" in result.output and "ch/" in result.output and "+2sect" in result.output
    assert "warning: dry run" in result.output
    assert "text_truncated" in (tmp_path / "o" / "rejects.jsonl").read_text(encoding="utf-8")


def test_chunk_and_stats_account_in_characters(tmp_path, corpus):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from danlu.data.chunk import chunk
    from danlu.data.stats import stats

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([PROSE], trainers.BpeTrainer(vocab_size=200, special_tokens=["[UNK]"], show_progress=False))
    (tmp_path / "tok").mkdir()
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))
    lines = [json.loads(x) if x.startswith("{\"id\": \"") else x for x in open(corpus, encoding="utf-8").read().splitlines()]
    path = write_lines(tmp_path / "docs.jsonl", lines + [document("   \n\n ", "t", "blank.md", "markdown", 7)])
    for report in (chunk(path, tmp_path / "chunk", tokenizer=tmp_path / "tok", max_tokens=64, progress=False),
                   stats(path, tmp_path / "stats", near_dup=False, html=False)):
        c = report["chars"]
        assert c["in"] == c["kept"] + sum(c["filtered"].values()) + sum(c["rejected"].values())
        assert sum(c["rejected"].values()) == len('{"id": "x", "text": 5}') + len("{not json")
    assert report["chars"]["kept"] == report["characters"]


def test_a_step_used_twice_is_accounted_apart(tmp_path, corpus):
    cfg = CleanConfig.model_validate({"steps": [{"op": "length", "min_chars": 1}, {"op": "length", "min_chars": 5}]})
    report = clean(corpus, tmp_path / "out", config=cfg, progress=False)
    assert [o["op"] for o in report["operators"]] == ["read", "length", "length#2"]
    assert report["counts"]["filtered"] == {"length#2": 1}  # "太短": 2 characters
    assert [r["op"] for r in read_records(tmp_path / "out" / "rejects.jsonl") if r.get("op") != "read"] == ["length#2"]
