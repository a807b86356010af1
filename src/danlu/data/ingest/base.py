"""What a format reader returns: the documents found in one file plus file-level facts (pages, OCR, bad lines)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Options:
    """Per-run reader options (plain values so they pickle into worker processes)."""

    text_field: str = "text"
    ocr: str = "auto"  # auto: OCR pages without a text layer; off: never; force: every page


@dataclass
class Extracted:
    """One document's text; `position` tells documents from the same file apart (line, row, 0)."""

    text: str
    position: int | str = 0
    meta: dict = field(default_factory=dict)


@dataclass
class ReadResult:
    docs: list[Extracted]
    meta: dict = field(default_factory=dict)  # merged into every document's meta (encoding, title, pages ...)
    bad_lines: list[tuple[int, str]] = field(default_factory=list)  # (line/row, reason) for structured formats
    pages: int = 0
    ocr_pages: int = 0
