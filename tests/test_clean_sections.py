"""Section-level filtering: a local defect in a long document costs that section, the rest stays byte for byte,
and the removed spans are in the rejects; short documents are judged whole, as before."""

from __future__ import annotations

import json
from pathlib import Path

from danlu.data.clean import CleanConfig, clean
from danlu.data.clean.sections import SectionOptions, section_spans
from danlu.records import document


def _para(i: int) -> str:
    return (f"第 {i} 节介绍 Debian 系统管理的一个方面：软件包 {i} 的安装、配置和升级，"
            f"以及在服务器上排查第 {i} 类常见故障的办法。管理员应当先阅读日志，再修改配置文件。")


def clean_book(sections: int = 48, bad_at: tuple[int, ...] = (7, 23)) -> tuple[str, list[str]]:
    """A long Markdown book; the sections in `bad_at` are a log flood (one line repeated)."""
    parts, bad = [], []
    for i in range(sections):
        if i in bad_at:
            body = "\n".join(["[错误] 数据库连接失败，正在重试……"] * 60)
            bad.append(f"## 第 {i} 节 日志\n\n{body}\n\n")
            parts.append(bad[-1])
        else:
            parts.append(f"## 第 {i} 节\n\n" + "\n\n".join(_para(i * 10 + k) for k in range(5)) + "\n\n")
    return "".join(parts), bad


def write_lines(path: Path, lines: list) -> Path:
    """A JSONL file of these lines: records (dicts) as JSON, strings as they are (bad lines)."""
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + "\n")
    return path


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


REPETITION_ONLY = CleanConfig.model_validate({"steps": [{"op": "repetition"}]})


def test_sections_tile_the_text_and_follow_headings():
    text, _ = clean_book()
    opts = SectionOptions()
    spans = section_spans(text, opts)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous: removing some keeps the rest exact
    assert "".join(text[s:e] for s, e in spans) == text
    heads = [text[s:e].split("\n", 1)[0] for s, e in spans]
    assert all(h.startswith("## 第 ") for h in heads)  # every section starts at a heading here
    assert all(e - s <= opts.max_chars for s, e in spans)


def test_short_sections_merge_and_long_blocks_split():
    opts = SectionOptions(min_chars=400, target_chars=3000, max_chars=8000)
    text = "## NAME\n\nls - list\n\n## SYNOPSIS\n\nls [OPTION]\n\n## DESCRIPTION\n\n" + "x" * 60 + ("\n" + "y" * 70) * 300
    spans = section_spans(text, opts)
    assert text[spans[0][0]:spans[0][1]].startswith("## NAME") and "## SYNOPSIS" in text[spans[0][0]:spans[0][1]]
    assert all(e - s <= opts.max_chars for s, e in spans) and len(spans) >= 3
    assert "".join(text[s:e] for s, e in spans) == text
    plain = "Chapter 1  Intro\n\n" + "A sentence of plain text here. " * 40 + "\n\n2.1 Mounting\n\n" + "More text. " * 60
    cuts = [plain[s:e].split("\n", 1)[0] for s, e in section_spans(plain, opts)]
    assert cuts == ["Chapter 1  Intro", "2.1 Mounting"]  # plain-text headings cut too


def test_section_removal_keeps_the_rest_byte_identical(tmp_path):
    text, bad = clean_book()
    assert len(text) >= SectionOptions().long_doc_chars
    rec = document(text, "test", "book.md", "markdown", 0)
    report = clean(write_lines(tmp_path / "in.jsonl", [rec]), tmp_path / "out", config=REPETITION_ONLY, progress=False)
    kept = read_records(tmp_path / "out" / "clean.jsonl")
    assert len(kept) == 1 and kept[0]["id"] == rec["id"]
    expected = text
    for b in bad:
        expected = expected.replace(b, "", 1)
    assert kept[0]["text"] == expected  # exactly the two failing sections are gone
    rejects = read_records(tmp_path / "out" / "rejects.jsonl")
    assert [r["op"] for r in rejects] == ["repetition", "repetition"]
    for r, b in zip(rejects, bad):
        s, e = r["span"]
        assert text[s:e] == r["text"] == b and r["chars"] == len(b)
        assert r["id"] == rec["id"] and r["record_path"] == "book.md" and "duplicate lines" in r["reason"]
    op = next(o for o in report["operators"] if o["op"] == "repetition")
    assert op["removed"] == 0 and op["trimmed"] == 1 and op["sections_removed"] == 2
    assert op["chars_removed"] == sum(map(len, bad)) == report["chars"]["filtered"]["repetition"]
    assert report["counts"]["kept"] == 1 and report["chars"]["kept"] == len(expected)


def test_short_documents_are_judged_whole(tmp_path):
    text, bad = clean_book(sections=3, bad_at=(1,))
    assert len(text) < SectionOptions().long_doc_chars
    rec = document(text, "test", "page.md", "markdown", 0)
    report = clean(write_lines(tmp_path / "in.jsonl", [rec]), tmp_path / "out", config=REPETITION_ONLY, progress=False)
    assert report["counts"]["kept"] == 0 and report["counts"]["filtered"] == {"repetition": 1}
    (r,) = read_records(tmp_path / "out" / "rejects.jsonl")
    assert "span" not in r and r["record"]["text"] == text


def test_document_granularity_filters_judge_the_whole_text(tmp_path):
    text, _ = clean_book(bad_at=())
    cfg = CleanConfig.model_validate({"steps": [{"op": "length", "max_chars": 1000}]})
    report = clean(write_lines(tmp_path / "in.jsonl", [document(text, "t", "b.md", "markdown", 0)]), tmp_path / "o",
                   config=cfg, progress=False)
    assert report["counts"]["filtered"] == {"length": 1}  # a section-by-section length check would pass


def test_every_section_failing_drops_the_record_and_warns_when_big(tmp_path):
    flood = "\n".join(["ERROR: connection to database failed, retrying..."] * 60)
    text = "".join(f"## part {i}\n\n{flood}\n\n" for i in range(45))
    assert len(text) > 100_000
    rec = document(text, "t", "flood.md", "markdown", 0)
    report = clean(write_lines(tmp_path / "in.jsonl", [rec]), tmp_path / "out", config=REPETITION_ONLY, progress=False)
    assert report["counts"]["kept"] == 0
    (r,) = read_records(tmp_path / "out" / "rejects.jsonl")
    assert r["reason"].startswith(f"all {len(section_spans(text, SectionOptions()))} sections: duplicate lines")
    warnings = "\n".join(report["warnings"])
    assert "repetition dropped 1 record(s) of 100,000+ characters whole: flood.md" in warnings
    assert "repetition removed 100.00% of the characters" in warnings
