"""Sections of a long document: the units the quality filters judge, so a local defect costs that part only.

Gopher-style rules were calibrated on web pages of a few KB; applied to a whole book, one repetitive table or
one garbled chapter decides the fate of 500,000 characters of good text. A document longer than
`long_doc_chars` is therefore cut into sections of roughly web-page size and each is judged on its own.

The cut follows the Markdown block structure (danlu.data.clean.markdown): a new section starts at every
heading (Markdown, or a plain-text heading: an underlined title, a numbered title, an all-caps man page
section name), at any block once the current one has `target_chars`, and before a block that would take it past
`max_chars` (a single block longer than that is cut at line ends). Runs of sections shorter than `min_chars`
are merged (a man page's NAME and SYNOPSIS), and a very short one joins the section before it: statistics
over a few lines say little. Sections tile the text exactly
(each ends where the next begins, trailing blank lines included), so removing some and joining the others
gives back the rest of the document byte for byte.
"""

from __future__ import annotations

import re

from pydantic import Field, model_validator

from danlu.config import StrictModel
from danlu.data.clean.markdown import blocks


# Plain text has headings too: setext underlines (Title / =====), numbered titles (2.3 Mounting, 第3章 网络),
# and the all-caps section names of rendered man pages (DESCRIPTION).
_UNDERLINE = re.compile(r"^\s*(?:={3,}|-{3,}|~{3,}|\^{3,}|\*{3,})\s*$")
_NUMBERED = re.compile(r"^\s*(?:\d{1,3}(?:\.\d{1,3})*\.?|chapter \d+|part [ivx\d]+|第[一二三四五六七八九十百\d]+[章节部篇])\s+\S", re.I)
_SENTENCE_END = re.compile(r"[。！？.!?;；:：,，]$")


def _is_heading(text: str, b) -> bool:
    if b.kind == "heading":
        return True
    if b.kind != "paragraph":
        return False
    lines = text[b.start : b.end].split("\n", 2)  # up to 3: the rules only ask for one line or two
    if len(lines) == 2 and _UNDERLINE.match(lines[1]) and 0 < len(lines[0].strip()) <= 100:
        return True
    line = lines[0].strip()
    return (len(lines) == 1 and len(line) <= 80 and not _SENTENCE_END.search(line)
            and (_NUMBERED.match(line) is not None or (line.isupper() and len(line) <= 40)))


class SectionOptions(StrictModel):
    long_doc_chars: int = Field(20_000, ge=1)  # documents at least this long are judged section by section
    min_chars: int = Field(400, ge=1)  # a heading starts a new section once the current one is this long
    target_chars: int = Field(3_000, ge=1)  # any block starts a new section once the current one is this long
    max_chars: int = Field(8_000, ge=1)  # no section grows past this (one long block is cut at line ends)

    @model_validator(mode="after")
    def _ordered(self) -> "SectionOptions":
        if not self.min_chars <= self.target_chars <= self.max_chars:
            raise ValueError(f"need min_chars <= target_chars <= max_chars, got {self.min_chars}, "
                             f"{self.target_chars}, {self.max_chars}")
        return self


def section_spans(text: str, opts: SectionOptions) -> list[tuple[int, int]]:
    """(start, end) of each section; they tile [0, len(text)) in order."""
    bl = blocks(text)
    # 1. a cut at every heading; within a section, at a block once `target_chars` is reached or before one that
    #    would pass `max_chars`
    cuts = [0]
    for b in bl[1:]:
        size = b.start - cuts[-1]
        if _is_heading(text, b) or size >= opts.target_chars or (size > 0 and size + (b.end - b.start) > opts.max_chars):
            cuts.append(b.start)
    spans = list(zip(cuts, cuts[1:] + [len(text)]))
    # 2. consecutive sections shorter than `min_chars` are merged (NAME + SYNOPSIS of a man page); a short one
    #    left between two long ones joins the one before it if it is under half of that
    merged: list[list[int]] = []
    for s, e in spans:
        short = e - s < opts.min_chars
        if merged and short and merged[-1][2] and merged[-1][1] - merged[-1][0] < opts.min_chars:
            merged[-1][1] = e
        elif merged and short and e - s < opts.min_chars // 2:
            merged[-1][1] = e
        else:
            merged.append([s, e, short])
    out: list[tuple[int, int]] = []
    for s, e, _ in merged:
        out.extend(_split_lines(text, s, e, opts.max_chars) if e - s > opts.max_chars else [(s, e)])
    return out


def _split_lines(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """Cut text[start:end] after newlines into pieces of at most max_chars (a longer line stays whole)."""
    out, s = [], start
    while end - s > max_chars:
        cut = text.rfind("\n", s, s + max_chars)
        if cut < 0:  # one line longer than max_chars: up to its end
            cut = text.find("\n", s + max_chars, end)
            if cut < 0:
                break
        out.append((s, cut + 1))
        s = cut + 1
    out.append((s, end))
    return out
