"""PDF -> text with pypdfium2: the text layer page by page, OCR for pages without one, furniture removed,
paragraphs rejoined, headings (by font size) marked as Markdown headings."""

from __future__ import annotations

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from danlu.data.ingest.base import Extracted, ReadResult
from danlu.data.ingest.errors import IngestFailure
from danlu.data.ingest.furniture import Line, heading_levels, join_paragraphs, remove_furniture

MIN_TEXT_CHARS = 10  # a page with fewer text-layer characters than this counts as having no text layer


def text_lines(page) -> list[Line]:
    """The page's text-layer lines in reading order, each with its box (top-down coordinates)."""
    height = page.get_height()
    textpage = page.get_textpage()
    try:
        text = textpage.get_text_range()
        lines, start = [], 0
        for raw in text.split("\n"):
            end = start + len(raw)
            stripped = raw.strip()
            if stripped:
                first = start + (len(raw) - len(raw.lstrip()))
                last = start + len(raw.rstrip()) - 1
                l0, b0, r0, t0 = textpage.get_charbox(first)
                l1, b1, r1, t1 = textpage.get_charbox(last)
                top, bottom = height - max(t0, t1), height - min(b0, b1)
                size = pdfium_c.FPDFText_GetFontSize(textpage.raw, first)
                lines.append(Line(stripped, min(l0, l1), max(r0, r1), top, bottom, size))
            start = end + 1
        return lines
    finally:
        textpage.close()


def _has_images(page) -> bool:
    return any(True for _ in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE], max_depth=2))


def read_pdf(data: bytes, path, opts) -> ReadResult:
    try:
        doc = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as e:
        raise IngestFailure(f"not a readable PDF (corrupt, truncated or encrypted): {e}") from None
    try:
        pages: list[list[Line]] = []
        heights: list[float] = []
        ocr_pages = ocr_missing = no_text = 0
        missing_reason = ""
        for i in range(len(doc)):
            page = doc[i]
            lines = text_lines(page)
            chars = sum(len(ln.text) for ln in lines)
            wants_ocr = opts.ocr == "force" or (opts.ocr == "auto" and chars < MIN_TEXT_CHARS and _has_images(page))
            if wants_ocr:
                from danlu.data.ingest.ocr import OcrUnavailable, ocr_page

                try:
                    lines = ocr_page(page)
                    ocr_pages += 1
                except OcrUnavailable as e:
                    if opts.ocr == "force":
                        raise IngestFailure(str(e)) from None
                    ocr_missing += 1
                    missing_reason = str(e)
            no_text += sum(len(ln.text) for ln in lines) < MIN_TEXT_CHARS
            pages.append(lines)
            heights.append(page.get_height())
            page.close()
        n_pages = len(pages)
    finally:
        doc.close()
    pages = remove_furniture(pages, heights)
    levels = heading_levels(pages)
    text = "\n\n".join(t for t in (join_paragraphs(p, levels) for p in pages) if t)
    if not text.strip():
        if ocr_missing:
            raise IngestFailure(f"no text layer on any page and OCR is unavailable: {missing_reason}")
        if opts.ocr == "off":
            raise IngestFailure("no text layer (scanned PDF?) and --ocr off")
        raise IngestFailure("no text found on any page")
    meta = {"pages": n_pages}
    if ocr_pages:
        meta["ocr_pages"] = ocr_pages
    if no_text:
        meta["pages_without_text"] = no_text  # blank pages, or scans left unread (--ocr off / OCR not installed)
    return ReadResult([Extracted(text)], meta, pages=n_pages, ocr_pages=ocr_pages)
