"""Packing: windows keep every target, best-fit wastes less than greedy, nothing is dropped, state resumes."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from danlu.train.packing import Packer, pack, windows


@pytest.mark.parametrize("doc_len", [1, 2, 7, 8, 9, 15, 16, 17, 50])
def test_windows_train_every_target_exactly_once(doc_len):
    seq_len = 8
    pieces = list(windows(doc_len, seq_len))
    assert all(1 <= n <= seq_len for _, n in pieces)
    assert pieces[0][0] == 0 and pieces[-1][0] + pieces[-1][1] == doc_len  # starts at 0, ends at the end
    # A piece trains targets start+1 .. start+n-1 (its first token has no context in the row).
    targets = Counter(t for s, n in pieces for t in range(s + 1, s + n))
    assert sorted(targets) == list(range(1, doc_len)) and set(targets.values()) <= {1}
    assert all(n >= 2 for _, n in pieces[1:])  # no window that trains nothing


def _waste(rows, seq_len):
    return sum(seq_len - sum(p[3] for p in row) for row in rows)


def _check_all_pieces_placed_once(rows, lengths, seq_len):
    placed = Counter((p[1], p[2], p[3]) for row in rows for p in row)
    expected = Counter((d, s, n) for d, L in enumerate(lengths) for s, n in windows(L, seq_len))
    assert placed == expected
    assert all(sum(p[3] for p in row) <= seq_len for row in rows)


def test_best_fit_wastes_less_than_greedy_and_drops_nothing():
    rng = np.random.default_rng(0)
    seq_len = 512
    # A web-like length distribution: many short documents, a long tail (some longer than a row).
    lengths = np.clip(rng.lognormal(mean=5.0, sigma=1.0, size=3000).astype(int), 2, 4000).tolist()
    best = pack(lengths, seq_len, "best_fit", buffer_size=256)
    greedy = pack(lengths, seq_len, "greedy")
    _check_all_pieces_placed_once(best, lengths, seq_len)
    _check_all_pieces_placed_once(greedy, lengths, seq_len)
    total = sum(lengths)
    best_waste, greedy_waste = _waste(best, seq_len), _waste(greedy, seq_len)
    assert greedy_waste > 0.15 * len(greedy) * seq_len  # greedy pads a lot on this distribution
    # Best-fit pads almost nothing (most of it in the last few rows, when the buffer runs dry).
    assert best_waste < 0.02 * len(best) * seq_len
    assert best_waste < greedy_waste / 10 and len(best) < len(greedy)
    assert len(best) * seq_len - best_waste == total + sum(len(list(windows(n, seq_len))) - 1 for n in lengths)


def test_no_piece_waits_longer_than_the_buffer_turns_over():
    rng = np.random.default_rng(1)
    seq_len, buffer = 64, 32
    lengths = rng.integers(2, 200, size=2000).tolist()
    rows = pack(lengths, seq_len, "best_fit", buffer_size=buffer)
    order = [(d, s) for d, L in enumerate(lengths) for s, _ in windows(L, seq_len)]
    arrival = {key: i for i, key in enumerate(order)}
    for r, row in enumerate(rows):
        for p in row:
            # The buffer holds `buffer` pieces and every row takes its oldest one, so a piece that arrived i-th
            # (0-based) leaves by row i: at most `buffer` rows after it entered the buffer.
            assert r <= arrival[(p[1], p[2])]
    _check_all_pieces_placed_once(rows, lengths, seq_len)


def test_packer_state_round_trip_gives_the_same_rows():
    rng = np.random.default_rng(2)
    pieces = [(0, i, 0, int(n)) for i, n in enumerate(rng.integers(1, 65, size=300))]
    a = Packer(64)
    for p in pieces[:100]:
        a.add(p)
    for _ in range(20):
        a.next_row()
    b = Packer(64)
    b.load_state_dict(a.state_dict())
    for p in pieces[100:]:
        a.add(p)
        b.add(p)
    while len(a):
        assert a.next_row() == b.next_row()
    assert len(b) == 0


def test_packer_refuses_pieces_longer_than_a_row_and_bad_methods():
    with pytest.raises(ValueError, match="cannot go into rows"):
        Packer(8).add((0, 0, 0, 9))
    with pytest.raises(ValueError, match="best_fit"):
        Packer(8, "first_fit")  # type: ignore[arg-type]
