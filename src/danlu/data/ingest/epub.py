"""EPUB -> Markdown: the spine's XHTML documents in reading order through the shared HTML path."""

from __future__ import annotations

import io
import zipfile

from danlu.data.ingest.base import Extracted, ReadResult
from danlu.data.ingest.errors import IngestFailure
from danlu.data.ingest.html import html_to_markdown


def read_epub(data: bytes, path, opts) -> ReadResult:
    import warnings

    import ebooklib
    from ebooklib import epub

    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise IngestFailure("not a valid .epub: the file is not a zip archive (corrupt or truncated)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            book = epub.read_epub(io.BytesIO(data), options={"ignore_ncx": True})
    except Exception as e:  # ebooklib raises bare exceptions of several kinds for broken books
        raise IngestFailure(f"not a readable EPUB: {type(e).__name__}: {e}") from None
    parts = []
    for item_id, _linear in book.spine:
        item = book.get_item_with_id(item_id)
        if item is None or item.get_type() != ebooklib.ITEM_DOCUMENT:
            continue
        md, _ = html_to_markdown(item.get_content().decode("utf-8", errors="replace"))
        if md:
            parts.append(md)
    if not parts:
        raise IngestFailure("the EPUB has no text in its reading order (spine)")
    meta = {"chapters": len(parts)}
    title = book.get_metadata("DC", "title")
    if title:
        meta["title"] = title[0][0]
    return ReadResult([Extracted("\n\n".join(parts))], meta)
