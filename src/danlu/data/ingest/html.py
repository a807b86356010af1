"""HTML -> Markdown: drop navigation/scripts/styles with BeautifulSoup, convert the rest with markdownify."""

from __future__ import annotations

import re
import warnings

from bs4 import BeautifulSoup, NavigableString, XMLParsedAsHTMLWarning
from markdownify import MarkdownConverter

from danlu.data.ingest.base import Extracted, ReadResult
from danlu.data.ingest.encoding import decode
from danlu.data.ingest.errors import IngestFailure
from danlu.text import WIDE

# Elements that never carry document content.
_DROP_TAGS = ["script", "style", "noscript", "nav", "header", "footer", "aside", "form", "iframe", "svg",
              "button", "select", "template", "link", "meta", "object", "embed", "canvas", "map"]
_DROP_ROLES = {"navigation", "banner", "contentinfo", "search", "menu", "menubar"}
# class/id tokens used for page chrome by DocBook (navheader/navfooter/toc), publican (banner/docnav), sphinx and
# common sites. Not "sidebar": DocBook uses it for content boxes.
_DROP_CLASSES = {
    "navheader", "navfooter", "nav", "navbar", "navigation", "breadcrumb", "breadcrumbs", "menu", "banner",
    "toc", "list-of-tables", "list-of-figures", "list-of-examples", "skip-link", "skiplink", "cookie-banner",
    "related", "sphinxsidebar", "footer", "site-header", "site-footer", "docnav", "pagination",
}
# DocBook renders admonitions (note/tip/warning) as a 2x2 layout table with an icon column.
_ADMONITIONS = {"note", "tip", "warning", "caution", "important"}
_SOFT_BREAK_CJK = re.compile(rf"(?<=[{WIDE}])[ \t]*\n\s*(?=[{WIDE}])")
_SOFT_BREAK = re.compile(r"[ \t]*\n\s*")
_CHARSET_RE = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_\-]+)""", re.I)


class _Converter(MarkdownConverter):
    """markdownify, minus images: a picture's alt text or URL is not document text for a language model."""

    def convert_img(self, el, text, parent_tags):
        return ""


def _code_language(el) -> str:
    for cls in el.get("class") or []:
        if cls.startswith(("language-", "lang-")):
            return cls.split("-", 1)[1]
    return ""


def _is_chrome(el) -> bool:
    if el.attrs is None:
        return False
    if (el.get("role") or "").lower() in _DROP_ROLES:
        return True
    tokens = {c.lower() for c in (el.get("class") or [])}
    if el.get("id"):
        tokens.add(el["id"].lower())
    return bool(tokens & _DROP_CLASSES)


def _join_soft_breaks(soup) -> None:
    """Source line wraps inside running text are not breaks: CJK joins without a space, everything else with one."""
    for s in soup.find_all(string=True):
        if "\n" not in s or not s.strip() or any(p.name in ("pre", "textarea") for p in s.parents):
            continue
        joined = _SOFT_BREAK.sub(" ", _SOFT_BREAK_CJK.sub("", str(s)))
        s.replace_with(NavigableString(joined))


def _strip_space_after_breaks(soup) -> None:
    """A line after <br> starts with its first character: the newline or blanks after the tag are not text."""
    for br in soup.find_all("br"):
        nxt = br.next_sibling
        if type(nxt) is NavigableString and not any(p.name in ("pre", "textarea") for p in br.parents):
            nxt.replace_with(NavigableString(nxt.lstrip()))


def _flatten_admonitions(soup) -> None:
    """DocBook note/tip/warning layout tables -> a blockquote that starts with the admonition's title."""
    for div in soup.find_all("div", class_=lambda c: c in _ADMONITIONS):
        table = div.find("table")
        if table is None:
            continue
        title = div.find("th")
        label = title.get_text(" ", strip=True) if title else ""
        quote = soup.new_tag("blockquote")
        if label:
            strong = soup.new_tag("strong")
            strong.string = label
            para = soup.new_tag("p")
            para.append(strong)
            quote.append(para)
        for td in table.find_all("td"):
            if td.get_text(strip=True):
                for child in list(td.children):
                    quote.append(child.extract())
        div.replace_with(quote)


def html_to_markdown(html: str) -> tuple[str, str]:
    """(markdown, title) of an HTML document with page chrome removed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
        soup = BeautifulSoup(html, "lxml")
    title = soup.title.get_text(" ", strip=True).replace("\xa0", " ") if soup.title else ""
    for tag in soup.find_all(_DROP_TAGS):
        tag.decompose()
    for el in soup.find_all(_is_chrome):
        el.decompose()
    _flatten_admonitions(soup)
    _join_soft_breaks(soup)
    _strip_space_after_breaks(soup)
    body = soup.body or soup
    md = _Converter(
        heading_style="ATX",
        bullets="-",
        strip=["a"],  # keep link text, drop (mostly relative) targets
        code_language_callback=_code_language,
        escape_asterisks=False,
        escape_underscores=False,
        escape_misc=False,
        table_infer_header=True,
    ).convert_soup(body)
    return tidy_markdown(md), title


def tidy_markdown(md: str) -> str:
    """No-break spaces become spaces (DocBook writes "第\xa01\xa0章"); trailing spaces and runs of blank lines go."""
    lines = [line.rstrip() for line in md.replace("\r\n", "\n").replace("\xa0", " ").split("\n")]
    md = "\n".join(lines)
    md = re.sub(r"\n{3,}", "\n\n", md)
    return md.strip()


def read_html(data: bytes, path, opts) -> ReadResult:
    m = _CHARSET_RE.search(data[:4096])
    text, enc = decode(data, hint=m.group(1).decode("ascii") if m else None)
    md, title = html_to_markdown(text)
    if not md:
        raise IngestFailure("no text content after removing navigation/scripts/styles")
    meta = {"encoding": enc}
    if title:
        meta["title"] = title
    return ReadResult([Extracted(md)], meta)
