"""Which reader handles a file: by extension first, then by the first bytes (man pages keep their section as
the extension, e.g. ls.1 or for.3tcl; extensionless files are sniffed)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from danlu.data.ingest.base import ReadResult
from danlu.data.ingest.errors import SkipFile

EXTENSIONS = {
    ".txt": "txt", ".text": "txt", ".md": "md", ".markdown": "md", ".html": "html", ".htm": "html",
    ".xhtml": "html", ".pdf": "pdf", ".docx": "docx", ".epub": "epub", ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".json": "json", ".csv": "csv", ".man": "man", ".roff": "man",
}
_MAN_SECTION = re.compile(r"^\.[1-9n][a-z]{0,4}$")  # .1 .8 .3tcl .3tk .1x .n
NOT_DOCUMENTS = {
    ".png", ".jpg", ".jpeg", ".gif", ".svg", ".ico", ".webp", ".bmp", ".tif", ".tiff", ".css", ".js", ".map",
    ".woff", ".woff2", ".ttf", ".otf", ".eot", ".mp3", ".mp4", ".avi", ".mov", ".wav", ".ogg", ".zip", ".tar",
    ".tgz", ".bz2", ".xz", ".zst", ".7z", ".rar", ".exe", ".dll", ".so", ".o", ".a", ".pyc", ".class", ".jar",
    ".doc", ".xls", ".xlsx", ".ppt", ".pptx", ".odt", ".ods", ".rtf", ".db", ".sqlite", ".parquet", ".npy",
    ".bin", ".pt", ".safetensors", ".onnx",
}
_ROFF_START = re.compile(rb"^(?:\s*\n)*(?:\.\\\"|'\\\"|\.TH\s|\.Dd\s|\.so\s|\.de\s)")


def check_name(path: Path) -> None:
    """SkipFile for a name that is never a document, so such files (videos, archives) are not even read."""
    suffix = path.suffix.lower()
    if suffix in NOT_DOCUMENTS:
        raise SkipFile(f"not a document format ({suffix})")


def detect_format(path: Path, head: bytes) -> str:
    """The format name for `path` (whose first bytes are `head`), or SkipFile if it is not a document."""
    suffix = path.suffix.lower()
    if suffix in EXTENSIONS:
        return EXTENSIONS[suffix]
    if _MAN_SECTION.match(suffix):
        return "man"
    check_name(path)
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        raise SkipFile("a zip archive without a .docx/.epub extension")
    if _ROFF_START.match(head):
        return "man"
    if re.match(rb"\s*(?:<\?xml[^>]*>\s*)?<(?:!doctype html|html)", head[:1024], re.I):
        return "html"
    return "txt"  # anything else is tried as plain text: binary junk fails there with a clear reason


def reader(fmt: str) -> Callable[..., ReadResult]:
    """The reader function for a format name (imported here so workers load only what they use)."""
    if fmt in ("txt", "md"):
        from danlu.data.ingest.text import read_text as fn
    elif fmt == "html":
        from danlu.data.ingest.html import read_html as fn
    elif fmt == "pdf":
        from danlu.data.ingest.pdf import read_pdf as fn
    elif fmt == "docx":
        from danlu.data.ingest.docx import read_docx as fn
    elif fmt == "epub":
        from danlu.data.ingest.epub import read_epub as fn
    elif fmt == "man":
        from danlu.data.ingest.roff import read_roff as fn
    elif fmt == "jsonl":
        from danlu.data.ingest.structured import read_jsonl as fn
    elif fmt == "json":
        from danlu.data.ingest.structured import read_json as fn
    elif fmt == "csv":
        from danlu.data.ingest.structured import read_csv as fn
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return fn
