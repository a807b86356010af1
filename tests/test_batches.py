"""The packed batch stream: labels and positions, per-document targets, weights, resume, ranks, held-out split."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch
from tokstore_helpers import make_store, make_tokenizer

from danlu.train.batches import PackedBatches, SourceSpec, heldout_batches
from danlu.train.store import TokenStore

SEQ = 64


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    tok = make_tokenizer(root / "tok")
    return {"ops": make_store(root, tok, "ops", 50, seed=1, max_words=40),
            "gen": make_store(root, tok, "gen", 120, seed=2, max_words=200)}


def _sources(stores, w_ops=0.25):
    return [SourceSpec(name="ops", store=str(stores["ops"]), weight=w_ops, domain=True),
            SourceSpec(name="gen", store=str(stores["gen"]), weight=1 - w_ops)]


def _stream(stores, **kw):
    args = dict(seq_len=SEQ, batch_size=8, doc_mask=True, seed=0, buffer_size=32)
    args.update(kw)
    return PackedBatches(_sources(stores), **args)


def test_batch_shapes_labels_and_positions(stores):
    on, off = _stream(stores, batch_size=4), _stream(stores, batch_size=4, doc_mask=False)
    saw_padding = saw_several_docs = False
    for _ in range(30):
        b, c = next(on), next(off)
        assert set(b) == {"input_ids", "labels", "position_ids"}
        assert all(t.shape == (4, SEQ) and t.dtype == torch.long for t in b.values())
        assert torch.equal(b["input_ids"], c["input_ids"]) and torch.equal(b["labels"], c["labels"])
        assert torch.equal(c["position_ids"], torch.arange(SEQ).expand(4, SEQ))
        for r, row in enumerate(on.last_pieces):
            ids, labels, pos = b["input_ids"][r], b["labels"][r], b["position_ids"][r]
            starts = np.cumsum([0] + [p[3] for p in row])
            used = int(starts[-1])
            expected_pos = np.concatenate([np.arange(p[3]) for p in row] + [np.arange(SEQ - used)])
            assert pos.tolist() == expected_pos.tolist()  # restart at every document (and at the padding)
            ignored = set(starts[:-1].tolist()) | set(range(used, SEQ))  # piece starts + padding
            assert {i for i in range(SEQ) if labels[i] == -100} == ignored
            keep = [i for i in range(SEQ) if i not in ignored]
            assert labels[keep].tolist() == ids[keep].tolist()
            assert (ids[used:] == TokenStore(stores["ops"]).pad_id).all()
            saw_padding |= used < SEQ
            saw_several_docs |= len(row) > 1
    assert saw_padding and saw_several_docs
    st = on.stats()
    assert st["rows"] == 120 and st["tokens"] == 120 * SEQ == st["doc_tokens"] + st["pad_tokens"]
    assert st["cropped_tokens"] == 0 and st["overlap_tokens"] > 0 and 0 < st["pad_fraction"] < 0.1


def test_label_positions_are_exactly_each_documents_tokens(stores):
    """Within an epoch, the targets trained for a document are its tokens 1..n-1, each exactly once."""
    s = PackedBatches(_sources(stores, w_ops=0.05), seq_len=SEQ, batch_size=8, buffer_size=32)
    st = {0: TokenStore(stores["ops"]), 1: TokenStore(stores["gen"])}
    got: dict[tuple[int, int], dict[int, int]] = defaultdict(dict)
    for _ in range(30):
        b = next(s)
        for r, row in enumerate(s.last_pieces):
            at = 0
            for src, doc, start, length in row:
                labels = b["labels"][r, at : at + length].tolist()
                ids = b["input_ids"][r, at : at + length].tolist()
                assert ids == st[src].doc(doc, start, length).tolist()
                for k in range(1, length):  # targets of this piece, by position in the document
                    assert (start + k) not in got[(src, doc)], "a target trained twice"
                    got[(src, doc)][start + k] = labels[k]
                at += length
    assert max(s.stats()["source_epochs"].values()) < 1  # no document came round twice
    complete = [key for key, targets in got.items() if len(targets) == st[key[0]].lengths[key[1]] - 1]
    assert len(complete) > 30 and sum(st[k[0]].lengths[k[1]] > SEQ for k in complete) > 5  # windowed ones too
    for src, doc in complete:
        tokens = st[src].doc(doc).tolist()
        assert [got[(src, doc)][i] for i in range(1, len(tokens))] == tokens[1:]


def test_sources_follow_their_weights(stores):
    for w in (0.25, 0.6):
        s = PackedBatches(_sources(stores, w), seq_len=SEQ, batch_size=8, buffer_size=32)
        counts = Counter()
        for _ in range(40):
            next(s)
            for row in s.last_pieces:
                for p in row:
                    counts[p[0]] += p[3]
        share = counts[0] / (counts[0] + counts[1])
        assert share == pytest.approx(w, abs=0.03)
        drawn = s.stats()["source_tokens"]
        assert drawn["ops"] / (drawn["ops"] + drawn["gen"]) == pytest.approx(w, abs=SEQ / sum(drawn.values()))


def test_exact_resume_gives_the_same_next_batches(stores):
    a = _stream(stores)
    for _ in range(7):
        next(a)
    state = json.loads(json.dumps(a.state_dict()))  # survives a checkpoint as plain JSON
    b = _stream(stores)
    b.load_state_dict(state)
    for _ in range(25):  # crosses several epochs of the small source
        x, y = next(a), next(b)
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert a.stats() == b.stats() and a.stats()["source_epochs"]["ops"] > 1
    fresh = _stream(stores)
    assert not torch.equal(next(fresh)["input_ids"], next(a)["input_ids"])
    with pytest.raises(ValueError, match="seq_len"):
        _stream(stores, seq_len=32).load_state_dict(state)


def test_ranks_together_equal_the_single_process_stream(stores):
    single = _stream(stores, batch_size=6)
    ranks = [_stream(stores, batch_size=2, rank=r, world_size=3) for r in range(3)]
    for step in range(12):
        if step == 5:  # resuming every rank from rank 0's state keeps them in step
            state = ranks[0].state_dict()
            ranks = [_stream(stores, batch_size=2, rank=r, world_size=3) for r in range(3)]
            for r in ranks:
                r.load_state_dict(state)
        whole = next(single)
        parts = [next(r) for r in ranks]
        for k in whole:
            assert torch.equal(torch.cat([p[k] for p in parts]), whole[k])
    assert ranks[1].state_dict() == ranks[0].state_dict()
    # a checkpoint written by 3 processes resumes in 1 process with another micro-batch size, row for row
    resumed = _stream(stores, batch_size=3)
    resumed.load_state_dict(ranks[0].state_dict())
    whole = torch.cat([next(single)["input_ids"] for _ in range(2)])
    assert torch.equal(torch.cat([next(resumed)["input_ids"] for _ in range(4)]), whole)


def test_epochs_cover_every_training_doc_once_reshuffled_and_seeded(stores):
    def doc_order(seed):
        # buffer_size=1 and short docs: rows come out in draw order, one document each
        s = PackedBatches([SourceSpec(name="ops", store=str(stores["ops"]), weight=1.0)], seq_len=256,
                          batch_size=5, seed=seed, buffer_size=1)
        order = []
        for _ in range(20):  # 100 rows: two epochs of the 46 training docs
            next(s)
            order += [row[0][1] for row in s.last_pieces if row[0][2] == 0]
        return order

    train = TokenStore(stores["ops"]).split().train.tolist()
    order = doc_order(0)
    n = len(train)
    first, second = order[:n], order[n : 2 * n]
    assert sorted(first) == sorted(second) == train and first != second
    assert doc_order(0) == order and doc_order(1)[:n] != first


def test_heldout_docs_never_train_and_heldout_batches_hold_only_them(stores):
    spec = _sources(stores)[0]
    store = TokenStore(spec.store)
    split = store.split(spec.heldout_fraction, spec.min_heldout_docs)
    held = set(split.heldout.tolist())
    assert len(held) == 4 and not held & set(split.train.tolist())  # 50 docs: 1% is < 4, so the 4 lowest hashes
    s = _stream(stores)
    trained = set()
    for _ in range(40):
        next(s)
        trained |= {p[1] for row in s.last_pieces for p in row if p[0] == 0}
    assert trained == set(split.train.tolist())  # several epochs: every training doc, no held-out doc

    batches = heldout_batches(spec, SEQ, batch_size=2)
    again = heldout_batches(spec, SEQ, batch_size=2)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(batches, again) for k in x)
    targets = sum(int((b["labels"] != -100).sum()) for b in batches)
    assert targets == sum(int(store.lengths[d]) - 1 for d in held)  # every held-out target exactly once
    held_tokens = Counter(t for d in held for t in store.doc(d).tolist())
    in_batches = Counter(t for b in batches for t in b["input_ids"][b["labels"] != -100].tolist())
    assert in_batches <= held_tokens
    assert len(heldout_batches(spec, SEQ, batch_size=1, max_batches=1)) == 1
