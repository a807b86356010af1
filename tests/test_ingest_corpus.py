"""Real-corpus checks on the Debian Chinese documentation (slow: needs the corpus, see conftest.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from danlu.data.ingest import ingest
from danlu.data.ingest.similarity import cjk_similarity
from report_helpers import file_counts

pytestmark = pytest.mark.slow


def _records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "documents.jsonl").read_text(encoding="utf-8").splitlines()]


def test_debian_reference_html_and_pdf_match_the_txt_version(debian_corpus: Path, tmp_path: Path) -> None:
    report = ingest([debian_corpus / "ops" / "debian-reference"], tmp_path / "out", workers=2, progress=False)
    assert file_counts(report)["failed"] == 0, report["failed"]
    recs = _records(tmp_path / "out")
    by_format: dict[str, list[dict]] = {}
    for r in recs:
        by_format.setdefault(r["format"], []).append(r)
    txt = "\n".join(r["text"] for r in by_format["txt"])
    html = "\n".join(r["text"] for r in by_format["html"])
    pdf = "\n".join(r["text"] for r in by_format["pdf"])
    assert cjk_similarity(txt, html)["bigram"] >= 0.95
    assert cjk_similarity(txt, pdf)["bigram"] >= 0.90
    # Markdown structure from the HTML, without the DocBook navigation.
    assert re.search(r"^# 第 1 章", html, re.M) and re.search(r"^### 1\.1\.1\. ", html, re.M)
    assert "| --- |" in html and "\n```\n" in html
    assert "上一页" not in html and "下一页" not in html
    # PDF: running headers ("Debian 参考手册 13 / 223") and page numbers gone, paragraphs rejoined.
    assert not re.search(r"Debian 参考手册\s*(\d+\s*/\s*\d+|[ivx]+)\s*$", pdf, re.M)
    assert "命名管道是一个像管道一样的文件。你把内容放进了文件，它从另一端出来。因此，它被称为 FIFO" in pdf


def test_whole_debian_corpus_imports_without_failures(debian_corpus: Path, tmp_path: Path) -> None:
    report = ingest([debian_corpus], tmp_path / "out", workers=2, progress=False)
    files = file_counts(report)
    assert files["failed"] == 0, report["failed"]
    assert files["in"] == files["written"] + files["skipped"] + files["failed"]
    assert all("alias" in s["reason"] or "not a document" in s["reason"] for s in report["skipped"])
    assert report["by_format"]["man"]["written"] > 500 and report["by_format"]["html"]["written"] > 100
    recs = _records(tmp_path / "out")
    assert len(recs) == report["records"] and len({r["id"] for r in recs}) == len(recs)
    ls = next(r for r in recs if r["path"] == "ops/manpages-zh/ls.1")
    assert ls["text"].startswith("# LS(1)") and "## 名称" in ls["text"] and "**-a**, **--all**" in ls["text"]
