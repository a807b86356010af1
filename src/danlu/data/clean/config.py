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
they come after every per-record step. Beside the steps: how long documents are cut into sections for the
filters (`sections`, see sections.py), when the summary warns (`warn`), what review.html shows (`review`),
whether rejects keep the removed text in full, and an optional tokenizer to account in tokens too.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar, Iterable, Literal, Union

from pydantic import Field, model_validator

from danlu.config import ConfigError, StrictModel, build_config, load_yaml
from danlu.data.clean.base import Step
from danlu.data.clean.boilerplate import Boilerplate
from danlu.data.clean.filters import BadWords, CharRatio, Length, SFTAnswer
from danlu.data.clean.langid import LangId
from danlu.data.clean.mojibake import Mojibake
from danlu.data.clean.normalize import Invisible, Punctuation, TraditionalToSimplified, Unicode, Whitespace
from danlu.data.clean.pii import PII
from danlu.data.clean.repetition import Repetition
from danlu.data.clean.review import ReviewOptions
from danlu.data.clean.sections import SectionOptions


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
        Length, CharRatio, Mojibake, Boilerplate, Repetition, LangId, BadWords, SFTAnswer, ExactDedup, NearDedup,
    ],
    Field(discriminator="op"),
]


class WarnOptions(StrictModel):
    """When the printed summary warns: data lost in bulk is what a user must look at before training on it."""

    chars_share: float = Field(0.02, ge=0, le=1)  # one operator removes more than this share of the characters
    record_chars: int = Field(100_000, ge=1)  # a record at least this long is dropped whole
    dedup: bool = False  # warn for dedup steps too (what they drop lives on in the copy they keep)


class CleanConfig(StrictModel):
    format: Literal["auto", "document", "sft", "preference"] = "auto"
    steps: list[AnyStep] = Field(default_factory=list)
    sections: SectionOptions = SectionOptions()  # how long documents are cut for section-level filters
    warn: WarnOptions = WarnOptions()
    review: ReviewOptions = ReviewOptions()  # review.html: examples per operator and reason
    keep_rejected_text: bool = True  # rejects.jsonl holds removed records and sections in full (else an excerpt)
    tokenizer: str | None = None  # also account in tokens (HF tokenizer folder, .tiktoken file, tiktoken:NAME)
    # What a run recorded (a run's config.yaml can be given back as --config); the command line's win.
    inputs: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _dedup_last(self) -> "CleanConfig":
        seen_dedup = False
        for i, step in enumerate(self.steps):
            if step.kind == "dedup":
                seen_dedup = True
            elif seen_dedup:
                raise ValueError(f"step {i} ({step.op}) comes after a dedup step; dedup steps must be last")
        return self


class DedupConfig(StrictModel):
    """`danlu data dedup`: only the dedup steps of the clean pipeline."""

    exact: bool = True  # drop exact duplicates (NFKC, case, whitespace)
    near: bool = True  # drop MinHash-LSH near-duplicates
    near_dedup: NearDedup = NearDedup()  # its threshold, num_perm, ngram, seed

    def clean_config(self) -> CleanConfig:
        steps = ([ExactDedup()] if self.exact else []) + ([self.near_dedup] if self.near else [])
        if not steps:
            raise ConfigError("data dedup: nothing to do (both exact and near are off)")
        return CleanConfig(steps=steps)


PRESETS = ("pretrain", "sft")


def preset_path(name: str) -> Path:
    if name not in PRESETS:
        raise ConfigError(f"unknown clean preset {name!r}; choose one of {', '.join(PRESETS)}")
    return Path(str(resources.files("danlu.data") / "presets" / f"clean-{name}.yaml"))


def load_clean_config(path: str | Path | None = None, preset: str | None = None,
                      sets: Iterable[str] = (), fields: dict | None = None) -> CleanConfig:
    """A config file (a clean pipeline, or a clean run's config.yaml), else a preset (pretrain or sft), with
    `fields` (flags; None = not given) and `--set` overrides: `OP.param=value` sets a parameter of the step named
    OP (`near_dedup.threshold=0.9`), `steps.N.param=value` of the N-th step."""
    if path is None:
        path = preset_path(preset or "pretrain")
    data = load_yaml(path, stage="clean")
    return build_config(CleanConfig, data, fields=fields, sets=_by_step_name(data, list(sets)), source=str(path))


def _by_step_name(data: Any, sets: list[str]) -> list[str]:
    """Rewrite `OP.param=value` into `steps.N.param=value` for the step whose op is OP."""
    steps = data.get("steps") if isinstance(data, dict) else None
    names = [s.get("op") for s in steps] if isinstance(steps, list) and all(isinstance(s, dict) for s in steps) else []
    out = []
    for item in sets:
        head, _, rest = item.partition(".")
        if head in names and rest:
            if names.count(head) > 1:
                raise ConfigError(f"--set {item!r}: the pipeline has {names.count(head)} '{head}' steps; "
                                  f"use steps.N.{rest} instead")
            item = f"steps.{names.index(head)}.{rest}"
        out.append(item)
    return out
