"""Language identification with lingua (its models ship in the wheel: no download).

The detector is restricted to `languages` (fewer candidates = faster and fewer confusions) and built once per
process per language set. Only the first `sample_chars` characters of prose are classified: fenced code is
left out (a shell snippet has no natural language), and a text with fewer than `min_letters` letters of prose
passes (nothing to tell a language from; char_ratio judges symbol soup).
"""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import Field, field_validator

from danlu.data.clean.base import Filter
from danlu.data.clean.markdown import without_code
from danlu.data.clean.textstats import LETTER, class_counts


@functools.lru_cache(maxsize=4)
def detector(languages: tuple[str, ...]):
    from lingua import Language, LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_languages(*(Language.from_str(name) for name in languages)).build()


def _check_language(name: str) -> str:
    from lingua import Language

    try:
        Language.from_str(name)
    except ValueError:
        raise ValueError(f"unknown language {name!r} (use English names, e.g. chinese, english, japanese)") from None
    return name.lower()


class LangId(Filter):
    """Keep records whose detected language is in `keep` (with confidence >= min_confidence)."""

    op: Literal["langid"] = "langid"
    languages: list[str] = Field(default_factory=lambda: ["chinese", "english", "japanese"])
    keep: list[str] = Field(default_factory=lambda: ["chinese", "english"])
    min_confidence: float = 0.0
    sample_chars: int = 2000
    min_letters: int = Field(20, ge=0)

    @field_validator("languages", "keep")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        return [_check_language(n) for n in names]

    def judge(self, text: str) -> str | None:
        if not text.strip():
            return "no text to identify"
        sample = without_code(text)[: self.sample_chars]
        if int(class_counts(sample)[LETTER]) < max(self.min_letters, 1):
            return None
        det = detector(tuple(sorted(set(self.languages) | set(self.keep))))
        if self.min_confidence > 0:
            best = det.compute_language_confidence_values(sample)[0]
            lang, conf = best.language.name.lower(), best.value
            if lang in self.keep and conf < self.min_confidence:
                return f"language {lang} with low confidence {conf:.2f} < {self.min_confidence}"
        else:
            found = det.detect_language_of(sample)
            if found is None:
                return "language not identified"
            lang = found.name.lower()
        if lang not in self.keep:
            return f"language {lang} not in {self.keep}"
        return None
