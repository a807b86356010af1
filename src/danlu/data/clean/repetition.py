"""Gopher repetition rules (Rae et al. 2021, table A1), measured so that technical text is not mistaken for spam.

- duplicate lines / paragraphs, by count and by characters. Layout lines (table borders, rules: no letter or
  digit) are left out: the text edition of a book repeats `+-------+` in every table.
- the most frequent 2-4-gram: the share of characters its occurrences cover (overlapping occurrences counted
  once, so the share is at most 1; "买买 买买 买买" is covered once, not twice over).
- duplicated 5-10-grams: the share of characters covered by n-grams that occur more than once.
- keyword stuffing (not a Gopher rule): the 3 most frequent content words cover a large share of the
  characters while function words (的 了 是 ..., the of and ...) are scarce. SEO pages that cycle through
  "city + keyword" combinations have no dominant n-gram but a few dominant words and no grammar; prose and
  reference text always have function words, and tables, which have none, rarely have dominant words.

Fenced code and table rows are left out (both repeat lines by nature). Words are whitespace-separated tokens
or 2-character CJK groups (textstats.words). The n-gram thresholds are per script:
Gopher's are for English words; CJK text has its own (`cjk_*`), measured on Chinese reference documentation
and planted spam (benchmarks/bench_filters.py). The n-gram rules need `min_ngram_words` words: on a
100-word man page the name of the command is the top 2-gram by construction.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from typing import Iterator, Literal

import numpy as np
from pydantic import Field

from danlu.data.clean.base import Filter
from danlu.data.clean.markdown import without_code
from danlu.data.clean.textstats import has_alnum, script_of, without_table_rows, words_by_script

_PARA_BREAK = re.compile(r"\n\s*\n")
# Function words: English words, and Chinese characters that are particles, prepositions and conjunctions.
FUNCTION_EN = frozenset(
    "the a an of to and in is are was were be been for on with that this these as by it its or from at not can if "
    "you your we our they their will which when then than there have has do does but".split())
FUNCTION_ZH = frozenset("的了是在和也就都而及与着或被把这那中为以对从到可能会要将并其但则所如等个一")
_FUNCTION_ZH_GROUPS = frozenset(a + b for a in FUNCTION_ZH for b in FUNCTION_ZH) | FUNCTION_ZH  # "的" "是在"


def dup_fraction(units: list[str]) -> tuple[float, float]:
    """(fraction of units that repeat an earlier one, fraction of characters in those repeats): the repeats
    are everything but each distinct unit's first occurrence."""
    distinct = set(units)
    total_chars = sum(map(len, units))
    dup_chars = total_chars - sum(map(len, distinct))
    return (len(units) - len(distinct)) / max(len(units), 1), dup_chars / max(total_chars, 1)


def _ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """A 64-bit polynomial hash of the word ids per word n-gram (collisions are negligible at document sizes)."""
    length = len(ids) - n + 1
    h = ids[:length].astype(np.uint64)
    with np.errstate(over="ignore"):
        for k in range(1, n):
            h = h * np.uint64(0x9E3779B97F4A7C15) + ids[k : k + length].astype(np.uint64)
    return h


def _ngram_ids(ids: np.ndarray, n: int) -> np.ndarray:
    """An integer per word n-gram (equal n-grams get equal integers): the hashes made small by np.unique."""
    return np.unique(_ngram_hashes(ids, n), return_inverse=True)[1].reshape(-1)


def _covered_share(starts: np.ndarray, n: int, lens: np.ndarray, total: int) -> float:
    """Share of characters in the words covered by n-grams starting at `starts` (each word counted once)."""
    delta = np.zeros(len(lens) + 1, dtype=np.int64)
    np.add.at(delta, starts, 1)
    np.add.at(delta, starts + n, -1)
    covered = np.cumsum(delta[:-1]) > 0
    return int(lens[covered].sum()) / total


def top_ngram_share(ids: np.ndarray, lens: np.ndarray, n: int) -> float:
    """Characters covered by the occurrences of the most frequent n-gram (0 if none repeats)."""
    if len(ids) < n:
        return 0.0
    h = _ngram_hashes(ids, n)
    # counts in hash order, as a bincount of _ngram_ids would give them (a tie goes to the smallest hash), without
    # the inverse index np.unique would need a second sort for
    distinct, counts = np.unique(h, return_counts=True)
    top = int(counts.argmax())
    if counts[top] < 2:
        return 0.0
    return _covered_share(np.flatnonzero(h == distinct[top]), n, lens, int(lens.sum()))


def keyword_measures(ws: list[str], cjk: list[str], other: list[str]) -> tuple[float, float]:
    """(share of word characters covered by the 3 most frequent content words, share of function words among
    Latin-script words and CJK characters together: mixed text - Chinese prose around shell commands - is judged
    on both). `cjk` and `other` split `ws` by script (textstats.words_by_script)."""
    lower = _lower_words(other)
    return _keyword_share(ws, cjk, lower), _function_share(cjk, lower)


def _lower_words(other: list[str]) -> list[str]:
    return list(map(str.lower, itertools.filterfalse(str.isdigit, other)))


def _function_share(cjk: list[str], lower: list[str]) -> float:
    chars = "".join(cjk)
    return (sum(map(FUNCTION_EN.__contains__, lower)) + sum(map(FUNCTION_ZH.__contains__, chars))) / max(
        len(lower) + len(chars), 1)


def _keyword_share(ws: list[str], cjk: list[str], lower: list[str]) -> float:
    content = Counter(w for w in lower if len(w) > 1 and w not in FUNCTION_EN)
    content.update(w for w in cjk if w not in _FUNCTION_ZH_GROUPS)
    total = sum(map(len, ws)) or 1
    return sum(n * len(w) for w, n in content.most_common(3)) / total


def dup_ngram_share(ids: np.ndarray, lens: np.ndarray, n: int) -> float:
    """Characters covered by n-grams that occur more than once."""
    if len(ids) < n:
        return 0.0
    grams = _ngram_ids(ids, n)
    dup = np.bincount(grams)[grams] > 1
    if not dup.any():
        return 0.0
    return _covered_share(np.flatnonzero(dup), n, lens, int(lens.sum()))


class Repetition(Filter):
    """Gopher's repetition rules with layout lines left out and per-script n-gram thresholds (module doc)."""

    op: Literal["repetition"] = "repetition"
    max_dup_line_frac: float = 0.3
    max_dup_para_frac: float = 0.3
    max_dup_line_char_frac: float = 0.2
    max_dup_para_char_frac: float = 0.2
    # most frequent n-gram's share of characters / duplicated n-grams' share, for Latin-script words
    max_top_ngram_char_frac: dict[int, float] = Field(default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16})
    max_dup_ngram_char_frac: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10})
    # the same rules for text whose words are mostly CJK 2-character groups, measured on Chinese reference
    # documentation: the top n-gram of clean sections reaches 0.2; duplicated 5-10-grams cover up to half of
    # clean text (p99 0.36) while keyword spam covers 0.15-0.45, so no threshold separates them: off
    cjk_max_top_ngram_char_frac: dict[int, float] = Field(default_factory=lambda: {2: 0.3, 3: 0.3, 4: 0.3})
    cjk_max_dup_ngram_char_frac: dict[int, float] = Field(default_factory=dict)
    # keyword stuffing: top-3 content words' share of characters, when the share of function words is below
    # the second bound (None: off)
    max_keyword_char_frac: float | None = None
    keyword_max_function_frac: float = 0.12
    cjk_max_keyword_char_frac: float | None = None
    cjk_keyword_max_function_frac: float = 0.15
    min_ngram_words: int = Field(0, ge=0)  # fewer words than this: the n-gram and keyword rules do not apply
    ignore_code: bool = True  # fenced code repeats lines legitimately
    ignore_tables: bool = True  # so do tables (rows of the same fields)

    def judge(self, text: str) -> str | None:
        return next(self._violations(text), None)

    def measure(self, text: str) -> dict[str, float | str]:
        """Every measured value (for calibration and review): the rules' inputs, by name."""
        out: dict[str, float | str] = {}
        text = self._prose(text)
        paras, lines = self._units(text)
        out["dup_para_frac"], out["dup_para_char_frac"] = dup_fraction(paras)
        out["dup_line_frac"], out["dup_line_char_frac"] = dup_fraction(lines)
        ws, cjk, other = words_by_script(text)
        out["script"] = script_of(ws, len(cjk))
        out["words"] = len(ws)
        ids, lens = self._ids(ws)
        for n in range(2, 5):
            out[f"top_{n}gram"] = top_ngram_share(ids, lens, n) if len(ws) > 1 else 0.0
        for n in range(5, 11):
            out[f"dup_{n}gram"] = dup_ngram_share(ids, lens, n) if len(ws) > 1 else 0.0
        out["keywords"], out["function_words"] = keyword_measures(ws, cjk, other)
        return out

    def _prose(self, text: str) -> str:
        """The text without fenced code (if ignore_code) and table rows (if ignore_tables)."""
        if self.ignore_code:
            text = without_code(text)
        if self.ignore_tables:
            text = without_table_rows(text)
        return text

    @staticmethod
    def _units(text: str) -> tuple[list[str], list[str]]:
        """Paragraphs and lines, stripped, without layout ones (no letter or digit: textstats.has_alnum), in C loops."""
        paras = list(filter(has_alnum, map(str.strip, _PARA_BREAK.split(text))))
        lines = list(filter(has_alnum, map(str.strip, text.split("\n"))))
        return paras, lines

    @staticmethod
    def _ids(ws: list[str]) -> tuple[np.ndarray, np.ndarray]:
        # each word's id is the number of distinct words before its first occurrence, computed in C loops: the
        # index of the first occurrence (map over setdefault), then its rank (how many first occurrences come
        # before it: a running count, no sort). The ids decide which n-gram wins a tie for the most frequent
        # one, so they stay what a Python loop over a growing vocabulary gave.
        vocab: dict[str, int] = {}
        first = np.fromiter(map(vocab.setdefault, ws, itertools.count()), dtype=np.int64, count=len(ws))
        rank = np.cumsum(first == np.arange(len(ws))) - 1
        ids = rank[first]
        lens = np.fromiter(map(len, ws), dtype=np.int64, count=len(ws))
        return ids, lens

    def _violations(self, text: str) -> Iterator[str]:
        text = self._prose(text)
        paras, lines = self._units(text)
        frac, char_frac = dup_fraction(paras)
        if frac > self.max_dup_para_frac:
            yield f"duplicate paragraphs {frac:.2f} > {self.max_dup_para_frac}"
        if char_frac > self.max_dup_para_char_frac:
            yield f"duplicate paragraph chars {char_frac:.2f} > {self.max_dup_para_char_frac}"
        frac, char_frac = dup_fraction(lines)
        if frac > self.max_dup_line_frac:
            yield f"duplicate lines {frac:.2f} > {self.max_dup_line_frac}"
        if char_frac > self.max_dup_line_char_frac:
            yield f"duplicate line chars {char_frac:.2f} > {self.max_dup_line_char_frac}"
        ws, cjk, other = words_by_script(text)
        if len(ws) < max(2, self.min_ngram_words):
            return
        script = script_of(ws, len(cjk))
        top, dup = ((self.cjk_max_top_ngram_char_frac, self.cjk_max_dup_ngram_char_frac) if script == "cjk"
                    else (self.max_top_ngram_char_frac, self.max_dup_ngram_char_frac))
        ids, lens = self._ids(ws)
        for n, bound in sorted(top.items()):
            share = top_ngram_share(ids, lens, n)
            if share > bound:
                yield f"top {n}-gram covers {share:.2f} of chars > {bound} ({script})"
        for n, bound in sorted(dup.items()):
            share = dup_ngram_share(ids, lens, n)
            if share > bound:
                yield f"duplicated {n}-grams cover {share:.2f} of chars > {bound} ({script})"
        bound, fbound = ((self.cjk_max_keyword_char_frac, self.cjk_keyword_max_function_frac) if script == "cjk"
                         else (self.max_keyword_char_frac, self.keyword_max_function_frac))
        if bound is not None:  # the keyword count only when function words are scarce (prose never is)
            lower = _lower_words(other)
            function = _function_share(cjk, lower)
            if function < fbound and (share := _keyword_share(ws, cjk, lower)) > bound:
                yield (f"keyword stuffing: top 3 words cover {share:.2f} of chars > {bound}, function words "
                       f"{function:.3f} < {fbound} ({script})")
