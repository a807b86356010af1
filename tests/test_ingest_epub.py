"""EPUB import of books that are not to the letter of the spec: each is built here with zipfile, read through
the real ingest stage, and must give the same text as the proper book, with the fallback recorded."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from danlu.data.ingest import ingest

CONTAINER = """<?xml version="1.0"?>
<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">
  <rootfiles><rootfile full-path="{opf}" media-type="application/oebps-package+xml"/></rootfiles>
</container>"""

OPF = """<?xml version="1.0" encoding="utf-8"?>
<package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="id">
  <metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:identifier id="id">t</dc:identifier>
    <dc:title>运维手册</dc:title><dc:language>zh</dc:language></metadata>
  <manifest>{items}</manifest>
  <spine>{refs}</spine>
</package>"""

CHAPTERS = {
    "ch1.xhtml": ("第一章 安装", "安装 Debian 之前，先备份数据并核对硬件需求。"),
    "ch2.xhtml": ("第二章 网络", "用 ip addr 查看网卡地址，用 ss -tlnp 查看监听端口。"),
    "ch3.xhtml": ("第三章 日志", "journalctl -u nginx 显示 nginx 服务的日志。"),
}


def _xhtml(title: str, body: str) -> str:
    return (f'<?xml version="1.0" encoding="utf-8"?><html xmlns="http://www.w3.org/1999/xhtml"><head>'
            f"<title>{title}</title></head><body><h1>{title}</h1><p>{body}</p></body></html>")


def _opf(spine: list[str], manifest: list[str] | None = None) -> str:
    manifest = manifest if manifest is not None else spine
    items = "".join(f'<item id="{n.split(".")[0]}" href="text/{n}" media-type="application/xhtml+xml"/>'
                    for n in manifest)
    refs = "".join(f'<itemref idref="{n.split(".")[0]}"/>' for n in spine)
    return OPF.format(items=items, refs=refs)


def build(path: Path, *, prefix: str = "", mimetype: bytes | None = b"application/epub+zip",
          container_opf: str | None = "OEBPS/content.opf", opf_at: str | None = "OEBPS/content.opf",
          spine: list[str] | None = None, chapters: list[str] | None = None) -> Path:
    """An EPUB written with zipfile; every part of the package can be left out or misplaced."""
    chapters = list(CHAPTERS) if chapters is None else chapters
    spine = list(CHAPTERS) if spine is None else spine
    with zipfile.ZipFile(path, "w") as zf:
        if mimetype is not None:
            zf.writestr(prefix + "mimetype", mimetype, compress_type=zipfile.ZIP_STORED)
        if container_opf is not None:
            zf.writestr(prefix + "META-INF/container.xml", CONTAINER.format(opf=container_opf))
        if opf_at is not None:
            zf.writestr(prefix + opf_at, _opf(spine, manifest=sorted(set(spine) | set(chapters))))
        for name in chapters:
            zf.writestr(prefix + "OEBPS/text/" + name, _xhtml(*CHAPTERS[name]), compress_type=zipfile.ZIP_DEFLATED)
    return path


def read(tmp_path: Path, epub: Path) -> tuple[dict, list[dict]]:
    out = tmp_path / f"out-{epub.stem}"
    report = ingest([epub], out, progress=False, workers=1)
    recs = [json.loads(line) for line in open(out / "documents.jsonl", encoding="utf-8")]
    return report, recs


def _order(text: str, titles: list[str]) -> list[int]:
    return [text.index(t) for t in titles]


@pytest.fixture()
def proper(tmp_path) -> dict:
    report, recs = read(tmp_path, build(tmp_path / "proper.epub"))
    assert report["counts"]["kept"] == 1
    return recs[0]


def test_proper_epub_reads_the_spine_in_order(proper):
    text = proper["text"]
    titles = [t for t, _ in CHAPTERS.values()]
    assert _order(text, titles) == sorted(_order(text, titles))
    assert all(body in text for _, body in CHAPTERS.values())
    assert proper["meta"]["title"] == "运维手册" and proper["meta"]["chapters"] == 3
    assert "recovered" not in proper["meta"]


def test_book_inside_a_top_level_folder(tmp_path, proper):
    _, recs = read(tmp_path, build(tmp_path / "nested.epub", prefix="运维手册/"))
    rec = recs[0]
    assert rec["text"] == proper["text"]
    assert rec["meta"]["recovered"]["fallbacks"] == ["container_in_subfolder"]
    assert "运维手册/META-INF/container.xml" in rec["meta"]["recovered"]["issues"][0]


def test_no_mimetype_file(tmp_path, proper):
    _, recs = read(tmp_path, build(tmp_path / "nomime.epub", mimetype=None))
    assert recs[0]["text"] == proper["text"]
    assert recs[0]["meta"]["recovered"] == {"fallbacks": [], "issues": ["no mimetype file"]}
    _, recs = read(tmp_path, build(tmp_path / "badmime.epub", mimetype=b"application/zip"))
    assert "mimetype is" in recs[0]["meta"]["recovered"]["issues"][0]


def test_container_points_at_a_missing_opf(tmp_path, proper):
    # the OPF exists under another name: found by searching the archive
    _, recs = read(tmp_path, build(tmp_path / "moved.epub", container_opf="OEBPS/package.opf"))
    rec = recs[0]
    assert rec["text"] == proper["text"] and rec["meta"]["title"] == "运维手册"
    assert rec["meta"]["recovered"]["fallbacks"] == ["opf_search"]
    assert "names OEBPS/package.opf, which is not in the archive" in rec["meta"]["recovered"]["issues"][0]
    # no OPF at all: the XHTML files in the archive's order
    _, recs = read(tmp_path, build(tmp_path / "noopf.epub", opf_at=None))
    rec = recs[0]
    assert rec["text"] == proper["text"]
    assert rec["meta"]["recovered"]["fallbacks"] == ["archive_order"]
    assert "no package (.opf) file in the archive" in rec["meta"]["recovered"]["issues"]


def test_spine_names_missing_items(tmp_path):
    epub = build(tmp_path / "holes.epub", spine=["ch1.xhtml", "ch2.xhtml", "ch3.xhtml"],
                 chapters=["ch1.xhtml", "ch3.xhtml"])
    _, recs = read(tmp_path, epub)
    rec = recs[0]
    assert CHAPTERS["ch1.xhtml"][1] in rec["text"] and CHAPTERS["ch3.xhtml"][1] in rec["text"]
    assert rec["meta"]["chapters"] == 2
    assert rec["meta"]["recovered"]["fallbacks"] == ["spine_partial"]
    assert "OEBPS/text/ch2.xhtml" in rec["meta"]["recovered"]["issues"][0]


def test_spine_with_wrong_case_matches_the_archive(tmp_path, proper):
    epub = tmp_path / "case.epub"
    build(epub)
    with zipfile.ZipFile(epub) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    with zipfile.ZipFile(epub, "w") as zf:
        for n, data in members.items():
            zf.writestr(n.replace("ch2.xhtml", "CH2.XHTML"), data)
    _, recs = read(tmp_path, epub)
    assert recs[0]["text"] == proper["text"] and "recovered" not in recs[0]["meta"]


def test_no_text_anywhere_fails_with_the_reason(tmp_path):
    epub = build(tmp_path / "empty.epub", opf_at=None, chapters=[])
    report = ingest([epub], tmp_path / "out", progress=False, workers=1)
    assert report["counts"]["kept"] == 0
    reason = report["failed"][0]["reason"]
    assert "no text" in reason and "no package (.opf) file" in reason and "no XHTML/HTML file" in reason


def test_the_ingest_report_counts_and_warns_about_recovered_files(tmp_path):
    """A file read by a fallback is counted per format and fallback in report.json, with a warning."""
    import json as _json

    from danlu.data.ingest import ingest

    books = tmp_path / "books"
    books.mkdir()
    build(books / "a-proper.epub")
    build(books / "b-nested.epub", prefix="运维手册/")
    report = ingest([books], tmp_path / "out", workers=1, progress=False)
    assert report["recovered"] == {"epub": {"container_in_subfolder": 1}}
    assert [e["path"] for e in report["recovered_examples"]] == ["b-nested.epub"]
    assert report["warnings"] and "read by a fallback" in report["warnings"][0]
    saved = _json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["recovered"] == report["recovered"]
