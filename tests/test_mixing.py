"""The mixing planner: the GPT-3 table, domain-share and epoch warnings, token counts read from a real store."""

from __future__ import annotations

import pytest
from tokstore_helpers import make_store, make_tokenizer

from danlu.train.mixing import SourceSpec, plan
from danlu.train.store import TokenStore

# Brown et al. 2020, Table 2.2: (tokens, weight in training mix, epochs elapsed when training for 300B tokens).
GPT3 = {
    "Common Crawl (filtered)": (410e9, 0.60, 0.44),
    "WebText2": (19e9, 0.22, 2.9),
    "Books1": (12e9, 0.08, 1.9),
    "Books2": (55e9, 0.08, 0.43),
    "Wikipedia": (3e9, 0.03, 3.4),
}


def test_gpt3_table_epochs_column():
    sources = [SourceSpec(name=n, tokens=int(t), weight=w) for n, (t, w, _) in GPT3.items()]
    p = plan(sources, total_tokens=300_000_000_000)
    got = {r.name: r for r in p.rows}
    for name, (tokens, weight, paper_epochs) in GPT3.items():
        row = got[name]
        assert row.tokens == tokens
        assert row.epochs == pytest.approx(row.train_tokens / tokens)
        # The paper's inputs are rounded (tokens to 1B, weights to 1%, and they sum to 101%), so its epochs are
        # reproducible only to within the error that rounding implies.
        tolerance = 0.5e9 / tokens + 0.005 / weight + 0.01
        if name == "WebText2":
            # The paper's own numbers disagree here: 22% of 300B over 19B tokens is 3.5 epochs, not 2.9, and no
            # rounding of its inputs gives 2.9. We give the figure that follows from the inputs.
            assert row.epochs == pytest.approx(0.22 / 1.01 * 300 / 19, rel=1e-6)
            assert abs(row.epochs - paper_epochs) / paper_epochs > tolerance
            continue
        assert row.epochs == pytest.approx(paper_epochs, rel=tolerance)
    assert round(got["Common Crawl (filtered)"].epochs, 2) in (0.43, 0.44) and round(got["Books2"].epochs, 2) == 0.43
    table = p.table()
    assert "Common Crawl (filtered)" in table and "410.00B" in table and "300.00B" in table
    assert sum(r.train_tokens for r in p.rows) == pytest.approx(300e9, rel=1e-9)
    assert p.warnings == []  # no source is marked domain, none repeats more than 4 epochs


def test_domain_share_warning_and_configurable_ratio():
    def mix(domain_weight):
        return [SourceSpec(name="ops", tokens=10**9, weight=domain_weight, domain=True),
                SourceSpec(name="general", tokens=10**10, weight=1 - domain_weight)]

    assert plan(mix(0.15), 10**9).warnings == []
    warned = plan(mix(0.30), 10**9).warnings
    assert len(warned) == 1 and "30%" in warned[0] and "15%" in warned[0] and "replay" in warned[0]
    assert plan(mix(0.30), 10**9, max_domain_ratio=0.35).warnings == []
    assert "warning: domain sources take 30%" in plan(mix(0.30), 10**9).table()


def test_repeated_source_warning():
    sources = [SourceSpec(name="small", tokens=10**6, weight=0.5), SourceSpec(name="big", tokens=10**9, weight=0.5)]
    p = plan(sources, 10**7)
    assert p.rows[0].epochs == pytest.approx(5.0)
    assert len(p.warnings) == 1 and "'small'" in p.warnings[0] and "5.0 epochs" in p.warnings[0]


def test_bad_sources_are_refused():
    with pytest.raises(ValueError, match="store"):
        SourceSpec(name="x", weight=1.0)
    with pytest.raises(ValueError, match="unique"):
        plan([SourceSpec(name="x", tokens=1, weight=1), SourceSpec(name="x", tokens=1, weight=1)], 10)
    with pytest.raises(ValueError, match="sum to 0"):
        plan([SourceSpec(name="x", tokens=1, weight=0)], 10)


def test_plan_reads_training_tokens_from_a_store(tmp_path):
    tok = make_tokenizer(tmp_path / "tok")
    store_dir = make_store(tmp_path, tok, "ops", 60)
    spec = SourceSpec(name="ops", store=str(store_dir), weight=1.0, domain=True)
    store = TokenStore(store_dir)
    split = store.split(spec.heldout_fraction, spec.min_heldout_docs)
    assert 0 < len(split.heldout) < len(store)
    p = plan([spec], 5 * store.num_tokens, max_domain_ratio=1.0)
    assert p.rows[0].tokens == int(store.lengths[split.train].sum()) < store.num_tokens  # held-out excluded
    assert p.rows[0].epochs == pytest.approx(5 * store.num_tokens / p.rows[0].tokens)
    assert "epochs" in p.warnings[0]
