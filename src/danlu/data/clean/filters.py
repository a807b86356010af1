"""Quality filters: length, character-class ratios, user bad-word lists, SFT answers (repetition, mojibake and
boilerplate have their own modules).

Each filter returns a short reason naming the rule and the measured value, so rejects explain themselves.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr

from danlu.data.clean.base import Filter
from danlu.data.clean.markdown import without_code
from danlu.data.clean.textstats import CJK_CLS, DIGIT, LAYOUT_LINES, LEADER_RUN, LETTER, NONSPACE, class_counts, words


class Length(Filter):
    """Keep records whose length (characters excluding whitespace, or words) lies in [min, max]. Judged on the
    whole document: a long document's sections are short by construction."""

    op: Literal["length"] = "length"
    granularity: Literal["section", "document"] = "document"
    min_chars: int = 0
    max_chars: int | None = None
    min_words: int = 0  # words as in the repetition rules: an English word or two CJK characters

    def judge(self, text: str) -> str | None:
        n = int(class_counts(text)[NONSPACE]) if self.min_chars or self.max_chars else 0
        if n < self.min_chars:
            return f"too short: {n} chars < {self.min_chars}"
        if self.max_chars is not None and n > self.max_chars:
            return f"too long: {n} chars > {self.max_chars}"
        if self.min_words:
            w = len(words(text))
            if w < self.min_words:
                return f"too few words: {w} < {self.min_words}"
        return None


class CharRatio(Filter):
    """Character-class ratios over non-whitespace characters: letters (CJK or alphabetic), digits, symbols.
    Formatting is left out unless `count_layout`: layout lines (table borders, rules: no letter or digit),
    runs of 4+ leader characters (the dots of a table of contents, rules: ....., -----) and fenced code, which is
    symbols and digits by nature. A text that is only that has nothing to judge and passes."""

    op: Literal["char_ratio"] = "char_ratio"
    min_letter_ratio: float = 0.0  # CJK characters + alphabetic letters
    min_cjk_ratio: float = 0.0
    max_digit_ratio: float = 1.0
    max_symbol_ratio: float = 1.0  # punctuation and symbols
    count_layout: bool = False

    def judge(self, text: str) -> str | None:
        if not text.strip():
            return "empty text" if self.min_letter_ratio > 0 else None
        if not self.count_layout:
            text = LEADER_RUN.sub("", LAYOUT_LINES.sub("", without_code(text)))
        counts = class_counts(text)
        n, letters, digits, cjk = (int(counts[k]) for k in (NONSPACE, LETTER, DIGIT, CJK_CLS))
        if not n:
            return None
        symbols = n - letters - digits
        for label, value, bound, low in (
            ("letter ratio", letters / n, self.min_letter_ratio, True),
            ("CJK ratio", cjk / n, self.min_cjk_ratio, True),
            ("digit ratio", digits / n, self.max_digit_ratio, False),
            ("symbol ratio", symbols / n, self.max_symbol_ratio, False),
        ):
            if (low and value < bound) or (not low and value > bound):
                return f"{label} {value:.3f} {'<' if low else '>'} {bound}"
        return None


@functools.lru_cache(maxsize=16)
def _badword_pattern(words: tuple[str, ...]) -> re.Pattern:
    # ASCII words match whole words only ("ass" must not hit "class"); CJK words match as substrings
    alts = [rf"\b{re.escape(w)}\b" if w.isascii() else re.escape(w) for w in sorted(words, key=len, reverse=True)]
    return re.compile("|".join(alts), re.IGNORECASE)


class BadWords(Filter):
    """Reject records containing user-supplied bad words (inline list and/or files with one word a line)."""

    op: Literal["bad_words"] = "bad_words"
    words: list[str] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list)
    max_hits: int = 0  # reject when more than this many occurrences
    _cache: tuple[str, ...] | None = PrivateAttr(default=None)

    def _words(self) -> tuple[str, ...]:
        words = set(w.strip() for w in self.words if w.strip())
        for f in self.files:
            path = Path(f)
            if not path.exists():
                raise FileNotFoundError(f"{path}: bad-word list not found (step bad_words)")
            words.update(w.strip() for w in path.read_text(encoding="utf-8").splitlines() if w.strip())
        return tuple(sorted(words))

    def judge(self, text: str) -> str | None:
        words = self._words_cached()
        if not words:
            return None
        hits = _badword_pattern(words).findall(text)
        if len(hits) > self.max_hits:
            top = ", ".join(f"{w}x{c}" for w, c in Counter(h.lower() for h in hits).most_common(3))
            return f"bad words: {len(hits)} hits ({top})"
        return None

    def _words_cached(self) -> tuple[str, ...]:
        if self._cache is None:
            self._cache = self._words()
        return self._cache


class SFTAnswer(Filter):
    """SFT sanity: at least one user turn, the last turn from the assistant, no empty turn, and answers long
    enough (one-letter answers teach a model to answer in one letter)."""

    op: Literal["sft_answer"] = "sft_answer"
    granularity: Literal["section", "document"] = "document"
    min_answer_chars: int = 2
    require_user: bool = True
    require_final_assistant: bool = True

    def judge(self, text: str) -> str | None:
        return None  # documents pass; only SFT records are judged

    def judge_record(self, record: dict, text: str) -> str | None:
        messages = record.get("messages")
        if not isinstance(messages, list):
            return None
        roles = [m.get("role") for m in messages]
        if self.require_user and "user" not in roles:
            return "no user turn"
        if self.require_final_assistant and (not roles or roles[-1] != "assistant"):
            return "last turn is not from the assistant"
        for i, m in enumerate(messages):
            if not str(m.get("content", "")).strip():
                return f"message {i} ({m.get('role')}) is empty"
        for m in messages:
            if m.get("role") == "assistant" and len(m["content"].strip()) < self.min_answer_chars:
                return f"answer too short: {len(m['content'].strip())} chars < {self.min_answer_chars}"
        return None
