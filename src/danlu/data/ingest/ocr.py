"""OCR for PDF pages without a text layer: RapidOCR (PaddleOCR models exported to ONNX, shipped inside the
rapidocr-onnxruntime wheel, so nothing is downloaded). Optional: install with `pip install 'danlu[ocr]'`."""

from __future__ import annotations

import statistics

from danlu.data.ingest.furniture import Line
from danlu.text import join_separator

RENDER_SCALE = 1.5  # 108 dpi: body text stays legible to the recogniser, detection stays fast

_engine = None  # one engine per process, loaded on first use


class OcrUnavailable(RuntimeError):
    """The OCR extra is not installed (or its engine cannot start)."""


def get_engine():
    global _engine
    if _engine is None:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as e:
            raise OcrUnavailable(
                f"page has no text layer and OCR is not installed ({e.name or e}); "
                "install it with: pip install 'danlu[ocr]'"
            ) from None
        _engine = RapidOCR()
    return _engine


def ocr_image(image) -> list[Line]:
    """Lines of text found in an RGB numpy image, in reading order, with boxes in the image's pixels."""
    # No angle classifier: pages are upright, and on clean print it flips whole lines 180° now and then
    # (the line then comes back as garbage or not at all).
    result, _ = get_engine()(image, use_cls=False)
    boxes = []
    for points, text, _score in result or []:
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        if text.strip():
            boxes.append(Line(text.strip(), min(xs), max(xs), min(ys), max(ys)))
    return _merge_rows(boxes)


def _merge_rows(boxes: list[Line]) -> list[Line]:
    """Detected boxes -> text lines: boxes whose vertical centres are within half a line height share a row."""
    if not boxes:
        return []
    height = statistics.median(b.bottom - b.top for b in boxes)
    rows: list[list[Line]] = []
    for b in sorted(boxes, key=lambda b: (b.top + b.bottom) / 2):
        centre = (b.top + b.bottom) / 2
        if rows and abs(centre - statistics.mean((r.top + r.bottom) / 2 for r in rows[-1])) < height / 2:
            rows[-1].append(b)
        else:
            rows.append([b])
    lines = []
    for row in rows:
        row.sort(key=lambda b: b.left)
        text = row[0].text
        for prev, b in zip(row, row[1:]):
            text += join_separator(prev.text, b.text) + b.text
        lines.append(Line(text, row[0].left, row[-1].right, min(b.top for b in row), max(b.bottom for b in row)))
    return lines


def ocr_page(page) -> list[Line]:
    """OCR one pypdfium2 page; boxes come back in page points, top-down, like the text layer's lines."""
    image = page.render(scale=RENDER_SCALE).to_numpy()
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    image = image[:, :, ::-1].copy() if image.ndim == 3 else image  # pdfium renders BGR(A); RapidOCR wants RGB
    lines = ocr_image(image)
    s = RENDER_SCALE
    return [Line(ln.text, ln.left / s, ln.right / s, ln.top / s, ln.bottom / s) for ln in lines]
