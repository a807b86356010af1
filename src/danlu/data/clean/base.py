"""What every cleaning operator is: a strict config model (its YAML parameters) with one method.

- A Transform rewrites text: `apply(text) -> text`. For SFT records it runs on each message's content.
- A Filter judges a record: `judge(text) -> reason or None` (None keeps it). For SFT records `text` is all
  message contents joined by blank lines; `judge_record` can look at the record itself (roles, answers).
  Its `granularity` says what it judges in a long document: "section" (each section on its own, and only the
  failing sections go: see sections.py) or "document" (the whole text: length limits, SFT checks).
"""

from __future__ import annotations

from itertools import compress
from operator import ne
from typing import ClassVar, Literal

from rapidfuzz.distance import Indel, Levenshtein

from danlu.config import StrictModel


class Step(StrictModel):
    kind: ClassVar[str] = ""

    @property
    def name(self) -> str:
        return getattr(self, "op")


class Transform(Step):
    kind: ClassVar[str] = "transform"

    def apply(self, text: str) -> str:
        raise NotImplementedError


class Filter(Step):
    kind: ClassVar[str] = "filter"
    granularity: Literal["section", "document"] = "section"

    def judge(self, text: str) -> str | None:
        raise NotImplementedError

    def judge_record(self, record: dict, text: str) -> str | None:
        return self.judge(text)


EXACT_SPAN = 200_000  # edit distance is exact up to this span (bit-parallel, ~0.1 s at the limit)


def _trimmed_diff(a: str, b: str) -> int:
    """Characters edited between a and b: the edit distance of what differs once the common prefix and suffix
    are removed (one line can hold many edits far apart, e.g. a whole article on one line); beyond EXACT_SPAN
    the span's size, max(removed, inserted), as an upper bound."""
    if max(len(a), len(b)) <= EXACT_SPAN:  # rapidfuzz strips the common prefix and suffix itself, in C
        return Levenshtein.distance(a, b)
    n = min(len(a), len(b))
    p = 0
    while p < n and a[p] == b[p]:
        p += 1
    s = 0
    while s < n - p and a[len(a) - 1 - s] == b[len(b) - 1 - s]:
        s += 1
    mid_a, mid_b = a[p : len(a) - s], b[p : len(b) - s]
    if mid_a and mid_b and max(len(mid_a), len(mid_b)) <= EXACT_SPAN:
        return Levenshtein.distance(mid_a, mid_b)
    return max(len(mid_a), len(mid_b))


def changed_chars(before: str, after: str) -> int:
    """Characters an operator changed: sum over edits of max(chars removed, chars inserted); 0 if unchanged.

    Lines are compared pairwise when the line count is unchanged. Otherwise they are aligned first by their
    non-whitespace content (longest common subsequence, bit-parallel in rapidfuzz; difflib's matcher went
    quadratic on long documents with many blank lines), so lines an operator only re-spaced pair up and one
    edit is never counted as the whole text. Within a changed line the count is its edit distance (see
    _trimmed_diff); lines removed or added between aligned stretches pair up in order, the rest count whole.
    When only blank lines were removed, the count is worked out without the alignment (_blank_lines_removed).
    """
    if before == after:
        return 0
    a, b = before.split("\n"), after.split("\n")
    if len(a) == len(b):
        return _paired_diff(a, b)
    a_content, b_content = ["".join(x.split()) for x in a], ["".join(y.split()) for y in b]
    blanks_only = _blank_lines_removed(a, b, a_content, b_content)
    if blanks_only is not None:
        return blanks_only
    total, gone, new = 0, [], []
    for op in Indel.opcodes(a_content, b_content):
        if op.tag == "equal":
            total += _unaligned(gone, new)
            gone, new = [], []
            total += _paired_diff(a[op.src_start : op.src_end], b[op.dest_start : op.dest_end])
        else:
            gone += a[op.src_start : op.src_end]
            new += b[op.dest_start : op.dest_end]
    return total + _unaligned(gone, new)


def _blank_lines_removed(a: list[str], b: list[str], a_content: list[str], b_content: list[str]) -> int | None:
    """changed_chars when `b` is `a` with blank lines taken out and the blank lines left in `b` are empty (what
    the whitespace step does), without the alignment (0.2 s for a 40,000-line book), else None. Then every
    alignment pairs the k-th non-blank line of `a` with the k-th of `b`, and within a run of blank lines pairing
    one (its length: edits to "") or removing it (its length and a newline) adds up to the same whatever the
    pairing: the run's lengths plus one per line removed."""
    a_lines = [i for i, c in enumerate(a_content) if c]
    b_lines = [j for j, c in enumerate(b_content) if c]
    if len(a_lines) != len(b_lines) or any(b[j] for j, c in enumerate(b_content) if not c):
        return None
    bounds_a, bounds_b = [-1, *a_lines, len(a)], [-1, *b_lines, len(b)]
    if any(nb - pb > na - pa for pa, na, pb, nb in zip(bounds_a, bounds_a[1:], bounds_b, bounds_b[1:])):
        return None  # a run of blank lines that grew
    if [a_content[i] for i in a_lines] != [b_content[j] for j in b_lines]:
        return None  # a line's content changed
    blank_chars = sum(len(x) for x, c in zip(a, a_content) if not c)
    paired = _paired_diff([a[i] for i in a_lines], [b[j] for j in b_lines])
    return paired + blank_chars + (len(a) - len(a_lines)) - (len(b) - len(b_lines))


def _paired_diff(a: list[str], b: list[str]) -> int:
    """Edits between lines paired in order; the unchanged pairs (most of them) are skipped in C, not Python."""
    return sum(_trimmed_diff(x, y) for x, y in compress(zip(a, b), map(ne, a, b)))


def _unaligned(gone: list[str], new: list[str]) -> int:
    """Lines removed and added between two aligned stretches: paired in order, the rest whole with newlines."""
    k = min(len(gone), len(new))
    return (sum(_trimmed_diff(x, y) for x, y in zip(gone[:k], new[:k]))
            + sum(len(line) + 1 for line in gone[k:] + new[k:]))
