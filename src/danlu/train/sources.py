"""A run's training sources, opened once: each token store read and split into train / held-out documents a
single time, then shared by the mixing plan, the batch stream and the held-out evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from pathlib import Path

import numpy as np

from danlu.names import display
from danlu.train.mixing import SourceSpec
from danlu.train.store import Split, TokenStore, tokenizer_sha


@dataclass
class OpenSource:
    spec: SourceSpec
    store: TokenStore
    split: Split

    @property
    def name(self) -> str:
        return self.spec.name

    @cached_property
    def train_docs(self) -> np.ndarray:
        """Training documents that have a target (a 1-token document has none)."""
        train = self.split.train
        return train[self.store.lengths[train] >= 2]

    @property
    def train_tokens(self) -> int:
        """Tokens available for training (held-out documents excluded)."""
        return int(self.store.lengths[self.split.train].sum())


def open_sources(sources: list[SourceSpec | dict | OpenSource], tokenizer_dir: str | Path | None = None
                 ) -> list[OpenSource]:
    """Open every source's store (once) and split it; all must come from the same tokenizer, and with
    `tokenizer_dir` (the tokenizer the run ships with its model) from that one: a model trained on another
    tokenizer's ids and shipped with this one would be silently wrong."""
    opened = []
    for s in sources:
        if isinstance(s, OpenSource):
            opened.append(s)
            continue
        spec = s if isinstance(s, SourceSpec) else SourceSpec.model_validate(s)
        if spec.store is None:
            raise ValueError(f"source '{spec.name}': training needs a token store ('store'), not just a token count")
        store = TokenStore(spec.store)
        opened.append(OpenSource(spec, store, store.split(spec.heldout_fraction, spec.min_heldout_docs)))
    first = opened[0].store if opened else None
    for o in opened:
        st = o.store
        if (st.vocab_size, st.bos_id, st.eos_id, st.pad_id, st.meta.get("tokenizer_sha")) != (
                first.vocab_size, first.bos_id, first.eos_id, first.pad_id, first.meta.get("tokenizer_sha")):
            raise ValueError(f"source '{o.name}' ({o.spec.store}) was tokenized with a different tokenizer than "
                             f"'{opened[0].name}' ({opened[0].spec.store})")
    if tokenizer_dir and opened:
        check_tokenizer(opened, Path(tokenizer_dir))
    return opened


def check_tokenizer(opened: list[OpenSource], tokenizer_dir: Path) -> None:
    """Every store's tokenizer_sha (store.json) must be the hash of `tokenizer_dir`/tokenizer.json."""
    tj = tokenizer_dir / "tokenizer.json"
    if not tj.exists():
        raise ValueError(f"{display(tokenizer_dir)}: the run's tokenizer has no tokenizer.json to compare with the "
                         "token stores' tokenizer; point model.tokenizer at the folder the stores were tokenized with")
    want = tokenizer_sha(tokenizer_dir)
    for o in opened:
        have = o.store.meta.get("tokenizer_sha")
        if have is None:
            raise ValueError(f"source '{o.name}': {display(o.store.path)}/store.json records no tokenizer_sha, so "
                             "it cannot be checked against the run's tokenizer; re-tokenize it")
        if have != want:
            raise ValueError(
                f"source '{o.name}': token store {display(o.store.path)} was tokenized with a different tokenizer "
                f"(store.json tokenizer_sha {have}) than the one this run trains for and ships, "
                f"{display(tj)} (sha {want}); re-tokenize the store with that tokenizer "
                f"(`danlu data tokenize ... --tokenizer {display(tokenizer_dir)}`) or set model.tokenizer to "
                "the one the store was made with")
