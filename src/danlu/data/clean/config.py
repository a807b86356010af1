"""The clean config: an ordered list of named operators with their parameters (see presets/clean-*.yaml).

    format: auto            # auto | document | sft
    steps:
      - op: unicode
        form: NFC
      - op: length
        min_chars: 50
      - op: near_dedup
        threshold: 0.8

Unknown operators or parameters are errors that list what is allowed. Dedup steps see the whole corpus, so
they come after every per-record step.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Union

from pydantic import Field, model_validator

from danlu.config import ConfigError, StrictModel, load_yaml, validate
from danlu.data.clean.base import Step
from danlu.data.clean.filters import BadWords, CharRatio, Length, Repetition, SFTAnswer
from danlu.data.clean.langid import LangId
from danlu.data.clean.normalize import Invisible, Punctuation, TraditionalToSimplified, Unicode, Whitespace
from danlu.data.clean.pii import PII


class ExactDedup(Step):
    """Drop records whose normalised text (NFKC, case-folded, whitespace collapsed) was seen before."""

    kind: ClassVar[str] = "dedup"
    op: Literal["exact_dedup"] = "exact_dedup"


class NearDedup(Step):
    """MinHash-LSH near-duplicates: character `ngram` shingles, `num_perm` permutations, Jaccard `threshold`."""

    kind: ClassVar[str] = "dedup"
    op: Literal["near_dedup"] = "near_dedup"
    threshold: float = Field(0.8, gt=0, lt=1)
    num_perm: int = Field(128, ge=8)
    ngram: int = Field(5, ge=1)
    seed: int = 1


AnyStep = Annotated[
    Union[
        Unicode, Invisible, Punctuation, Whitespace, TraditionalToSimplified, PII,
        Length, CharRatio, Repetition, LangId, BadWords, SFTAnswer, ExactDedup, NearDedup,
    ],
    Field(discriminator="op"),
]


class CleanConfig(StrictModel):
    format: Literal["auto", "document", "sft"] = "auto"
    steps: list[AnyStep] = Field(default_factory=list)

    @model_validator(mode="after")
    def _dedup_last(self) -> "CleanConfig":
        seen_dedup = False
        for i, step in enumerate(self.steps):
            if step.kind == "dedup":
                seen_dedup = True
            elif seen_dedup:
                raise ValueError(f"step {i} ({step.op}) comes after a dedup step; dedup steps must be last")
        return self


PRESETS = ("pretrain", "sft")


def preset_path(name: str) -> Path:
    if name not in PRESETS:
        raise ConfigError(f"unknown clean preset {name!r}; choose one of {', '.join(PRESETS)}")
    return Path(str(resources.files("danlu.data") / "presets" / f"clean-{name}.yaml"))


def load_clean_config(path: str | Path | None = None, preset: str | None = None) -> CleanConfig:
    """A config file, else a preset (pretrain or sft)."""
    if path is None:
        path = preset_path(preset or "pretrain")
    return validate(load_yaml(path), CleanConfig, str(path))
