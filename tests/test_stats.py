"""Corpus statistics on a small known corpus; SFT statistics; HTML report; CLI."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from typer.testing import CliRunner

from danlu.cli import app
from danlu.data.stats import estimate_tokens, stats
from danlu.records import document


def _write(path: Path, rows: list) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


def _char_tokenizer(folder: Path) -> Path:
    """A word-level tokenizer splitting on whitespace: token counts are word counts, easy to check by hand."""
    tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_document_stats_known_corpus(tmp_path):
    rows = [
        document("one two three", "a", "1.md", "md", 0),
        document("four five", "a", "2.md", "md", 0),
        document("one two three", "b", "3.md", "md", 0),  # exact duplicate of the first
        document("x " * 10, "b", "4.md", "md", 0),
        '{"id": "bad", "text": null}',
    ]
    tok = _char_tokenizer(tmp_path / "tok")
    report = stats(_write(tmp_path / "docs.jsonl", rows), tmp_path / "r", tokenizer=tok)
    c = report["counts"]
    assert c["kept"] == 4 and c["in"] == 5 and sum(c["rejected"].values()) == 1
    assert report["bad"][0]["line"] == 5
    assert report["per_source"] == {"a": {"docs": 2, "chars": 22, "tokens": 5},
                                    "b": {"docs": 2, "chars": 33, "tokens": 13}}
    assert report["tokens"] == 18 and report["tokens_estimated"] is False
    assert report["char_lengths"]["max"] == 20 and report["char_lengths"]["min"] == 9
    assert sum(report["char_lengths"]["histogram"]["counts"]) == 4
    assert report["duplicates"]["exact_duplicates"] == 1 and report["duplicates"]["exact_rate"] == 0.25
    assert report["duplicates"]["near_duplicates"] >= 1
    assert any("10M" in a for a in report["advice"])
    page = (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") >= 2 and "Per source" in page


def test_sft_stats_flag_short_answers(tmp_path):
    def sft(i, q, a, task):
        return {"id": f"s{i}", "messages": [{"role": "system", "content": "你是助手"}, {"role": "user", "content": q},
                                              {"role": "assistant", "content": a}],
                "task_type": task, "tags": [], "source": "sft"}

    rows = [sft(0, "问题一", "这是一个完整的回答。", "qa"), sft(1, "选哪个", "B", "mcq"),
            sft(2, "再选", "C", "mcq"), sft(3, "总结一下", "总结内容在这里", "summary")]
    report = stats(_write(tmp_path / "sft.jsonl", rows), tmp_path / "sft", short_answer_chars=1)
    s = report["sft"]
    assert s["records"] == 4 and s["task_types"] == {"mcq": 2, "qa": 1, "summary": 1}
    assert s["short_answers"]["count"] == 2 and s["short_answers"]["ids"] == ["s1", "s2"]
    assert s["answer_chars"]["min"] == 1 and s["answer_chars"]["max"] == 10
    assert s["prompt_chars"]["max"] == len("你是助手\n\n总结一下")
    assert any("short answers" in a for a in report["advice"])
    assert report["tokens_estimated"] is True
    assert "SFT" in (tmp_path / "sft" / "report.html").read_text(encoding="utf-8")


def test_estimate_tokens():
    assert estimate_tokens("中文字") == 3
    assert estimate_tokens("abcdefgh") == 2


def test_cli_stats(tmp_path):
    path = _write(tmp_path / "d.jsonl", [document("Debian 文档 " * 20, "ops", "a.md", "md", 0)])
    out = tmp_path / "s"
    result = CliRunner().invoke(app, ["data", "stats", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "kept=1" in result.output and "advice:" in result.output
    assert json.loads((out / "report.json").read_text())["per_source"]["ops"]["docs"] == 1
    assert (out / "report.html").exists()


def test_sft_token_counts_tokenize_each_message_once(tmp_path, monkeypatch):
    """With a tokenizer, prompt and answer are counted in one batch and the record's tokens are their sum (the
    joined text is not tokenized again); exact duplicates are dedup's exact clusters."""
    import danlu.data.chunk as chunk_mod

    real_load = chunk_mod.load_counter
    calls: list[list[str]] = []

    def spy_load(tokenizer):
        real = real_load(tokenizer)
        return lambda texts: calls.append(list(texts)) or real(texts)

    monkeypatch.setattr(chunk_mod, "load_counter", spy_load)

    def sft(i, q, a, source="sft"):
        return {"id": f"s{i}", "messages": [{"role": "system", "content": "you help"}, {"role": "user", "content": q},
                                              {"role": "assistant", "content": a}],
                "task_type": "qa", "tags": [], "source": source}

    rows = [sft(0, "what is apt", "a package tool"), sft(1, "what is dpkg", "the low level tool below apt"),
            sft(2, "what is apt", "a package tool"),  # exact duplicate of s0
            sft(3, "hi", "B", "other")]
    report = stats(_write(tmp_path / "sft.jsonl", rows), tmp_path / "out", tokenizer=_char_tokenizer(tmp_path / "tok"))
    assert len(calls) == 1  # one batch for all records
    assert calls[0] == [t for r in rows for t in ("\n\n".join(m["content"] for m in r["messages"][:2]),
                                                  r["messages"][2]["content"])]
    s = report["sft"]
    assert s["prompt_tokens"]["total"] == 5 + 5 + 5 + 3 and s["answer_tokens"]["total"] == 3 + 6 + 3 + 1
    assert report["tokens"] == 18 + 13 and report["per_source"]["other"]["tokens"] == 4
    assert report["token_lengths"]["max"] == 11 and report["token_lengths"]["min"] == 4
    assert report["duplicates"]["exact_duplicates"] == 1 and report["duplicates"]["exact_rate"] == 0.25
