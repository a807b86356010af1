"""How close two extractions of the same document are: used by the benchmark and the real-corpus tests.

- cjk_similarity: Dice coefficient of the multisets of CJK characters (unigrams) and of adjacent CJK
  character pairs (bigrams, which also see local order). Layout differences (spaces, line breaks, Markdown
  marks, Latin punctuation) do not count; missing or extra Chinese text does.
- cer: character error rate (edit distance / reference length) after NFKC and removing whitespace, so
  full-width vs half-width forms and line breaks are not errors.
"""

from __future__ import annotations

import unicodedata
from collections import Counter

from danlu.text import HAN_CHAR


def cjk_chars(text: str) -> list[str]:
    return HAN_CHAR.findall(text)


def _dice(a: Counter, b: Counter) -> float:
    total = sum(a.values()) + sum(b.values())
    return 2 * sum((a & b).values()) / total if total else 1.0


def cjk_similarity(reference: str, candidate: str) -> dict[str, float]:
    ra, ca = cjk_chars(reference), cjk_chars(candidate)
    return {
        "unigram": _dice(Counter(ra), Counter(ca)),
        "bigram": _dice(Counter(zip(ra, ra[1:])), Counter(zip(ca, ca[1:]))),
    }


def _normalise(text: str) -> str:
    return "".join(unicodedata.normalize("NFKC", text).split())


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def cer(reference: str, hypothesis: str) -> float:
    ref, hyp = _normalise(reference), _normalise(hypothesis)
    return edit_distance(ref, hyp) / max(1, len(ref))
