"""danlu data ingest: every format from fixtures made here, failure accounting, stable ids, the CLI."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from danlu.data.ingest import ingest
from danlu.data.ingest.encoding import decode
from danlu.data.ingest.errors import IngestFailure
from danlu.data.ingest.furniture import Line, join_paragraphs, remove_furniture
from danlu.data.ingest.roff import roff_to_markdown
from report_helpers import file_counts

ZH = "Debian 参考手册旨在作为一份 Debian 系统安装后的用户指南，为系统的使用与管理提供广泛的概览。"
ZH_TRAD = "這本書是自由的；你可以在與自由軟體指導方針相容的任意版本的通用公共許可證的條款下重新分發和修改本書。"


def run(tmp_path: Path, files: dict[str, bytes], **kw) -> tuple[dict, dict[str, list[dict]]]:
    """Write `files` under tmp/corpus, ingest it (one worker, no bar) and return (report, records by path)."""
    root = tmp_path / "corpus"
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    kw.setdefault("workers", 1)
    report = ingest([root], tmp_path / "out", progress=False, **kw)
    by_path: dict[str, list[dict]] = {}
    for line in (tmp_path / "out" / "documents.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        by_path.setdefault(rec["path"], []).append(rec)
    return report, by_path


def failure(report: dict, path: str) -> str:
    return next(f["reason"] for f in report["failed"] if f["path"] == path)


# --- encodings -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "data, text, encoding",
    [
        (ZH.encode("gbk"), ZH, "gb18030"),
        (ZH.encode("gb18030"), ZH, "gb18030"),
        (ZH_TRAD.encode("big5"), ZH_TRAD, "big5"),
        (ZH.encode("utf-16"), ZH, "utf-16"),  # with a BOM
        (ZH.encode("utf-16-le"), ZH, "utf-16-le"),  # without one
        (ZH.encode("utf-8-sig"), ZH, "utf-8-sig"),
        (b"plain ASCII is valid UTF-8", "plain ASCII is valid UTF-8", "utf-8"),
    ],
)
def test_decode_detects_encoding(data: bytes, text: str, encoding: str) -> None:
    got, enc = decode(data)
    assert got == text
    assert enc == encoding


def test_decode_rejects_binary_and_empty() -> None:
    rng = random.Random(0)
    with pytest.raises(IngestFailure, match="binary"):
        decode(bytes(rng.randrange(256) for _ in range(4000)))
    with pytest.raises(IngestFailure, match="empty"):
        decode(b"")


def test_text_files_in_many_encodings(tmp_path: Path) -> None:
    report, recs = run(tmp_path, {
        "gbk.txt": ZH.encode("gbk"), "utf16.txt": ZH.encode("utf-16"), "big5.txt": ZH_TRAD.encode("big5"),
        "ascii.md": b"# Title\n\nplain ascii\n",
    })
    assert file_counts(report) == {"in": 4, "written": 4, "skipped": 0, "failed": 0}
    assert recs["gbk.txt"][0]["text"] == ZH and recs["gbk.txt"][0]["meta"]["encoding"] == "gb18030"
    assert recs["utf16.txt"][0]["text"] == ZH
    assert recs["big5.txt"][0]["text"] == ZH_TRAD
    assert recs["ascii.md"][0]["format"] == "md" and recs["ascii.md"][0]["text"].startswith("# Title")


# --- HTML ----------------------------------------------------------------------------------------------------

HTML = """<!DOCTYPE html><html><head><meta charset="gb2312"><title>安装指南</title>
<style>body { color: red }</style><script>var tracking = "SECRET_SCRIPT";</script></head>
<body><nav><a href="/">首页</a> | <a href="/docs">文档导航</a></nav>
<div class="navheader">上一页 下一页</div>
<h1>安装指南</h1><p>第一段：介绍系统的
安装步骤。</p>
<h2>软件包</h2><ul><li>第一项</li><li>第二项</li></ul>
<table><thead><tr><th>软件包</th><th>大小</th></tr></thead><tbody><tr><td>vim</td><td>3570</td></tr></tbody></table>
<pre class="language-bash">apt-get install vim
echo done</pre>
<footer>版权所有 FOOTER_TEXT</footer></body></html>"""


def test_html_to_markdown(tmp_path: Path) -> None:
    report, recs = run(tmp_path, {"guide.html": HTML.encode("gb18030")})
    rec = recs["guide.html"][0]
    md = rec["text"]
    assert rec["format"] == "html" and rec["meta"]["title"] == "安装指南"
    assert md.startswith("# 安装指南")
    assert "## 软件包" in md
    assert "第一段：介绍系统的安装步骤。" in md  # source line break inside CJK text joined without a space
    assert "- 第一项\n- 第二项" in md
    assert "| 软件包 | 大小 |" in md and "| vim | 3570 |" in md and "| --- | --- |" in md
    assert "```bash\napt-get install vim\necho done\n```" in md
    for chrome in ("SECRET_SCRIPT", "color: red", "文档导航", "上一页", "FOOTER_TEXT"):
        assert chrome not in md


# --- DOCX ----------------------------------------------------------------------------------------------------

def _docx_bytes(tmp_path: Path) -> bytes:
    import docx

    d = docx.Document()
    d.add_heading("运维手册", level=1)
    d.add_paragraph("本手册介绍服务器的日常维护。")
    d.add_heading("常用命令", level=2)
    table = d.add_table(rows=2, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "命令", "作用"
    table.rows[1].cells[0].text, table.rows[1].cells[1].text = "df", "查看磁盘"
    d.add_paragraph("列表项一", style="List Bullet")
    p = tmp_path / "made.docx"
    d.save(p)
    return p.read_bytes()


def test_docx_with_table(tmp_path: Path) -> None:
    import io
    import zipfile

    data = _docx_bytes(tmp_path)
    not_word = io.BytesIO()
    with zipfile.ZipFile(not_word, "w") as z:
        z.writestr("hello.txt", "a zip, but not a Word document")
    report, recs = run(tmp_path, {"manual.docx": data, "broken.docx": data[: len(data) // 2],
                                  "notword.docx": not_word.getvalue()})
    md = recs["manual.docx"][0]["text"]
    assert "# 运维手册" in md and "## 常用命令" in md
    assert "本手册介绍服务器的日常维护。" in md
    assert "| 命令 | 作用 |" in md and "| df | 查看磁盘 |" in md
    assert "- 列表项一" in md
    assert "not a zip archive" in failure(report, "broken.docx")
    assert "missing word/document.xml" in failure(report, "notword.docx")


# --- man pages -------------------------------------------------------------------------------------------------

MAN = r""".\" a comment that must not appear
.TH LS 1 "2022年9月" "GNU coreutils" "用户命令"
.SH 名称
ls \- 列出目录内容
.SH 描述
列出指定文件的信息，
默认为当前目录。
.PP
使用 \fB\-l\fP 选项显示 \fIlong\fR 格式。
.B ls
.I file
.TP
\fB\-a\fR, \fB\-\-all\fR
不要忽略以点号起始的条目
.TP
.B \-l
使用长格式
.PP
参见
.BR dir (1)
和
.IR vdir (1).
.SS 示例
.nf
$ ls \-la /tmp
total 0
.fi
"""


def test_roff_man_page() -> None:
    md = roff_to_markdown(MAN)
    assert md.startswith("# LS(1)")
    assert "## 名称" in md and "ls - 列出目录内容" in md
    assert "列出指定文件的信息，默认为当前目录。" in md  # CJK lines join without a space
    assert "使用 **-l** 选项显示 *long* 格式。" in md
    assert "**ls** *file*" in md
    assert "- **-a**, **--all**\n\n  不要忽略以点号起始的条目" in md
    assert "- **-l**\n\n  使用长格式" in md  # a tag given as a font macro line
    assert "\n\n参见**dir**(1)和*vdir*(1)." in md  # .PP ends the item's indentation; .BR/.IR alternate fonts
    assert "### 示例" in md and "```\n$ ls -la /tmp\ntotal 0\n```" in md
    assert "comment" not in md and ".TH" not in md


def test_man_pages_by_section_suffix_alias_and_gzip(tmp_path: Path) -> None:
    import gzip

    report, recs = run(tmp_path, {"ls.1": MAN.encode(), "for.3tcl": MAN.encode(), "dir.1": b".so man1/ls.1\n",
                                  "cp.1.gz": gzip.compress(MAN.encode()), "bad.1.gz": b"\x1f\x8b broken"})
    assert recs["ls.1"][0]["format"] == "man" and recs["for.3tcl"][0]["format"] == "man"
    assert recs["cp.1.gz"][0]["text"] == recs["ls.1"][0]["text"]
    assert "corrupt gzip" in failure(report, "bad.1.gz")
    assert recs["ls.1"][0]["meta"]["title"] == "LS(1)"
    assert report["skipped"][0]["path"] == "dir.1" and "alias" in report["skipped"][0]["reason"]


# --- EPUB ----------------------------------------------------------------------------------------------------

def test_epub(tmp_path: Path) -> None:
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier("danlu-test")
    book.set_title("测试之书")
    book.set_language("zh")
    chapters = []
    for i, body in enumerate(["<h1>第一章</h1><p>第一章的内容。</p>", "<h1>第二章</h1><p>第二章的内容。</p>"]):
        c = epub.EpubHtml(title=f"c{i}", file_name=f"c{i}.xhtml", lang="zh")
        c.content = f"<html><body>{body}</body></html>"
        book.add_item(c)
        chapters.append(c)
    book.toc = chapters
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = chapters
    epub.write_epub(str(tmp_path / "book.epub"), book)
    report, recs = run(tmp_path, {"book.epub": (tmp_path / "book.epub").read_bytes()})
    rec = recs["book.epub"][0]
    assert rec["meta"]["title"] == "测试之书"
    text = rec["text"]
    assert text.index("# 第一章") < text.index("第一章的内容。") < text.index("# 第二章") < text.index("第二章的内容。")


# --- PDF -----------------------------------------------------------------------------------------------------

BODY = ("The quick brown fox jumps over the lazy dog while the system administrator restarts the "
        "network service and checks the log files for errors. ")


def _pdf_with_furniture(path: Path, pages: int = 4) -> None:
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate

    def furniture(canvas, doc) -> None:
        canvas.setFont("Helvetica", 9)
        canvas.drawString(72, A4[1] - 40, "ACME Operations Manual")
        canvas.drawRightString(A4[0] - 72, 30, f"{doc.page}")

    styles = getSampleStyleSheet()
    style = styles["BodyText"]
    style.alignment = 4  # justified: full lines reach the right margin
    story = []
    for i in range(pages):
        story.append(Paragraph(f"Chapter {i + 1} Overview", styles["Heading1"]))
        story.append(Paragraph(f"Section {i + 1}. " + BODY * 3, style))
        story.append(Paragraph(f"Closing remark {i + 1}.", style))
        story.append(PageBreak())
    SimpleDocTemplate(str(path), pagesize=A4).build(story, onFirstPage=furniture, onLaterPages=furniture)


def test_pdf_text_layer_furniture_removed_paragraphs_joined(tmp_path: Path) -> None:
    _pdf_with_furniture(tmp_path / "manual.pdf")
    report, recs = run(tmp_path, {"manual.pdf": (tmp_path / "manual.pdf").read_bytes()})
    rec = recs["manual.pdf"][0]
    text = rec["text"]
    assert rec["meta"]["pages"] == 4 and report["pages"] == 4 and report["ocr_pages"] == 0
    assert "ACME Operations Manual" not in text  # repeated running header
    assert not any(line.strip().isdigit() for line in text.splitlines())  # bare page numbers
    for i in range(1, 5):
        # the justified paragraph comes back as one line: layout line breaks rejoined with a space
        assert f"Section {i}. " + (BODY * 3).strip() in text.splitlines()
        assert f"Closing remark {i}." in text
        assert f"# Chapter {i} Overview" in text.splitlines()  # the larger font becomes a Markdown heading


def test_join_paragraphs_cjk_and_latin() -> None:
    lines = [
        Line("这是一个很长的段落，它在页面的右边", 50, 500, 100, 110),
        Line("距处换行。", 50, 120, 112, 122),
        Line("A Latin sentence that runs to the", 50, 500, 140, 150),
        Line("margin continues here.", 50, 200, 152, 162),
    ]
    assert join_paragraphs(lines) == (
        "这是一个很长的段落，它在页面的右边距处换行。\n\nA Latin sentence that runs to the margin continues here."
    )


def test_remove_furniture_page_numbers_and_repeats() -> None:
    pages = [[Line(f"Guide {n} / 9", 50, 500, 20, 30), Line(f"body {n}", 50, 500, 300, 310),
              Line(f"- {n} -", 280, 300, 800, 810)] for n in range(1, 5)]
    cleaned = remove_furniture(pages, [842.0] * 4)
    assert [[ln.text for ln in p] for p in cleaned] == [[f"body {n}"] for n in range(1, 5)]


# --- structured ----------------------------------------------------------------------------------------------

def test_jsonl_json_csv_with_chosen_field_and_bad_lines(tmp_path: Path) -> None:
    jsonl = "\n".join([
        json.dumps({"content": "第一条记录", "url": "http://a", "source": "wiki", "path": "x/y"}, ensure_ascii=False),
        "{not json",
        json.dumps({"title": "no content field"}),
        json.dumps({"content": 42}),
        "",
        json.dumps({"content": "第二条记录"}, ensure_ascii=False),
    ])
    csv_data = 'id,content\n1,甲行文本\n2,\n3,"乙行文本, 带逗号\n和换行"\n'
    json_data = json.dumps([{"content": "列表项"}, "not an object"], ensure_ascii=False)
    report, recs = run(tmp_path, {"a.jsonl": jsonl.encode(), "b.csv": csv_data.encode("gbk"),
                                  "c.json": json_data.encode(), "d.jsonl": b"{bad\n"}, text_field="content")
    assert [r["text"] for r in recs["a.jsonl"]] == ["第一条记录", "第二条记录"]
    first = recs["a.jsonl"][0]  # the record's own "source"/"path" are kept in meta, not mistaken for danlu's
    assert first["meta"]["url"] == "http://a" and first["meta"]["source"] == "wiki" and first["path"] == "a.jsonl"
    assert [r["text"] for r in recs["b.csv"]] == ["甲行文本", "乙行文本, 带逗号\n和换行"]
    assert [r["text"] for r in recs["c.json"]] == ["列表项"]
    bad = {(b["path"], b["line"]): b["reason"] for b in report["bad_record_examples"]}
    assert "invalid JSON" in bad[("a.jsonl", 2)]
    assert "missing field 'content'" in bad[("a.jsonl", 3)]
    assert "must be a string" in bad[("a.jsonl", 4)]
    assert "empty" in bad[("b.csv", 3)]
    assert report["bad_records"] == 5  # 3 in a.jsonl, 1 in b.csv, 1 in c.json (d.jsonl failed as a whole)
    assert "no usable records" in failure(report, "d.jsonl")
    ids = [r["id"] for rs in recs.values() for r in rs]
    assert len(set(ids)) == len(ids)


def test_a_few_non_utf8_jsonl_lines_cost_only_those_lines(tmp_path: Path) -> None:
    good = [json.dumps({"text": f"第{i}条记录"}, ensure_ascii=False).encode() for i in range(30)]
    data = b"\n".join(good[:10] + [b'{"text": "caf\xe9"}'] + good[10:]) + b"\n"
    report, recs = run(tmp_path, {"mixed.jsonl": data})
    assert [r["text"] for r in recs["mixed.jsonl"]] == [f"第{i}条记录" for i in range(30)]
    assert report["bad_records"] == 1 and "not UTF-8" in report["bad_record_examples"][0]["reason"]
    assert report["bad_record_examples"][0]["line"] == 11
    gbk = "\n".join(json.dumps({"text": f"第{i}条"}, ensure_ascii=False) for i in range(5)).encode("gb18030")
    _, legacy = run(tmp_path / "gbk", {"legacy.jsonl": gbk})  # a legacy dump is still detected as a whole
    assert [r["text"] for r in legacy["legacy.jsonl"]] == [f"第{i}条" for i in range(5)]


# --- failures, skips and accounting --------------------------------------------------------------------------

def test_bad_inputs_fail_with_reasons_and_the_rest_is_imported(tmp_path: Path) -> None:
    rng = random.Random(1)
    junk = bytes(rng.randrange(256) for _ in range(5000))
    files = {
        "good.txt": "好的文本。".encode(),
        "corrupt.pdf": b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage without xref",
        "fake.docx": b"PK\x03\x04 this is not really a zip archive",
        "junk.txt": junk,
        "junk": junk,
        "undecodable.txt": bytes(b for b in junk if b >= 0x80),
        "empty.txt": b"",
        "blank.md": b"  \n\n ",
        "picture.png": b"\x89PNG\r\n\x1a\n",
        ".hidden.txt": b"hidden",
        "sub/deeper.html": "<html><body><p>深层页面</p></body></html>".encode(),
    }
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "dangling.txt").symlink_to(root / "does-not-exist.txt")  # an unreadable file
    report, recs = run(tmp_path, files)
    assert set(recs) == {"good.txt", "sub/deeper.html"}
    assert file_counts(report) == {"in": 12, "written": 2, "skipped": 2, "failed": 8}
    assert file_counts(report)["in"] == sum(file_counts(report)[k] for k in ("written", "skipped", "failed"))
    assert "not a readable PDF" in failure(report, "corrupt.pdf")
    assert "not a zip archive" in failure(report, "fake.docx")
    assert "binary" in failure(report, "junk.txt") and "binary" in failure(report, "junk")
    assert "undecodable" in failure(report, "undecodable.txt")
    assert "empty file" in failure(report, "empty.txt")
    assert "only whitespace" in failure(report, "blank.md")
    assert "cannot read" in failure(report, "dangling.txt")
    skipped = {s["path"]: s["reason"] for s in report["skipped"]}
    assert "not a document format" in skipped["picture.png"] and skipped[".hidden.txt"] == "hidden file"
    rejects = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 10
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["status"] == "complete" and file_counts(saved) == file_counts(report)
    assert saved["by_format"]["txt"]["failed"] == 4 and saved["by_format"]["html"]["written"] == 1


def test_ids_stable_across_reruns_and_worker_counts(tmp_path: Path) -> None:
    files = {f"d{i}/doc{i}.txt": f"文档 {i} 的内容。".encode() for i in range(6)}
    files["m.jsonl"] = b'{"text": "a"}\n{"text": "b"}\n'
    _, first = run(tmp_path, files)
    out1 = (tmp_path / "out" / "documents.jsonl").read_text()
    _, again = run(tmp_path, {}, workers=2)  # same files, now through the process pool
    out2 = (tmp_path / "out" / "documents.jsonl").read_text()
    assert out1 == out2  # same ids, same order
    assert first["d3/doc3.txt"][0]["source"] == "corpus"
    ids = [json.loads(x)["id"] for x in out1.splitlines()]
    assert len(set(ids)) == len(ids) == 8


def test_source_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "a" / "sub").mkdir(parents=True)
    (tmp_path / "a" / "sub" / "x.txt").write_text("甲")
    (tmp_path / "single.md").write_text("乙")
    report = ingest([tmp_path / "a", tmp_path / "single.md"], tmp_path / "out", workers=1, progress=False)
    recs = [json.loads(x) for x in (tmp_path / "out" / "documents.jsonl").read_text().splitlines()]
    assert [(r["source"], r["path"]) for r in recs] == [("a", "sub/x.txt"), (tmp_path.name, "single.md")]
    assert file_counts(report) == {"in": 2, "written": 2, "skipped": 0, "failed": 0}
    ingest([tmp_path / "a"], tmp_path / "out2", source="ops", workers=1, progress=False)
    rec = json.loads((tmp_path / "out2" / "documents.jsonl").read_text())
    assert rec["source"] == "ops" and rec["id"] != recs[0]["id"]
    with pytest.raises(FileNotFoundError, match="no-such"):
        ingest([tmp_path / "no-such"], tmp_path / "out3", progress=False)


def test_cli_ingest(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from danlu.cli import app

    corpus = tmp_path / "docs"
    corpus.mkdir()
    (corpus / "a.txt").write_text("命令行导入的文本。")
    (corpus / "bad.pdf").write_bytes(b"%PDF-broken")
    result = CliRunner().invoke(app, ["data", "ingest", str(corpus), "-o", str(tmp_path / "out"), "--source", "ops",
                                      "--workers", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "files in=2 kept=1 filtered=0 rejected=1" in result.output
    assert "bad.pdf" in result.output
    rec = json.loads((tmp_path / "out" / "documents.jsonl").read_text())
    assert rec["source"] == "ops" and rec["text"] == "命令行导入的文本。"
    bad = CliRunner().invoke(app, ["data", "ingest", str(corpus), "-o", str(tmp_path / "o2"), "--ocr", "maybe"])
    assert bad.exit_code != 0


def _crash_on_poison(args):
    """A reader stand-in that kills its process on one file, as a native library fault would."""
    from danlu.data.ingest.importer import process_file

    task, opts = args
    if task.rel == "c.txt":
        os._exit(1)
    return process_file(task, opts)


def _hang_on_poison(args):
    """A reader stand-in that never returns on one file, as a reader stuck on a hostile PDF would."""
    import time

    from danlu.data.ingest.importer import process_file

    task, opts = args
    if task.rel == "c.txt":
        time.sleep(600)
    return process_file(task, opts)


@pytest.mark.parametrize("poison, reason", [(_crash_on_poison, "crashed"), (_hang_on_poison, "longer than 3s")])
def test_a_crashing_or_hung_reader_costs_only_its_file(tmp_path: Path, poison, reason: str) -> None:
    import time

    from danlu.data.ingest.base import Options
    from danlu.data.ingest.importer import _outcomes, discover

    root = tmp_path / "c"
    root.mkdir()
    for name in ("a.txt", "b.txt", "c.txt", "d.txt", "e.txt"):
        (root / name).write_text(f"{name} 的内容")
    t0 = time.monotonic()
    outcomes = list(_outcomes(discover([root]), Options(), workers=2, fn=poison, timeout=3))
    assert time.monotonic() - t0 < 60
    assert [o.rel for o in outcomes] == ["a.txt", "b.txt", "c.txt", "d.txt", "e.txt"]  # order kept
    assert [o.status for o in outcomes] == ["written", "written", "failed", "written", "written"]
    assert reason in outcomes[2].reason


def test_output_inside_input_is_not_reimported_and_clashing_paths_keep_ids_apart(tmp_path: Path) -> None:
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "index.txt").write_text(f"{d} 的首页")
    report = ingest([tmp_path / "x", tmp_path / "y"], tmp_path / "x" / "out", source="ops", workers=1, progress=False)
    again = ingest([tmp_path / "x", tmp_path / "y"], tmp_path / "x" / "out", source="ops", workers=1, progress=False)
    assert file_counts(report)["in"] == file_counts(again)["in"] == 2  # x/out/documents.jsonl is never an input
    recs = [json.loads(x) for x in (tmp_path / "x" / "out" / "documents.jsonl").read_text().splitlines()]
    assert [r["path"] for r in recs] == ["index.txt", "y/index.txt"]
    assert len({r["id"] for r in recs}) == 2


def test_pdf_bullets_become_markdown_list_items() -> None:
    lines = [Line("设备文件有两种类型。", 50, 200, 100, 110), Line("• 字符设备", 50, 120, 112, 122),
             Line("– 每次访问一个字符", 60, 160, 124, 134), Line("• 块设备", 50, 120, 136, 146)]
    assert join_paragraphs(lines) == "设备文件有两种类型。\n- 字符设备\n  - 每次访问一个字符\n- 块设备"


def test_a_killed_import_resumes_without_reading_finished_files_again(tmp_path, monkeypatch):
    from danlu.data.ingest import importer

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"doc{i}.md").write_text(f"# 第{i}篇\n\n正文第{i}段。\n", encoding="utf-8")
    ingest([corpus], tmp_path / "clean-run", workers=1, progress=False)

    monkeypatch.setattr(importer, "RESUME_MIN_SECONDS", 0.0)  # keep every outcome (real ones: slow files only)
    real, read = importer.process_file, []

    def killed_on_third(task, opts):
        if len(read) == 2:
            raise KeyboardInterrupt("killed")
        read.append(task.rel)
        return real(task, opts)

    monkeypatch.setattr(importer, "process_file", killed_on_third)
    with pytest.raises(KeyboardInterrupt):
        ingest([corpus], tmp_path / "out", workers=1, progress=False)
    assert not (tmp_path / "out" / "documents.jsonl").exists()

    read.clear()
    monkeypatch.setattr(importer, "process_file", lambda task, opts: read.append(task.rel) or real(task, opts))
    report = ingest([corpus], tmp_path / "out", workers=1, progress=False)
    assert read == ["doc2.md", "doc3.md"] and report["files_resumed"] == 2 and file_counts(report)["written"] == 4
    assert (tmp_path / "out" / "documents.jsonl").read_bytes() == (tmp_path / "clean-run" / "documents.jsonl").read_bytes()
    assert not (tmp_path / "out" / ".resume").exists()


def test_files_skipped_by_name_are_not_read(tmp_path: Path, monkeypatch) -> None:
    from danlu.data.ingest import importer

    real = importer._read_bytes

    def guarded(task):
        assert not task.rel.endswith(".mp4"), "a video was read into memory just to be skipped"
        return real(task)

    monkeypatch.setattr(importer, "_read_bytes", guarded)
    report, recs = run(tmp_path, {"clip.mp4": b"\x00" * 4096, "notes.txt": "运维笔记".encode()})
    assert report["skipped"][0]["path"] == "clip.mp4" and "not a document format" in report["skipped"][0]["reason"]
    assert [r["text"] for r in recs["notes.txt"]] == ["运维笔记"]
