"""What every cleaning operator is: a strict config model (its YAML parameters) with one method.

- A Transform rewrites text: `apply(text) -> text`. For SFT records it runs on each message's content.
- A Filter judges a record: `judge(text) -> reason or None` (None keeps it). For SFT records `text` is all
  message contents joined by blank lines; `judge_record` can look at the record itself (roles, answers).
"""

from __future__ import annotations

import difflib
from typing import ClassVar

from rapidfuzz.distance import Levenshtein

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

    def judge(self, text: str) -> str | None:
        raise NotImplementedError

    def judge_record(self, record: dict, text: str) -> str | None:
        return self.judge(text)


EXACT_SPAN = 200_000  # edit distance is exact up to this span (bit-parallel, ~0.1 s at the limit)


def _trimmed_diff(a: str, b: str) -> int:
    """Characters edited between a and b: the edit distance of what differs once the common prefix and suffix
    are removed (one line can hold many edits far apart, e.g. a whole article on one line); beyond EXACT_SPAN
    the span's size, max(removed, inserted), as an upper bound."""
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

    Linear-ish: lines are compared pairwise when the line count is unchanged, else aligned with difflib's
    line matcher first, so one edit is not counted as the whole text; within changed lines it is their edit
    distance (see _trimmed_diff).
    """
    if before == after:
        return 0
    a, b = before.split("\n"), after.split("\n")
    if len(a) == len(b):
        return sum(_trimmed_diff(x, y) for x, y in zip(a, b) if x != y)
    total = 0
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b).get_opcodes():
        if tag == "equal":
            continue
        if tag == "replace" and i2 - i1 == j2 - j1:
            total += sum(_trimmed_diff(x, y) for x, y in zip(a[i1:i2], b[j1:j2]) if x != y)
        else:  # whole lines inserted/removed count with their newlines
            total += _trimmed_diff("\n".join(a[i1:i2]) + "\n" * (i2 - i1 > 0), "\n".join(b[j1:j2]) + "\n" * (j2 - j1 > 0))
    return total
