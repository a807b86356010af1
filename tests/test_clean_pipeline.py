"""The clean stage end to end: config, accounting, rejects, SFT records, presets, CLI, real corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from danlu.cli import app
from danlu.config import ConfigError
from danlu.data.clean import CleanConfig, clean, load_clean_config
from danlu.records import document
from test_clean_sections import read_records, write_lines

PARA = "Debian 是一个自由的操作系统，由遍布全球的志愿者共同开发和维护。它提供了数万个软件包，覆盖服务器、桌面和嵌入式设备。"


def _doc(text: str, i: int) -> dict:
    return document(text, "test", f"doc{i}.md", "markdown", i)


@pytest.fixture()
def corpus(tmp_path) -> Path:
    docs = [
        _doc(PARA + "\n\n\n\n联系 admin@mirror-team.cn。", 0),
        _doc(PARA + "\n\n联系 admin@mirror-team.cn。", 1),  # exact duplicate of 0 after whitespace cleaning
        _doc("太短", 2),
        _doc(PARA.replace("数万个", "五万多个") + "\n\n联系 admin@mirror-team.cn。", 3),  # near duplicate of 0
        _doc("This English paragraph talks about Debian packages, mirrors and the release process in detail.", 4),
    ]
    lines = docs + ['{"id": "x", "text": 5}', "{not json", {"id": "y"}, {"id": "z", "text": "Ceci est un texte français sur le système d'exploitation Debian et ses paquets."}]
    return write_lines(tmp_path / "in.jsonl", lines)


CONFIG = """
format: document
steps:
  - op: unicode
  - op: whitespace
  - op: pii
    kinds: [email]
  - op: length
    min_chars: 20
  - op: langid
    languages: [chinese, english, french]
    keep: [chinese, english]
  - op: exact_dedup
  - op: near_dedup
    threshold: 0.5
    ngram: 3
"""


def test_clean_accounts_for_every_line(tmp_path, corpus):
    cfg_path = tmp_path / "clean.yaml"
    cfg_path.write_text(CONFIG, encoding="utf-8")
    report = clean(corpus, tmp_path / "out", config=cfg_path, progress=False)
    kept = read_records(tmp_path / "out" / "clean.jsonl")
    rejects = read_records(tmp_path / "out" / "rejects.jsonl")
    c = report["counts"]
    removed = sum(c["filtered"].values()) + sum(c["rejected"].values())
    assert c["in"] == 9 and c["kept"] == len(kept) == 2
    assert c["in"] == c["kept"] + removed == len(kept) + len(rejects)
    assert sum(c["rejected"].values()) == 3
    bad = sorted((r["line"], r["reason"]) for r in rejects if r["op"] == "read")
    assert [line for line, _ in bad] == [6, 7, 8]
    assert "must be str" in bad[0][1] and "invalid JSON" in bad[1][1] and "missing field 'text'" in bad[2][1]
    by_op = {r["op"] for r in rejects}
    assert by_op == {"read", "length", "langid", "exact_dedup", "near_dedup"}
    # in input order, as one record at a time would write them (the steps run over a whole batch one after
    # another: read errors first, then length's, then langid's), then dedup's
    assert [r["line"] for r in rejects[:5]] == [3, 6, 7, 8, 9]
    assert [r["op"] for r in rejects[5:]] == ["exact_dedup", "near_dedup"]
    # per operator: in = kept + removed, and each step's in is the previous step's kept
    ops = report["operators"]
    for prev, op in zip(ops, ops[1:]):
        assert op["in"] == op["kept"] + op["removed"]
        assert op["in"] == prev["kept"]
    assert ops[-1]["kept"] == report["counts"]["kept"]
    ws = next(o for o in ops if o["op"] == "whitespace")
    assert ws["records_changed"] == 1 and ws["chars_changed"] == 2
    assert all("<EMAIL>" in r["text"] for r in kept if "联系" in r["text"])
    dups = read_records(tmp_path / "out" / "duplicates.jsonl")
    assert len(dups) == 1 and dups[0]["kept"] == kept[0]["id"]
    assert {d["op"] for d in dups[0]["replaced"]} == {"exact_dedup", "near_dedup"}
    near = next(r for r in rejects if r["op"] == "near_dedup")
    assert near["duplicate_of"] == kept[0]["id"]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["status"] == "complete" and saved["counts"]["kept"] == 2


def test_sft_records_clean_each_message(tmp_path):
    recs = [
        {"id": "s1", "messages": [{"role": "user", "content": "什么是  Debian？\n\n\n\n请说明。"},
                                  {"role": "assistant", "content": "一个自由的操作系统，邮箱 a@b.org。"}],
         "task_type": "qa", "tags": [], "source": "t"},
        {"id": "s2", "messages": [{"role": "user", "content": "选 A 还是 B？"}, {"role": "assistant", "content": "B"}],
         "task_type": "mcq", "tags": [], "source": "t"},
        {"id": "s3", "messages": [{"role": "user", "content": 3}]},
    ]
    path = write_lines(tmp_path / "sft.jsonl", recs)
    report = clean(path, tmp_path / "out", progress=False)  # preset chosen from the first record: sft
    kept = read_records(tmp_path / "out" / "clean.jsonl")
    assert [r["id"] for r in kept] == ["s1"]
    assert kept[0]["messages"][0]["content"] == "什么是 Debian？\n\n请说明。"
    assert "<EMAIL>" in kept[0]["messages"][1]["content"]
    assert kept[0]["task_type"] == "qa" and kept[0]["tags"] == []
    reasons = {r.get("id"): r["reason"] for r in read_records(tmp_path / "out" / "rejects.jsonl")}
    assert "too short" in reasons["s2"]
    assert any("messages[0].content" in r for r in reasons.values())
    assert report["counts"]["in"] == 3 and report["counts"]["kept"] == 1


def test_presets_load_and_validate():
    for name in ("pretrain", "sft"):
        cfg = load_clean_config(preset=name)
        assert cfg.steps and cfg.steps[-1].op == "near_dedup"
    with pytest.raises(ConfigError):
        load_clean_config(preset="nope")


def test_config_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - op: whitespace\n    max_blank_line: 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="max_blank_line"):
        load_clean_config(bad)
    bad.write_text("steps:\n  - op: exact_dedup\n  - op: length\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="dedup steps must be last"):
        load_clean_config(bad)
    bad.write_text("steps:\n  - op: sparkle\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="sparkle"):
        load_clean_config(bad)


def test_clean_without_dedup_writes_directly(tmp_path):
    path = write_lines(tmp_path / "in.jsonl", [_doc("第一段。   \n\n\n\n第二段。", 0)])
    cfg = CleanConfig.model_validate({"steps": [{"op": "whitespace"}]})
    report = clean(path, tmp_path / "out", config=cfg, progress=False)
    assert read_records(tmp_path / "out" / "clean.jsonl")[0]["text"] == "第一段。\n\n第二段。"
    assert "duplicates" not in report["outputs"]


def test_cli_clean(tmp_path, corpus):
    cfg_path = tmp_path / "clean.yaml"
    cfg_path.write_text(CONFIG, encoding="utf-8")
    result = CliRunner().invoke(app, ["data", "clean", str(corpus), "-o", str(tmp_path / "o"), "--config",
                                      str(cfg_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "in=9 kept=2 filtered=4 rejected=3" in result.output
    assert "near_dedup" in result.output


def test_cli_dedup_only_deduplicates(tmp_path, corpus):
    result = CliRunner().invoke(app, ["data", "dedup", str(corpus), "-o", str(tmp_path / "o"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "in=9 kept=4 filtered=2 rejected=3" in result.output  # "太短" and French stay: nothing filters
    rejects = {r["op"]: r for r in read_records(tmp_path / "o" / "rejects.jsonl") if r.get("op")}
    kept = read_records(tmp_path / "o" / "clean.jsonl")
    assert rejects["exact_dedup"]["record"]["path"] == "doc1.md" and rejects["exact_dedup"]["duplicate_of"] == kept[0]["id"]
    assert rejects["near_dedup"]["record"]["path"] == "doc3.md" and rejects["near_dedup"]["duplicate_of"] == kept[0]["id"]
    assert kept[0]["text"] == PARA + "\n\n\n\n联系 admin@mirror-team.cn。"  # untouched: no normalising
    result = CliRunner().invoke(app, ["data", "dedup", str(corpus), "-o", str(tmp_path / "o2"), "--no-near",
                                      "--no-progress"])
    assert "kept=5 filtered=1 rejected=3" in result.output
    result = CliRunner().invoke(app, ["data", "dedup", str(corpus), "-o", str(tmp_path / "o3"), "--no-near", "--no-exact"])
    assert result.exit_code != 0 and "nothing to do" in str(result.exception)


@pytest.mark.slow
def test_clean_debian_finds_manpage_duplicates(tmp_path, debian_corpus):
    from danlu.data.ingest import ingest

    ingest([debian_corpus / "ops" / "manpages-zh"], tmp_path / "ing", progress=False)
    report = clean(tmp_path / "ing", tmp_path / "clean", preset="pretrain", progress=False)
    ops = {o["op"]: o for o in report["operators"]}
    assert ops["exact_dedup"]["removed"] >= 10  # identical pages installed under several names/sections
    assert ops["near_dedup"]["removed"] >= 3  # e.g. sha1sum/sha256sum/... pages are near copies of md5sum
    rejects = read_records(tmp_path / "clean" / "rejects.jsonl")
    near = [r for r in rejects if r["op"] == "near_dedup"]
    assert any("sum." in r["record"]["path"] for r in near)
    c = report["counts"]
    assert c["in"] == c["kept"] + sum(c["filtered"].values()) + sum(c["rejected"].values())
