"""Plain text and Markdown: decode, normalise line ends, keep the text as it is."""

from __future__ import annotations

from danlu.data.ingest.base import Extracted, ReadResult
from danlu.data.ingest.encoding import decode
from danlu.data.ingest.errors import IngestFailure


def read_text(data: bytes, path, opts) -> ReadResult:
    text, enc = decode(data)
    text = text.strip("\ufeff")
    if not text.strip():
        raise IngestFailure("no text (only whitespace)")
    return ReadResult([Extracted(text.strip("\n"))], {"encoding": enc})
