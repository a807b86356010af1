"""Normalisers: Unicode form, invisible/control characters, punctuation width, whitespace, Traditional->Simplified.

All of them leave fenced code blocks untouched except `unicode` and `invisible` (a zero-width space in code is
as much a bug as in prose). Whitespace cleaning never joins lines: paragraph breaks, list items, tables and
indentation survive; only runs are collapsed.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Literal

from danlu.data.clean.base import Transform
from danlu.data.clean.markdown import map_outside_code
from danlu.text import HAN as CJK

CJK_PUNCT = r"\u3000-\u303f\uff00-\uffef"


class Unicode(Transform):
    """Unicode normalisation. NFC is the safe default for Chinese: NFKC also turns full-width punctuation
    (，：；) into ASCII, which is a punctuation policy decision (see `punctuation`), not a normalisation."""

    op: Literal["unicode"] = "unicode"
    form: Literal["NFC", "NFKC", "NFD", "NFKD"] = "NFC"

    def apply(self, text: str) -> str:
        if unicodedata.is_normalized(self.form, text):
            return text
        return unicodedata.normalize(self.form, text)


_ZERO_WIDTH = "\u200b\u200c\u2060\ufeff\u00ad\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u180e"
_CONTROL = "\x00-\x08\x0e-\x1f\x7f-\x9f"
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")


class Invisible(Transform):
    """Remove ANSI escape sequences, zero-width and bidi-control characters and C0/C1 control characters (tab
    and newline kept);
    form feed, vertical tab and the Unicode line/paragraph separators become newlines."""

    op: Literal["invisible"] = "invisible"
    keep_zwj: bool = True  # U+200D joins emoji sequences; removing it splits them

    def apply(self, text: str) -> str:
        if "\x1b" in text:  # terminal colour/format codes (ESC [ ... m) go whole, not just their ESC
            text = _ANSI.sub("", text)
        text = re.sub("[\x0b\x0c\u2028\u2029]", "\n", text)
        chars = _ZERO_WIDTH + ("" if self.keep_zwj else "\u200d")
        return _pattern(f"[{chars}{_CONTROL}]").sub("", text)


@functools.lru_cache(maxsize=None)
def _pattern(p: str) -> re.Pattern:
    return re.compile(p)


_FULLWIDTH_ALNUM = re.compile("[\uff10-\uff19\uff21-\uff3a\uff41-\uff5a]")
_FULLWIDTH_ASCII = re.compile("[\uff01-\uff5e]")
_TO_FULL = {",": "，", "!": "！", "?": "？", ":": "：", ";": "；"}


class Punctuation(Transform):
    """Full/half-width policy.

    - keep: only full-width letters and digits become ASCII (if `fullwidth_alnum_to_ascii`).
    - cjk_fullwidth: ASCII , ! ? : ; after a CJK character become ， ！ ？ ： ；, a '.' after CJK that ends a
      sentence becomes 。, and (...) around CJK text becomes （...）; ASCII punctuation in English stays.
    - halfwidth: every full-width ASCII variant (U+FF01-FF5E) and the ideographic space become ASCII.
    """

    op: Literal["punctuation"] = "punctuation"
    policy: Literal["keep", "cjk_fullwidth", "halfwidth"] = "cjk_fullwidth"
    fullwidth_alnum_to_ascii: bool = True

    def apply(self, text: str) -> str:
        return map_outside_code(text, self._apply)

    def _apply(self, text: str) -> str:
        if self.policy == "halfwidth":
            text = _FULLWIDTH_ASCII.sub(lambda m: chr(ord(m.group()) - 0xFEE0), text).replace("\u3000", " ")
        elif self.fullwidth_alnum_to_ascii:
            text = _FULLWIDTH_ALNUM.sub(lambda m: chr(ord(m.group()) - 0xFEE0), text)
        if self.policy == "cjk_fullwidth":
            text = _pattern(f"(?<=[{CJK}])[,!?:;](?=\\s|[{CJK}]|$)").sub(lambda m: _TO_FULL[m.group()], text)
            text = _pattern(f"(?<=[{CJK}])\\.(?=\\s|$)").sub("。", text)
            text = _pattern(f"\\(([^()\\n]*[{CJK}][^()\\n]*)\\)").sub(r"（\1）", text)
        return text


_HSPACE_RUN = re.compile(r"(?<=\S)[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]{2,}(?=\S)")
_TRAILING = re.compile(r"[ \t\u00a0\u3000]+$", re.M)
_BLANK_RUN = re.compile(r"\n(?:[ \t]*\n){2,}")
_KEEP_LINE = re.compile(r"^(?: {4}|\t| {0,3}\|)")  # indented code / nested content, table rows
_LINE_LEAD = re.compile(r"^[ \t\u00a0\u3000]*(?:(?:[-*+:>]|\d{1,9}[.)])[ \t]+)?")  # indent + list/quote marker


class Whitespace(Transform):
    """Collapse whitespace runs without touching structure.

    Outside fenced code: CRLF -> LF; trailing spaces removed; runs of spaces inside a line become one space
    (not in table rows or lines indented 4+ spaces, whose alignment can matter); more than `max_blank_lines`
    blank lines become that many; leading indentation is kept. Blank lines at the start and end are dropped.
    """

    op: Literal["whitespace"] = "whitespace"
    max_blank_lines: int = 1
    collapse_inline_runs: bool = True
    remove_space_between_cjk: bool = False  # PDF extraction artefact "中 文"; off by default (tables use it)

    def apply(self, text: str) -> str:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = map_outside_code(text, self._apply)
        text = re.sub(r"^(?:[ \t]*\n)+", "", text)
        return text.rstrip()

    def _apply(self, text: str) -> str:
        text = _TRAILING.sub("", text)
        if self.collapse_inline_runs:
            text = _collapse_runs(text)
        if self.remove_space_between_cjk:
            text = _pattern(f"(?<=[{CJK}]) (?=[{CJK}])").sub("", text)
        return _BLANK_RUN.sub("\n" * (self.max_blank_lines + 1), text)


def _collapse_runs(text: str) -> str:
    """_collapse_line on every line that has a run, found by one search over the text (a run never spans lines:
    its characters exclude the newline, and the characters around it must not be whitespace), the other lines
    copied as they are."""
    out, pos = [], 0
    for m in _HSPACE_RUN.finditer(text):
        if m.start() < pos:  # another run on a line already collapsed
            continue
        start = text.rfind("\n", 0, m.start()) + 1
        end = text.find("\n", m.end())
        end = len(text) if end < 0 else end
        out += [text[pos:start], _collapse_line(text[start:end])]
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _collapse_line(line: str) -> str:
    """Collapse inner whitespace runs; indentation and the spacing after a list marker (content column) stay."""
    if _KEEP_LINE.match(line) or not _HSPACE_RUN.search(line):
        return line
    lead = _LINE_LEAD.match(line).end()  # type: ignore[union-attr]
    return line[:lead] + _HSPACE_RUN.sub(" ", line[lead:])


@functools.lru_cache(maxsize=8)
def _opencc(config: str):
    import opencc

    return opencc.OpenCC(config)


class TraditionalToSimplified(Transform):
    """Traditional -> Simplified Chinese with OpenCC (`config`: t2s, tw2s, hk2s, tw2sp ...)."""

    op: Literal["t2s"] = "t2s"
    config: str = "t2s"

    def apply(self, text: str) -> str:
        return _opencc(self.config).convert(text)
