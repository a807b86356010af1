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


# The lines blocks() has to look at: a fence, an ATX heading, a blank line (only whitespace, as str.strip sees
# it). Every other line opens or continues a paragraph, so the paragraphs between these lines are taken whole
# instead of line by line (most of the cost on long documents).
# Searched for as a newline followed by such a line: a pattern that starts with a literal is scanned for in C
# at memchr speed, one that starts with ^ is tried at every position.
_BREAK = r"(?: {0,3}(?:`{3,}|~{3,}|#{1,6}(?=[ \t]|$))|[^\S\n]*$)"
_BREAK_LINE = re.compile(_BREAK, re.M)
_NEXT_BREAK_LINE = re.compile("\n" + _BREAK, re.M)


def blocks(text: str) -> list[Block]:
    """Split Markdown (or plain text) into blocks; the text between consecutive blocks is only whitespace."""
    out: list[Block] = []
    n = len(text)
    pos = 0  # start of the first line not yet in a block or known to be blank
    while pos <= n:
        if _BREAK_LINE.match(text, pos):
            start = pos
        elif (m := _NEXT_BREAK_LINE.search(text, pos)) is not None:
            start = m.start() + 1
        else:
            break
        if start > pos:  # the lines in between form one paragraph (it ends before the newline of its last line)
            out.append(_paragraph(text, pos, start - 1))
        end = text.find("\n", start)
        end = n if end < 0 else end
        line = text[start:end]
        fence = _FENCE.match(line)
        if fence:
            marker = fence.group(1)
            close = re.compile(rf"^ {{0,3}}{re.escape(marker[0])}{{{len(marker)},}}[ \t]*$", re.M)
            closing = close.search(text, end + 1) if end < n else None
            end = closing.end() if closing is not None else n  # an unclosed fence runs to the end of the text
            out.append(Block("code", start, end))
        elif (heading := _HEADING.match(line)) is not None:
            out.append(Block("heading", start, end, level=len(heading.group(1)), title=heading.group(2).strip()))
        pos = end + 1
    if pos <= n:  # the last lines, up to the end of the text
        out.append(_paragraph(text, pos, n))
    return out


def _paragraph(text: str, start: int, end: int) -> Block:
    """A run of lines that are neither blank, nor fences, nor headings: a table, a list or a paragraph, as its first
    line says."""
    newline = text.find("\n", start, end)
    first = text[start : end if newline < 0 else newline]
    kind = "table" if _TABLE_ROW.match(first) else "list" if _LIST_ITEM.match(first) else "paragraph"
    return Block(kind, start, end)


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


@functools.lru_cache(maxsize=4096)
def without_code(text: str) -> str:
    """The text with its fenced code blocks cut out: what the prose filters (character ratios, boilerplate,
    repetition, language) judge. Cached: those filters judge the same texts, and the clean stage runs each filter
    over a whole batch (up to 2,048 records and their sections) before the next, so the cache holds a batch."""
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
