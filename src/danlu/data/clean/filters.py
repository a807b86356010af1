"""Quality filters: length, character-class ratios, Gopher repetition rules, user bad-word lists, SFT answers.

Each filter returns a short reason naming the rule and the measured value, so rejects explain themselves.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, PrivateAttr

from danlu.data.clean.base import Filter
from danlu.data.clean.markdown import code_spans
from danlu.data.clean.normalize import CJK

# "Words" for the word-based rules: runs of letters/digits, and CJK text cut into 2-character groups (Chinese
# words average ~1.5-2 characters; single characters would make Gopher's 5-10-gram rules fire on ordinary
# Chinese prose, since 5 characters repeat far more often than 5 English words). A segmenter (jieba) would be
# closer but adds a dependency and ~10x the time for a rule that only needs comparable n-gram lengths.
_WORD = re.compile(rf"[{CJK}]{{1,2}}|[^\W_{CJK}]+(?:['’][^\W_]+)*", re.UNICODE)
_CJK_CHAR = re.compile(f"[{CJK}]")
_SPACE_CLS, _LETTER_CLS, _DIGIT_CLS, _OTHER_CLS, _CJK_CLS, _NONSPACE = 0, 1, 2, 3, 4, 5


@functools.lru_cache(maxsize=1)
def _bmp_classes() -> np.ndarray:
    """Character class of every BMP code point (space, letter, digit, other; CJK ideographs get their own)."""
    table = np.full(0x10000, _OTHER_CLS, dtype=np.uint8)
    for cp in range(0x10000):
        c = chr(cp)
        if c.isspace():
            table[cp] = _SPACE_CLS
        elif c.isalpha():
            table[cp] = _CJK_CLS if _CJK_CHAR.match(c) else _LETTER_CLS
        elif c.isdigit():
            table[cp] = _DIGIT_CLS
    return table


def _class_counts(text: str) -> np.ndarray:
    """[spaces, letters (incl. CJK), digits, other, CJK, non-space] counts, vectorised over code points."""
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    astral = cps > 0xFFFF  # beyond the BMP: CJK extension planes count as CJK, the rest as symbols
    cls = _bmp_classes()[np.where(astral, 0, cps)]
    cls[astral] = np.where((cps[astral] >= 0x20000) & (cps[astral] < 0x30000), _CJK_CLS, _OTHER_CLS)
    c = np.bincount(cls, minlength=5)[:5]
    return np.array([c[0], c[1] + c[4], c[2], c[3], c[4], len(cps) - c[0]])


class Length(Filter):
    """Keep records whose length (characters excluding whitespace, or words) lies in [min, max]."""

    op: Literal["length"] = "length"
    min_chars: int = 0
    max_chars: int | None = None
    min_words: int = 0  # words as in the repetition rules: an English word or two CJK characters

    def judge(self, text: str) -> str | None:
        n = int(_class_counts(text)[_NONSPACE]) if self.min_chars or self.max_chars else 0
        if n < self.min_chars:
            return f"too short: {n} chars < {self.min_chars}"
        if self.max_chars is not None and n > self.max_chars:
            return f"too long: {n} chars > {self.max_chars}"
        if self.min_words:
            w = len(_WORD.findall(text))
            if w < self.min_words:
                return f"too few words: {w} < {self.min_words}"
        return None


class CharRatio(Filter):
    """Character-class ratios over non-whitespace characters: letters (CJK or alphabetic), digits, symbols."""

    op: Literal["char_ratio"] = "char_ratio"
    min_letter_ratio: float = 0.0  # CJK characters + alphabetic letters
    min_cjk_ratio: float = 0.0
    max_digit_ratio: float = 1.0
    max_symbol_ratio: float = 1.0  # punctuation and symbols

    def judge(self, text: str) -> str | None:
        counts = _class_counts(text)
        n, letters, digits, cjk = (int(counts[k]) for k in (_NONSPACE, _LETTER_CLS, _DIGIT_CLS, _CJK_CLS))
        if not n:
            return "empty text" if self.min_letter_ratio > 0 else None
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


def _dup_fraction(units: list[str]) -> tuple[float, float]:
    """(fraction of units that repeat an earlier one, fraction of characters in those repeats)."""
    seen: set[str] = set()
    dup_n = dup_chars = total_chars = 0
    for u in units:
        total_chars += len(u)
        if u in seen:
            dup_n += 1
            dup_chars += len(u)
        else:
            seen.add(u)
    return dup_n / max(len(units), 1), dup_chars / max(total_chars, 1)


def _ngram_ids(ids: np.ndarray, n: int) -> np.ndarray:
    """An integer per word n-gram (equal n-grams get equal integers): a 64-bit polynomial hash of the word ids,
    then np.unique to make the values small (collisions are negligible at document sizes)."""
    length = len(ids) - n + 1
    h = ids[:length].astype(np.uint64)
    with np.errstate(over="ignore"):
        for k in range(1, n):
            h = h * np.uint64(0x9E3779B97F4A7C15) + ids[k : k + length].astype(np.uint64)
    return np.unique(h, return_inverse=True)[1].reshape(-1)


class Repetition(Filter):
    """Gopher repetition rules (Rae et al. 2021, table A1): duplicate lines/paragraphs (by count and by
    characters), the most frequent 2-4-gram's share of characters, and the share of characters covered by
    duplicated 5-10-grams. Words are English words or 2-character CJK groups. Fenced code is ignored
    (code repeats lines legitimately). The thresholds are Gopher's, calibrated on English web text: on
    reference documentation (man pages repeat option names) the duplicated-n-gram rule removes ~10% of good
    documents, so the pretrain preset turns it off; set `max_dup_ngram_char_frac` to use it on web crawl."""

    op: Literal["repetition"] = "repetition"
    max_dup_line_frac: float = 0.3
    max_dup_para_frac: float = 0.3
    max_dup_line_char_frac: float = 0.2
    max_dup_para_char_frac: float = 0.2
    max_top_ngram_char_frac: dict[int, float] = Field(default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16})
    max_dup_ngram_char_frac: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )
    ignore_code: bool = True

    def judge(self, text: str) -> str | None:
        if self.ignore_code:
            spans = code_spans(text)
            for s, e in reversed(spans):
                text = text[:s] + text[e:]
        paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
        lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
        frac, char_frac = _dup_fraction(paras)
        if frac > self.max_dup_para_frac:
            return f"duplicate paragraphs {frac:.2f} > {self.max_dup_para_frac}"
        if char_frac > self.max_dup_para_char_frac:
            return f"duplicate paragraph chars {char_frac:.2f} > {self.max_dup_para_char_frac}"
        frac, char_frac = _dup_fraction(lines)
        if frac > self.max_dup_line_frac:
            return f"duplicate lines {frac:.2f} > {self.max_dup_line_frac}"
        if char_frac > self.max_dup_line_char_frac:
            return f"duplicate line chars {char_frac:.2f} > {self.max_dup_line_char_frac}"
        return self._ngram_rules(_WORD.findall(text))

    def _ngram_rules(self, words: list[str]) -> str | None:
        if len(words) < 2:
            return None
        vocab: dict[str, int] = {}
        ids = np.fromiter((vocab.setdefault(w, len(vocab)) for w in words), dtype=np.int64, count=len(words))
        lens = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        total = int(lens.sum())
        for n, bound in sorted(self.max_top_ngram_char_frac.items()):
            if len(words) < n:
                break
            grams = _ngram_ids(ids, n)
            counts = np.bincount(grams)
            top = int(counts.argmax())
            if counts[top] < 2:
                continue
            first = int(np.argmax(grams == top))
            frac = int(counts[top]) * int(lens[first : first + n].sum()) / total
            if frac > bound:
                return f"top {n}-gram covers {frac:.2f} of chars > {bound}"
        for n, bound in sorted(self.max_dup_ngram_char_frac.items()):
            if len(words) < n:
                break
            grams = _ngram_ids(ids, n)
            dup = np.bincount(grams)[grams] > 1
            if not dup.any():
                continue
            # words covered by any duplicated n-gram: +1 at each dup start, -1 n words later
            delta = np.zeros(len(words) + 1, dtype=np.int64)
            starts = np.flatnonzero(dup)
            np.add.at(delta, starts, 1)
            np.add.at(delta, starts + n, -1)
            covered = np.cumsum(delta[:-1]) > 0
            frac = int(lens[covered].sum()) / total
            if frac > bound:
                return f"duplicated {n}-grams cover {frac:.2f} of chars > {bound}"
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
