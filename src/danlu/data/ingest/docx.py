"""DOCX -> HTML with mammoth (keeps headings, lists, tables), then the shared HTML -> Markdown path."""

from __future__ import annotations

import io
import zipfile

from danlu.data.ingest.base import Extracted, ReadResult
from danlu.data.ingest.errors import IngestFailure
from danlu.data.ingest.html import html_to_markdown


def read_docx(data: bytes, path, opts) -> ReadResult:
    import mammoth

    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise IngestFailure("not a valid .docx: the file is not a zip archive (corrupt or truncated)")
    try:
        result = mammoth.convert_to_html(io.BytesIO(data))
    except Exception as e:  # mammoth/zipfile/zlib/xml raise many kinds for broken files; each is the same verdict
        raise IngestFailure(f"not a valid .docx (broken zip or missing word/document.xml): {e}") from None
    md, _ = html_to_markdown(f"<html><body>{result.value}</body></html>")
    if not md:
        raise IngestFailure("the document has no text")
    return ReadResult([Extracted(md)], {})
