"""EPUB -> Markdown: the spine's XHTML documents in reading order through the shared HTML path.

Real EPUBs are often not to the letter of the spec, and a reader application still shows them. So does this
reader, falling back in order and saying so in the record's meta ("recovered": the fallbacks used and the
problems met):

1. META-INF/container.xml at the archive root names the package (OPF) file - the spec's way;
   `container_in_subfolder`: the whole book sits inside a top-level folder (zipped from its parent folder),
   so container.xml is found as `FOLDER/META-INF/container.xml` and paths resolve inside FOLDER;
2. `opf_search`: no container.xml, or it names an OPF that is not in the archive: the archive's .opf file is
   used (the shallowest, if several);
3. the OPF's spine gives the reading order; `spine_partial`: items the spine names that are not in the
   archive are skipped (after trying a case-insensitive match, as Windows-made books need);
4. `archive_order`: no usable OPF or spine: every XHTML/HTML file, in the order the archive stores them
   (EPUB tools write them in reading order).

A missing or wrong `mimetype` file is only noted. The reader fails only when no text is found, and then says
what it tried. The OPF and container are parsed with lxml (recovering from broken XML) rather than through
ebooklib, which refuses every one of these books outright and offers no partial reading; the part of the
package format needed here is three elements.
"""

from __future__ import annotations

import io
import posixpath
import re
import zipfile
from urllib.parse import unquote

from lxml import etree

from danlu.data.ingest.base import Extracted, ReadResult
from danlu.data.ingest.encoding import decode
from danlu.data.ingest.errors import IngestFailure
from danlu.data.ingest.html import html_to_markdown

CONTAINER = "META-INF/container.xml"
MIMETYPE = b"application/epub+zip"
_DOC_EXT = (".xhtml", ".html", ".htm", ".xht")
_DOC_TYPES = ("application/xhtml+xml", "text/html")
_XML_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*encoding\s*=\s*["']([A-Za-z0-9_\-]+)""")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_\-]+)""", re.I)


def _xml(data: bytes):
    """An lxml tree, recovering from broken markup; None if nothing can be parsed."""
    try:
        return etree.fromstring(data, etree.XMLParser(recover=True, resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError:
        return None


def _find(tree, path: str) -> list:
    """Elements by local names (namespace prefixes vary between books): "manifest/item"."""
    steps = "".join(f"/*[local-name()='{p}']" for p in path.split("/"))
    return tree.xpath("/" + steps) if tree is not None else []


class _Archive:
    def __init__(self, zf: zipfile.ZipFile):
        self.zf = zf
        self.names = [i.filename for i in zf.infolist() if not i.is_dir()]
        self._lower = {}
        for n in self.names:
            self._lower.setdefault(n.lower(), n)

    def lookup(self, name: str) -> str | None:
        """The archive member `name`, matched exactly, else case-insensitively."""
        if name in self.names:
            return name
        return self._lower.get(name.lower())

    def read(self, name: str) -> bytes:
        try:
            return self.zf.read(name)
        except (zipfile.BadZipFile, OSError, RuntimeError, ValueError) as e:  # corrupt member, encrypted, ...
            raise IngestFailure(f"cannot read {name} in the EPUB: {e}") from None


def _locate_opf(ar: _Archive, fallbacks: list[str], issues: list[str]) -> tuple[str | None, str]:
    """(the package file, the folder the book's files sit in: "" at the archive root)."""
    container = ar.lookup(CONTAINER)
    if container is None:
        nested = sorted((n for n in ar.names if n.lower().endswith("/" + CONTAINER.lower())), key=lambda n: n.count("/"))
        if nested:
            container = nested[0]
            fallbacks.append("container_in_subfolder")
            issues.append(f"{CONTAINER} is not at the archive root but at {container}")
    if container is not None:
        base = container[: -len(CONTAINER)]
        for rootfile in _find(_xml(ar.read(container)), "container/rootfiles/rootfile"):
            full = rootfile.get("full-path")
            if not full:
                continue
            found = ar.lookup(posixpath.normpath(base + unquote(full)))
            if found:
                return found, base
            issues.append(f"{container} names {full}, which is not in the archive")
    else:
        issues.append(f"no {CONTAINER}")
    opfs = sorted((n for n in ar.names if n.lower().endswith(".opf")), key=lambda n: (n.count("/"), n))
    if opfs:
        fallbacks.append("opf_search")
        return opfs[0], base if container is not None else ""
    issues.append("no package (.opf) file in the archive")
    return None, base if container is not None else ""


def _spine(ar: _Archive, opf: str, fallbacks: list[str], issues: list[str]) -> tuple[list[str], str]:
    """(archive members of the spine's documents in reading order, title)."""
    tree = _xml(ar.read(opf))
    if tree is None:
        issues.append(f"{opf} is not parseable XML")
        return [], ""
    titles = [t.text.strip() for t in _find(tree, "package/metadata/title") if t.text and t.text.strip()]
    base = posixpath.dirname(opf)
    items = {}
    for item in _find(tree, "package/manifest/item"):
        if item.get("id") and item.get("href"):
            items[item.get("id")] = (item.get("href"), item.get("media-type") or "")
    docs, missing = [], []
    for ref in _find(tree, "package/spine/itemref"):
        entry = items.get(ref.get("idref") or "")
        if entry is None:
            missing.append(f"idref {ref.get('idref')!r} (not in the manifest)")
            continue
        href, media = entry
        target = posixpath.normpath(posixpath.join(base, unquote(href.split("#", 1)[0])))
        found = ar.lookup(target)
        if found is None:
            missing.append(target)
        elif found not in docs and (media in _DOC_TYPES or found.lower().endswith(_DOC_EXT)):
            docs.append(found)
    if missing:
        issues.append(f"spine items not in the archive: {', '.join(missing[:10])}"
                      + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))
        if docs:
            fallbacks.append("spine_partial")
    if not docs:
        issues.append(f"{opf}: the spine names no readable document")
    return docs, titles[0] if titles else ""


def _markdown(data: bytes) -> str:
    m = _XML_ENCODING.match(data[:200]) or _META_CHARSET.search(data[:4096])
    try:
        text, _ = decode(data, hint=m.group(1).decode("ascii") if m else None)
    except IngestFailure:
        return ""  # one unreadable chapter: the others still count
    md, _ = html_to_markdown(text)
    return md


def read_epub(data: bytes, path, opts) -> ReadResult:
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise IngestFailure("not a valid .epub: the file is not a zip archive (corrupt or truncated)")
    try:
        ar = _Archive(zipfile.ZipFile(io.BytesIO(data)))
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise IngestFailure(f"not a valid .epub: {e}") from None
    fallbacks: list[str] = []
    issues: list[str] = []
    opf, folder = _locate_opf(ar, fallbacks, issues)
    mimetype = ar.lookup("mimetype") or ar.lookup(folder + "mimetype")
    if mimetype is None:
        issues.append("no mimetype file")
    elif ar.read(mimetype).strip() != MIMETYPE:
        issues.append(f"mimetype is {ar.read(mimetype)[:60]!r}, not {MIMETYPE.decode()}")
    docs, title = _spine(ar, opf, fallbacks, issues) if opf else ([], "")
    parts = [md for md in map(_markdown, (ar.read(d) for d in docs)) if md]
    if not parts:
        fallbacks.append("archive_order")
        docs = [n for n in ar.names if n.lower().endswith(_DOC_EXT)]
        parts = [md for md in map(_markdown, (ar.read(d) for d in docs)) if md]
    if not parts:
        raise IngestFailure("the EPUB has no text: " + "; ".join(issues + [f"no XHTML/HTML file with text among "
                                                                          f"{len(ar.names)} archive members"]))
    meta: dict = {"chapters": len(parts)}
    if title:
        meta["title"] = title
    if fallbacks or issues:
        meta["recovered"] = {"fallbacks": fallbacks, "issues": issues}
    return ReadResult([Extracted("\n\n".join(parts))], meta)
