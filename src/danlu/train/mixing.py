"""Data mixing: the sources of a pretraining run, their weights, and the plan of how much of each a run takes.

A weight is a source's share of training tokens (weights are relative; they are normalised to sum to 1). The
plan is the table of the GPT-3 paper (Brown et al. 2020, Table 2.2): per source the tokens available, the
weight, the tokens the run will train on and the number of epochs that makes. It warns when domain data exceeds
the share recommended for continued pretraining (about 15% domain, the rest general "replay" data, to keep
general ability; configurable) and when a source would be repeated more than `max_epochs` times (beyond about 4
epochs repeated tokens are worth much less than new ones: Muennighoff et al. 2023, "Scaling Data-Constrained
Language Models").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from pydantic import Field, model_validator

from danlu.config import StrictModel
from danlu.train.store import HELDOUT_FRACTION, MIN_HELDOUT_DOCS


class SourceSpec(StrictModel):
    """One training source: a token store (or, for planning only, a token count) and its weight."""

    name: str
    store: str | None = None  # folder written by `danlu data tokenize`
    weight: float = Field(ge=0)  # share of training tokens (relative)
    domain: bool = False  # domain data (vs general replay data), for the domain-share warning
    tokens: int | None = None  # planning without a store: tokens available
    heldout_fraction: float = Field(HELDOUT_FRACTION, ge=0, lt=1)
    min_heldout_docs: int = Field(MIN_HELDOUT_DOCS, ge=0)

    @model_validator(mode="after")
    def _store_or_tokens(self) -> "SourceSpec":
        if self.store is None and self.tokens is None:
            raise ValueError(f"source '{self.name}': give 'store' (a token store folder) or 'tokens'")
        return self


@dataclass
class PlanRow:
    name: str
    tokens: int  # available for training
    weight: float  # normalised share of training tokens
    train_tokens: int
    epochs: float
    domain: bool


@dataclass
class Plan:
    total_tokens: int
    rows: list[PlanRow]
    warnings: list[str] = field(default_factory=list)

    def table(self) -> str:
        """The GPT-3-style mixing table, ready to print."""
        head = f"{'source':<24}{'tokens':>14}{'weight':>9}{'train tokens':>16}{'epochs':>9}  domain"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r.name:<24}{_human(r.tokens):>14}{r.weight:>9.1%}{_human(r.train_tokens):>16}"
                f"{r.epochs:>9.2f}  {'yes' if r.domain else ''}"
            )
        lines.append(f"{'total':<24}{_human(sum(r.tokens for r in self.rows)):>14}{1:>9.0%}"
                     f"{_human(self.total_tokens):>16}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"total_tokens": self.total_tokens, "rows": [asdict(r) for r in self.rows], "warnings": self.warnings}


def _human(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def normalised_weights(sources: list[SourceSpec]) -> list[float]:
    total = sum(s.weight for s in sources)
    if total <= 0:
        raise ValueError("the sources' weights sum to 0: give at least one source a positive weight")
    return [s.weight / total for s in sources]


def plan(
    sources: list, total_tokens: int, max_domain_ratio: float = 0.15, max_epochs: float = 4.0
) -> Plan:
    """Per source: tokens available, weight, tokens to train and epochs, for a run of `total_tokens` tokens.
    `sources`: SourceSpecs with a token count (planning ahead) or a store, or danlu.train.sources.OpenSource."""
    from danlu.train.sources import OpenSource, open_sources

    available = [s.train_tokens if isinstance(s, OpenSource) else s.tokens if s.tokens is not None
                 else open_sources([s])[0].train_tokens for s in sources]
    sources = [s.spec if isinstance(s, OpenSource) else s for s in sources]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"source names must be unique, got {names}")
    weights = normalised_weights(sources)
    rows = []
    warnings = []
    for s, w, avail in zip(sources, weights, available):
        train = round(w * total_tokens)
        if avail == 0 and train > 0:
            raise ValueError(f"source '{s.name}' has no training tokens but weight {s.weight}")
        epochs = train / avail if avail else 0.0
        rows.append(PlanRow(s.name, avail, w, train, epochs, s.domain))
        if epochs > max_epochs:
            warnings.append(
                f"source '{s.name}' would be repeated {epochs:.1f} epochs (> {max_epochs:g}); beyond about 4 epochs "
                "repeated data is worth much less than new data: lower its weight or add data"
            )
    domain_share = sum(w for s, w in zip(sources, weights) if s.domain)
    if domain_share > max_domain_ratio + 1e-9:
        warnings.append(
            f"domain sources take {domain_share:.0%} of training tokens, above the {max_domain_ratio:.0%} recommended "
            "for continued pretraining (the rest general 'replay' data, so general ability is not forgotten); "
            "set max_domain_ratio to accept this"
        )
    return Plan(total_tokens, rows, warnings)
