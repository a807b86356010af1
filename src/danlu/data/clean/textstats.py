"""Text measures the quality filters share: character classes, "words", the script a text is written in, and
layout lines (table borders, rules) that are formatting rather than content.

The script matters because thresholds measured on English words do not carry over to Chinese: a CJK "word"
here is a 2-character group, and Chinese prose repeats 2-character groups far more often than English prose
repeats words. Filters with word-based rules keep one threshold set per script (see repetition.py).
"""

from __future__ import annotations

import functools
import itertools
import re

import numpy as np

from danlu.text import HAN as CJK

# "Words" for the word-based rules, as Gopher counts them: whitespace-separated tokens (with punctuation at
# their edges stripped), so a path, a URL or an option like --container is one word, not four; CJK text (no
# spaces) is cut into 2-character groups (Chinese words average ~1.5-2 characters; single characters would
# make the n-gram rules fire on ordinary Chinese prose). A segmenter (jieba) would be closer but adds a
# dependency and ~10x the time for rules that only need comparable n-gram lengths.
_EDGE = "*_`~#\\[\\](){}<>\"'“”‘’«»,.;:!?，。；：！？、（）【】《》「」『』…\\-=|/\\\\"
# a CJK group, or a token that starts and ends with a non-edge character (edge punctuation stripped)
_WORDY = rf"[^\s{CJK}{_EDGE}](?:[^\s{CJK}]*[^\s{CJK}{_EDGE}])?"
_TOKEN = re.compile(rf"[{CJK}]{{1,2}}|{_WORDY}")
_TOKEN_BY_SCRIPT = re.compile(rf"([{CJK}]{{1,2}})|({_WORDY})")
_CJK_CHAR = re.compile(f"[{CJK}]")
SPACE, LETTER, DIGIT, OTHER, CJK_CLS, NONSPACE = 0, 1, 2, 3, 4, 5
_ALNUM = re.compile(r"[^\W_]", re.UNICODE)
# A row of a table: Markdown (| a | b |), box drawing (│ a │ b │) or a text table (columns set apart by a tab
# or a run of 3+ spaces; prose never has one between two words).
_TABLE_ROW = re.compile(r"^\s*[|│┃║]|\S(?:\t| {3,})\s*\S")
# Whole lines without a letter or digit (layout lines: see has_alnum), for removing them from a text in one pass.
LAYOUT_LINES = re.compile(r"^[\W_]*$\n?", re.MULTILINE)
# Runs of 4+ leader or rule characters: dot leaders of a table of contents, underlines, rules.
LEADER_RUN = re.compile(r"([.\-_=*~·•…─━])\1{3,}")
# A line with no letter or digit is layout: a table border (+----+, |---|, ├──┤), a rule (-----, ****), a lone
# list marker. Such lines repeat in every table of a book; they are formatting, not repeated content. has_alnum
# is the test for content lines, a bound regex method that filter() over many lines calls from C.
has_alnum = _ALNUM.search
_TABLE_MARKS = ("\t", "   ", "|", "│", "┃", "║")  # a table row has one of these (_TABLE_ROW)


@functools.lru_cache(maxsize=1)
def _bmp_classes() -> np.ndarray:
    """Character class of every BMP code point (space, letter, digit, other; CJK ideographs get their own)."""
    table = np.full(0x10000, OTHER, dtype=np.uint8)
    for cp in range(0x10000):
        c = chr(cp)
        if c.isspace():
            table[cp] = SPACE
        elif c.isalpha():
            table[cp] = CJK_CLS if _CJK_CHAR.match(c) else LETTER
        elif c.isdigit():
            table[cp] = DIGIT
    return table


def class_counts(text: str) -> np.ndarray:
    """[spaces, letters (incl. CJK), digits, other, CJK, non-space] counts, vectorised over code points."""
    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    astral = cps > 0xFFFF  # beyond the BMP: CJK extension planes count as CJK, the rest as symbols
    cls = _bmp_classes()[np.where(astral, 0, cps)]
    cls[astral] = np.where((cps[astral] >= 0x20000) & (cps[astral] < 0x32000), CJK_CLS, OTHER)
    c = np.bincount(cls, minlength=5)[:5]
    return np.array([c[0], c[1] + c[4], c[2], c[3], c[4], len(cps) - c[0]])


def words(text: str) -> list[str]:
    return [t for t in _TOKEN.findall(text) if t[0] >= "\u3400" or t.isalnum() or _ALNUM.search(t)]


def words_by_script(text: str) -> tuple[list[str], list[str], list[str]]:
    """(words in order, the CJK groups among them, the other words): `words` with each word's script."""
    ordered, cjk, other = [], [], []
    for c, w in _TOKEN_BY_SCRIPT.findall(text):
        if c:
            ordered.append(c)
            cjk.append(c)
        elif w.isalnum() or _ALNUM.search(w):
            ordered.append(w)
            other.append(w)
    return ordered, cjk, other


def is_cjk_word(w: str) -> bool:
    """A CJK group from `words` (they start with an ideograph; other tokens with anything but one)."""
    return "\u3400" <= w[0] <= "\u9fff" or "\uf900" <= w[0] <= "\ufaff" or w[0] >= "\U00020000"


def script_of(word_list: list[str], cjk: int | None = None) -> str:
    """"cjk" when most words are CJK groups, else "latin" (any alphabetic script): which threshold set applies.
    `cjk`: the number of CJK groups, when the caller has it (words_by_script)."""
    if not word_list:
        return "latin"
    if cjk is None:
        cjk = sum(map(is_cjk_word, word_list))
    return "cjk" if 2 * cjk >= len(word_list) else "latin"


def without_table_rows(text: str) -> str:
    """The text without its table rows (_TABLE_ROW). Tables repeat rows by nature (the same field in every request
    of a protocol spec, the same value down a column), so the repetition rules leave them out, as they leave out
    code. Most prose has no tab, no run of three spaces and no bar: then no line can be a row, and the search
    line by line is skipped."""
    if not any(map(text.__contains__, _TABLE_MARKS)):
        return text
    return "\n".join(itertools.filterfalse(_TABLE_ROW.search, text.split("\n")))
