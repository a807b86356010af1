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
    """
    if before == after:
        return 0
    a, b = before.split("\n"), after.split("\n")
    if len(a) == len(b):
        return _paired_diff(a, b)
    total, gone, new = 0, [], []
    for op in Indel.opcodes(["".join(x.split()) for x in a], ["".join(y.split()) for y in b]):
        if op.tag == "equal":
            total += _unaligned(gone, new)
            gone, new = [], []
            total += _paired_diff(a[op.src_start : op.src_end], b[op.dest_start : op.dest_end])
        else:
            gone += a[op.src_start : op.src_end]
            new += b[op.dest_start : op.dest_end]
    return total + _unaligned(gone, new)


def _paired_diff(a: list[str], b: list[str]) -> int:
    """Edits between lines paired in order; the unchanged pairs (most of them) are skipped in C, not Python."""
    return sum(_trimmed_diff(x, y) for x, y in compress(zip(a, b), map(ne, a, b)))


def _unaligned(gone: list[str], new: list[str]) -> int:
    """Lines removed and added between two aligned stretches: paired in order, the rest whole with newlines."""
    k = min(len(gone), len(new))
    return (sum(_trimmed_diff(x, y) for x, y in zip(gone[:k], new[:k]))
            + sum(len(line) + 1 for line in gone[k:] + new[k:]))
