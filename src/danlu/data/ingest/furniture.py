"""Page text -> running text: drop page furniture (running headers/footers, page numbers) and rejoin the lines
PDF layout broke into paragraphs.

No maintained library does this for arbitrary PDFs with CJK text (pdfplumber/pypdf give lines, not
paragraphs), so it is a small set of geometric rules over lines with their boxes:
- furniture: a line in the top/bottom band of the page, set apart from the body by a gap, whose text with
  numbers removed repeats on several pages; or a bare page number ("12", "xiv", "- 3 -", "12 / 223", "第 3 页",
  "Page 3 of 9") there.
- paragraphs: a line that reaches the right margin continues in the next line (CJK joins without a space,
  Latin with one); a short line ends its line; a vertical gap wider than the usual line pitch ends a paragraph.
- headings: short lines set in a font clearly larger than the body text; the largest size is level 1.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from dataclasses import dataclass

from danlu.text import join_separator

EDGE_BAND = 0.1  # fraction of the page height at top and bottom where running headers/footers live
EDGE_LINES = 3  # how many lines from each edge can be furniture


@dataclass
class Line:
    """One text line with its box in top-down page coordinates (top < bottom)."""

    text: str
    left: float
    right: float
    top: float
    bottom: float
    size: float = 0.0  # font size in points (0: unknown, e.g. OCR)


_NUM = re.compile(r"\d+")
_ROMAN = re.compile(r"(?<![A-Za-z])[ivxlcdmIVXLCDM]{1,7}(?![A-Za-z])")
_PAGE_NUMBER = re.compile(
    r"^[\s\-–—·•|]*(?:(?:page|p\.|seite|页)\s*)?(?:\d+|[ivxlcdm]{1,7})(?:\s*(?:/|of|de|von)\s*\d+)?[\s\-–—·•|]*$"
    r"|^\s*第\s*\d+\s*页(?:\s*[/，,]?\s*共\s*\d+\s*页)?\s*$",
    re.I,
)
_LEADER = re.compile(r"(?:\s*\.){4,}\s*\d+\s*$")  # table-of-contents dot leaders and the page number after them


_FURNITURE_NOISE = re.compile(r"[\s/|·•\-–—.,:]+")


def _mask(text: str) -> str:
    """The line with its numbers (arabic or roman) and separators removed: "Doc 13 / 223" and "Doc xiv" match."""
    return _FURNITURE_NOISE.sub("", _ROMAN.sub("", _NUM.sub("", text)))


def is_page_number(text: str) -> bool:
    return bool(_PAGE_NUMBER.match(text.strip()))


def _edge_lines(lines: list[Line], height: float) -> list[int]:
    """Indexes of the lines that can be running headers/footers: up to EDGE_LINES lines at the top (bottom)
    edge, inside the edge band, set apart from the body by a gap of at least 1.5 line heights. By position,
    not by text order: generators often write footers before the body."""
    if len(lines) < 2:
        return list(range(len(lines)))
    sizes = sorted(ln.bottom - ln.top for ln in lines)
    gap_needed = 1.5 * max(sizes[len(sizes) // 2], 1.0)
    order = sorted(range(len(lines)), key=lambda i: lines[i].top)
    found: list[int] = []
    for stack in (order, order[::-1]):
        for k in range(min(EDGE_LINES, len(stack) - 1)):
            here, nxt = lines[stack[k]], lines[stack[k + 1]]
            in_band = here.top <= height * EDGE_BAND if stack is order else here.bottom >= height * (1 - EDGE_BAND)
            if not in_band:
                break
            gap = nxt.top - here.bottom if stack is order else here.top - nxt.bottom
            if gap >= gap_needed:
                found.extend(stack[: k + 1])
                break
    return sorted(set(found))


def remove_furniture(pages: list[list[Line]], heights: list[float], min_repeats: int = 3) -> list[list[Line]]:
    """Pages with repeated headers/footers and page numbers removed. Lines must be in reading order."""
    edges = [_edge_lines(lines, h) for lines, h in zip(pages, heights)]
    seen: Counter[str] = Counter()
    for lines, idx in zip(pages, edges):
        seen.update({_mask(lines[i].text) or "#" for i in idx})
    threshold = min_repeats
    out = []
    for lines, idx in zip(pages, edges):
        drop = {i for i in idx if is_page_number(lines[i].text) or seen[_mask(lines[i].text) or "#"] >= threshold}
        out.append([ln for i, ln in enumerate(lines) if i not in drop])
    return out


_BULLETS = {"•": "- ", "●": "- ", "▪": "- ", "■": "- ", "◦": "  - ", "○": "  - ", "–": "  - ", "‣": "  - "}


def _bullet(text: str) -> str:
    """A line that starts with a bullet glyph becomes a Markdown list item (hollow/dash glyphs: second level)."""
    if len(text) > 1 and text[0] in _BULLETS and (text[1] in " \u3000" or text[0] in "•●▪■"):
        return _BULLETS[text[0]] + text[2:].lstrip()
    return text


def heading_levels(pages: list[list[Line]], max_level: int = 4) -> dict[float, int]:
    """Font sizes (rounded to 0.5pt) used for headings -> Markdown level. The body size is the one most
    characters are set in; sizes at least 15% larger that set little text are heading sizes."""
    chars: Counter[float] = Counter()
    for lines in pages:
        for ln in lines:
            if ln.size > 0:
                chars[round(ln.size * 2) / 2] += len(ln.text)
    if not chars:
        return {}
    body = chars.most_common(1)[0][0]
    total = sum(chars.values())
    sizes = sorted((s for s, n in chars.items() if s >= body * 1.15 and n <= 0.1 * total), reverse=True)
    return {s: min(i + 1, max_level) for i, s in enumerate(sizes)}


def join_paragraphs(lines: list[Line], headings: dict[float, int] | None = None) -> str:
    """Rejoin one page's (furniture-free) lines into paragraphs separated by blank lines; lines in a heading
    size (see heading_levels) become Markdown headings."""
    lines = [ln for ln in lines if ln.text.strip()]
    if not lines:
        return ""
    headings = headings or {}
    right_margin = max(ln.right for ln in lines)
    heights = [ln.bottom - ln.top for ln in lines if ln.bottom > ln.top]
    char = statistics.median(heights) if heights else 10.0
    pitches = [b.top - a.top for a, b in zip(lines, lines[1:]) if b.top > a.top]
    pitch = statistics.median(pitches) if pitches else char * 1.2
    # A table-of-contents entry loses its dot leader and page number, and then ends its line.
    toc_entry = [bool(_LEADER.search(ln.text)) for ln in lines]
    level = [headings.get(round(ln.size * 2) / 2, 0) if len(ln.text) <= 120 else 0 for ln in lines]
    plain = [_LEADER.sub("", ln.text).strip() for ln in lines]
    texts = [_bullet(t) for t in plain]
    is_item = [a != b for a, b in zip(texts, plain)]
    out = [("#" * level[0] + " " if level[0] else "") + texts[0]]
    for k in range(1, len(lines)):
        prev, ln, text = lines[k - 1], lines[k], texts[k]
        gap = ln.top - prev.top
        wrapped = prev.right >= right_margin - 3 * char and 0 <= gap <= pitch * 2
        if level[k] and level[k] == level[k - 1] and wrapped:  # a long heading that wrapped onto a second line
            out.append(join_separator(out[-1], text) + text)
        elif level[k] or level[k - 1]:
            out.append("\n\n" + ("#" * level[k] + " " if level[k] else "") + text)
        elif gap > pitch * 1.45 or gap < 0:  # a wide gap (or a jump back up: a new column) ends the paragraph
            out.append("\n\n" + text)
        elif is_item[k]:  # a list item starts a new line
            out.append("\n" + text)
        elif not toc_entry[k - 1] and prev.right >= right_margin - 1.5 * char:  # ran to the margin: goes on
            out.append(join_separator(out[-1], text) + text)
        else:
            out.append("\n" + text)
    return "".join(out)
