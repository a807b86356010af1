"""OCR of PDF pages without a text layer (rapidocr, the optional [ocr] extra)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from danlu.data.ingest import ingest
from danlu.data.ingest import ocr as ocr_module
from danlu.data.ingest.similarity import cer
from danlu.data.ingest.synthetic import find_cjk_font, image_pdf, latin_font
from report_helpers import file_counts

LATIN_LINES = ["Invoice 2024-0815 for server rack B7", "Total due: 1234.56 USD", "Reboot window 03:45 to 04:15"]
CHINESE_LINES = [
    "在默认的系统中，有六个可切换的字符控制台，",
    "可以直接在主机上启动命令行。每一个字符控制",
    "台都允许独立登录账户并提供多用户环境。",
    "软件包管理工具会自动处理依赖关系并下载所需",
    "的文件，管理员只需要确认安装的软件包列表。",
]


def _ingest_pdf(tmp_path: Path, lines: list[str], font: str, ocr: str = "auto") -> tuple[dict, list[dict]]:
    corpus = tmp_path / "scans"
    corpus.mkdir(exist_ok=True)
    image_pdf([lines], corpus / "scan.pdf", font)
    report = ingest([corpus], tmp_path / f"out-{ocr}", ocr=ocr, workers=1, progress=False)
    recs = [json.loads(x) for x in (tmp_path / f"out-{ocr}" / "documents.jsonl").read_text().splitlines()]
    return report, recs


def test_image_only_pdf_english_is_ocrd(tmp_path: Path) -> None:
    pytest.importorskip("rapidocr_onnxruntime", reason="OCR extra not installed: pip install 'danlu[ocr]'")
    report, recs = _ingest_pdf(tmp_path, LATIN_LINES, latin_font())
    assert report["ocr_pages"] == 1 and file_counts(report)["written"] == 1
    assert recs[0]["meta"]["ocr_pages"] == 1
    assert cer("\n".join(LATIN_LINES), recs[0]["text"]) <= 0.05, recs[0]["text"]
    assert "1234.56" in recs[0]["text"]


def test_image_only_pdf_chinese_is_ocrd(tmp_path: Path) -> None:
    pytest.importorskip("rapidocr_onnxruntime", reason="OCR extra not installed: pip install 'danlu[ocr]'")
    font = find_cjk_font()
    if font is None:
        pytest.skip("no CJK font found to render Chinese (apt-get install fonts-wqy-zenhei, or set DANLU_CJK_FONT)")
    report, recs = _ingest_pdf(tmp_path, CHINESE_LINES, font)
    assert report["ocr_pages"] == 1
    assert cer("".join(CHINESE_LINES), recs[0]["text"]) <= 0.05, recs[0]["text"]


def test_ocr_off_makes_scanned_pdf_a_failure(tmp_path: Path) -> None:
    report, recs = _ingest_pdf(tmp_path, LATIN_LINES, latin_font(), ocr="off")
    assert recs == [] and file_counts(report)["failed"] == 1
    assert "no text layer" in report["failed"][0]["reason"] and "--ocr off" in report["failed"][0]["reason"]


def test_missing_ocr_extra_is_a_clear_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)  # import now raises ImportError
    monkeypatch.setattr(ocr_module, "_engine", None)
    report, recs = _ingest_pdf(tmp_path, LATIN_LINES, latin_font())
    assert recs == [] and file_counts(report)["failed"] == 1
    assert "pip install 'danlu[ocr]'" in report["failed"][0]["reason"]


def test_auto_ocrs_only_pages_without_text_layer(tmp_path: Path) -> None:
    pytest.importorskip("rapidocr_onnxruntime", reason="OCR extra not installed: pip install 'danlu[ocr]'")
    import pypdfium2 as pdfium
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    text_pdf = tmp_path / "text.pdf"
    c = canvas.Canvas(str(text_pdf), pagesize=A4)
    c.drawString(72, 700, "This page has a real text layer.")
    c.save()
    image_pdf([LATIN_LINES], tmp_path / "scan.pdf", latin_font())
    merged = pdfium.PdfDocument(str(text_pdf))
    merged.import_pages(pdfium.PdfDocument(str(tmp_path / "scan.pdf")))
    corpus = tmp_path / "mixed"
    corpus.mkdir()
    merged.save(str(corpus / "mixed.pdf"))
    report = ingest([corpus], tmp_path / "out", workers=1, progress=False)
    text = json.loads((tmp_path / "out" / "documents.jsonl").read_text())["text"]
    assert report["pages"] == 2 and report["ocr_pages"] == 1
    assert text.index("This page has a real text layer.") < text.index("1234.56")
