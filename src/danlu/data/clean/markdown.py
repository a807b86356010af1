"""Markdown block structure, as character spans of the original text.

Cleaning (to leave code blocks and tables alone) and chunking (to cut only between units) both need to know
where paragraphs, lists, tables, fenced code blocks and headings start and end. A full Markdown parser
(markdown-it, mistune) gives a token tree but not exact source spans for every block, and we need spans so that
slices of the original text can be reassembled exactly; the block grammar we need is small, so it lives here.
"""

from __future__ import annotations

import functools

import re
from dataclasses import dataclass

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+|$)(.*?)[ \t#]*$")
_TABLE_ROW = re.compile(r"^ {0,3}\|")
_LIST_ITEM = re.compile(r"^ {0,3}(?:[-*+]|\d{1,9}[.)])[ \t]")


@dataclass(frozen=True)
class Block:
    """One block: `text[start:end]` (no trailing newline); `kind` is heading, code, table, list or paragraph."""

    kind: str
    start: int
    end: int
    level: int = 0  # heading level (1-6), 0 otherwise
    title: str = ""  # heading text without the #s


def _lines(text: str) -> list[tuple[int, int]]:
    """(start, end) of every line, end excluding the newline."""
    spans, pos = [], 0
    for line in text.split("\n"):
        spans.append((pos, pos + len(line)))
        pos += len(line) + 1
    return spans


def blocks(text: str) -> list[Block]:
    """Split Markdown (or plain text) into blocks; the text between consecutive blocks is only whitespace."""
    out: list[Block] = []
    lines = _lines(text)
    i, n = 0, len(lines)
    para_start = -1  # index of the first line of the open paragraph, -1 if none

    def close_paragraph(last: int) -> None:
        nonlocal para_start
        if para_start < 0:
            return
        first_line = text[lines[para_start][0] : lines[para_start][1]]
        kind = "table" if _TABLE_ROW.match(first_line) else "list" if _LIST_ITEM.match(first_line) else "paragraph"
        out.append(Block(kind, lines[para_start][0], lines[last][1]))
        para_start = -1

    while i < n:
        s, e = lines[i]
        line = text[s:e]
        fence = _FENCE.match(line)
        if fence:
            close_paragraph(i - 1)
            marker = fence.group(1)
            j = i + 1
            close = re.compile(rf"^ {{0,3}}{re.escape(marker[0])}{{{len(marker)},}}[ \t]*$")
            while j < n and not close.match(text[lines[j][0] : lines[j][1]]):
                j += 1
            last = min(j, n - 1)  # an unclosed fence runs to the end of the text
            out.append(Block("code", s, lines[last][1]))
            i = last + 1
            continue
        heading = _HEADING.match(line)
        if heading:
            close_paragraph(i - 1)
            out.append(Block("heading", s, e, level=len(heading.group(1)), title=heading.group(2).strip()))
        elif not line.strip():
            close_paragraph(i - 1)
        elif para_start < 0:
            para_start = i
        i += 1
    close_paragraph(n - 1)
    return out


_FENCE_LINE = re.compile(r"^ {0,3}(`{3,}|~{3,})", re.MULTILINE)


def code_spans(text: str) -> list[tuple[int, int]]:
    """Spans of fenced code blocks (cleaners leave these byte-for-byte alone): the code blocks of `blocks`,
    found by scanning for fence lines only (the normalisers and prose filters call this on every text; parsing
    every paragraph and heading for it was most of their cost)."""
    if "```" not in text and "~~~" not in text:
        return []
    spans, pos = [], 0
    while (opening := _FENCE_LINE.search(text, pos)) is not None:
        marker = opening.group(1)
        close = re.compile(rf"^ {{0,3}}{re.escape(marker[0])}{{{len(marker)},}}[ \t]*$", re.MULTILINE)
        line_end = text.find("\n", opening.end())
        closing = close.search(text, line_end + 1) if line_end >= 0 else None
        end = closing.end() if closing is not None else len(text)  # an unclosed fence runs to the end
        spans.append((opening.start(), end))
        pos = end + 1
    return spans


@functools.lru_cache(maxsize=512)
def without_code(text: str) -> str:
    """The text with its fenced code blocks cut out: what the prose filters (character ratios, boilerplate,
    repetition, language) judge. Cached: those filters judge the same texts (a document, or each of a long
    document's sections in turn) one after another, and parsing the blocks is most of a short filter's cost."""
    for s, e in reversed(code_spans(text)):
        text = text[:s] + text[e:]
    return text


def map_outside_code(text: str, fn) -> str:
    """Apply `fn` to the text outside fenced code blocks, leaving the code blocks unchanged."""
    spans = code_spans(text)
    if not spans:
        return fn(text)
    parts, pos = [], 0
    for s, e in spans:
        parts.append(fn(text[pos:s]))
        parts.append(text[s:e])
        pos = e
    parts.append(fn(text[pos:]))
    return "".join(parts)
