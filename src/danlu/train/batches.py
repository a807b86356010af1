"""The pretraining batch stream: weighted sources -> windows -> best-fit packed rows -> tensors.

    stream = PackedBatches(sources, seq_len=512, batch_size=8, doc_mask=True, seed=0, rank=0, world_size=1)
    batch = next(stream)  # input_ids, labels, position_ids: LongTensor [batch_size, seq_len]

- Mixing: the next document always comes from the source furthest below its weight (tokens drawn / weight), so
  each source's share of training tokens follows its weight exactly, with no sampling noise.
- Order: each source walks its training documents in a permutation drawn from (seed, source, epoch), so every
  epoch over a source is reshuffled; documents are cut into windows (packing.windows) and buffered.
- Packing: packing.Packer, best-fit by default.
- Labels: input_ids, with -100 at padding and at the first token of every piece in a row (its context is not in
  the row, so a target across a document boundary is never trained, with or without doc_mask).
- position_ids: restart at 0 at every piece (and at the padding) when doc_mask, else 0..seq_len-1.
- Ranks: every rank computes the same global rows (batch_size * world_size per step, from document lengths only)
  and materialises its own slice, so the global batch over ranks is, row for row, the single-process stream with
  batch_size * world_size. The state (state_dict) is the same on every rank.
- Held-out documents (see danlu.train.store) are never read here; heldout_batches reads only them.
"""

from __future__ import annotations

import copy
from typing import Iterator

import numpy as np
import torch

from danlu.train.mixing import SourceSpec, normalised_weights
from danlu.train.packing import Method, Packer, Piece, windows
from danlu.train.sources import OpenSource, open_sources
from danlu.train.store import TokenStore

__all__ = ["SourceSpec", "PackedBatches", "heldout_batches"]

STATE_VERSION = 1


def _rows_to_batch(rows: list[list[Piece]], stores: list[TokenStore], seq_len: int, doc_mask: bool) -> dict:
    n = len(rows)
    ids = np.full((n, seq_len), stores[0].pad_id if stores else 0, dtype=np.int64)
    labels = np.full((n, seq_len), -100, dtype=np.int64)
    pos = np.zeros((n, seq_len), dtype=np.int64)
    ramp = np.arange(seq_len, dtype=np.int64)
    for r, row in enumerate(rows):
        at = 0
        for src, doc, start, length in row:
            toks = stores[src].doc(doc, start, length)
            ids[r, at : at + length] = toks
            labels[r, at + 1 : at + length] = toks[1:]
            pos[r, at : at + length] = ramp[:length]
            at += length
        pos[r, at:] = ramp[: seq_len - at]  # padding is its own segment
        if not doc_mask:
            pos[r] = ramp
    return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels),
            "position_ids": torch.from_numpy(pos)}


class PackedBatches:
    """An endless, deterministic, resumable stream of packed batches for pretraining (see the module docstring)."""

    def __init__(
        self,
        sources: list[SourceSpec | dict | OpenSource],
        seq_len: int,
        batch_size: int,
        doc_mask: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        buffer_size: int = 256,
        method: Method = "best_fit",
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..world_size-1 (world_size {world_size})")
        if not sources:
            raise ValueError("no sources given")
        opened = open_sources(sources)
        self.sources = [o.spec for o in opened]
        self.seq_len, self.batch_size, self.doc_mask, self.seed = seq_len, batch_size, doc_mask, seed
        self.rank, self.world_size, self.buffer_size = rank, world_size, buffer_size
        self.stores = [o.store for o in opened]
        self.weights = normalised_weights(self.sources)
        self.train_docs: list[np.ndarray] = [o.train_docs for o in opened]
        for o in opened:
            if len(o.train_docs) == 0 and o.spec.weight > 0:
                raise ValueError(f"source '{o.name}' ({o.spec.store}) has no training documents")
        self.packer = Packer(seq_len, method)
        self._perms: dict[int, tuple[int, np.ndarray]] = {}
        self.last_pieces: list[list[Piece]] = []  # this rank's rows of the last batch (for tests and debugging)
        self._reset_state()

    # --- state --------------------------------------------------------------------------------------------

    def _reset_state(self) -> None:
        n = len(self.sources)
        self.cursors = [{"epoch": 0, "pos": 0, "doc": -1, "start": 0} for _ in range(n)]
        self.drawn = [0] * n
        self.step = 0
        self._stats = {"rows": 0, "tokens": 0, "doc_tokens": 0, "pad_tokens": 0, "cropped_tokens": 0,
                       "overlap_tokens": 0, "targets": 0, "pieces": 0}
        self.packer.load_state_dict({"pieces": []})

    def _fingerprint(self) -> dict:
        # Not the batch size or process count: rows come out in the same order however they are grouped, so a
        # run resumes under another number of processes or another micro-batch size.
        return {"seq_len": self.seq_len, "seed": self.seed,
                "doc_mask": self.doc_mask, "buffer_size": self.buffer_size, "method": self.packer.method,
                "sources": [[s.name, s.store, s.weight, s.heldout_fraction, s.min_heldout_docs] for s in self.sources]}

    def state_dict(self) -> dict:
        """Everything needed to continue with exactly the same batches (plain JSON-able values, same on every rank)."""
        return copy.deepcopy({
            "version": STATE_VERSION, "config": self._fingerprint(), "step": self.step, "cursors": self.cursors,
            "drawn": self.drawn, "stats": self._stats, "packer": self.packer.state_dict(),
        })

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"batch stream state version {state.get('version')}, expected {STATE_VERSION}")
        mine = self._fingerprint()
        diff = [k for k in mine if state["config"].get(k) != mine[k]]
        if diff:
            raise ValueError(f"cannot resume the batch stream: settings changed since the state was saved: {diff}")
        state = copy.deepcopy(state)
        self.step, self.cursors, self.drawn = state["step"], state["cursors"], state["drawn"]
        self._stats = state["stats"]
        self.packer.load_state_dict(state["packer"])

    # --- drawing pieces ------------------------------------------------------------------------------------

    def _perm(self, s: int, epoch: int) -> np.ndarray:
        cached = self._perms.get(s)
        if cached is None or cached[0] != epoch:
            rng = np.random.default_rng([self.seed, s, epoch])
            cached = self._perms[s] = (epoch, rng.permutation(len(self.train_docs[s])))
        return cached[1]

    def _next_piece(self, s: int) -> Piece:
        c = self.cursors[s]
        if c["doc"] < 0:
            if c["pos"] == len(self.train_docs[s]):
                c["epoch"], c["pos"] = c["epoch"] + 1, 0
            c["doc"] = int(self.train_docs[s][self._perm(s, c["epoch"])[c["pos"]]])
            c["pos"] += 1
            c["start"] = 0
        doc_len = int(self.stores[s].lengths[c["doc"]])
        start = c["start"]
        length = min(self.seq_len, doc_len - start)  # as packing.windows cuts it
        piece = (s, c["doc"], start, length)
        if start + length >= doc_len:
            c["doc"] = -1
        else:
            c["start"] = start + self.seq_len - 1
        return piece

    def _fill(self) -> None:
        active = [i for i, w in enumerate(self.weights) if w > 0]
        while len(self.packer) < self.buffer_size:
            s = min(active, key=lambda i: self.drawn[i] / self.weights[i])
            piece = self._next_piece(s)
            self.drawn[s] += piece[3]
            self.packer.add(piece)

    def _global_rows(self) -> list[list[Piece]]:
        rows = []
        for _ in range(self.batch_size * self.world_size):
            self._fill()
            row = self.packer.next_row()
            used = sum(p[3] for p in row)
            st = self._stats
            st["rows"] += 1
            st["tokens"] += self.seq_len
            st["doc_tokens"] += used
            st["pad_tokens"] += self.seq_len - used
            st["targets"] += used - len(row)
            st["pieces"] += len(row)
            st["overlap_tokens"] += sum(1 for p in row if p[2] > 0)  # a later window repeats one token as input
            rows.append(row)
        return rows

    # --- the stream ----------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        rows = self._global_rows()
        self.step += 1
        mine = rows[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        self.last_pieces = mine
        return _rows_to_batch(mine, self.stores, self.seq_len, self.doc_mask)

    def stats(self) -> dict:
        """Counts over the global stream so far (all ranks): rows, tokens, padding and window overlap waste."""
        st = dict(self._stats)
        st["pad_fraction"] = st["pad_tokens"] / st["tokens"] if st["tokens"] else 0.0
        st["waste_fraction"] = (st["pad_tokens"] + st["cropped_tokens"] + st["overlap_tokens"]) / st["tokens"] \
            if st["tokens"] else 0.0
        st["source_tokens"] = {s.name: d for s, d in zip(self.sources, self.drawn)}
        st["source_epochs"] = {
            s.name: c["epoch"] + (c["pos"] / len(docs) if len(docs) else 0.0)
            for s, c, docs in zip(self.sources, self.cursors, self.train_docs)
        }
        return st


def heldout_batches(
    source: SourceSpec | dict | OpenSource, seq_len: int, batch_size: int, max_batches: int | None = None,
    doc_mask: bool = True,
) -> list[dict]:
    """Fixed batches of the source's held-out documents (store order, windowed, best-fit packed over all of them).

    Every next-token target of every held-out document appears exactly once (up to `max_batches`); the last batch
    may have fewer than `batch_size` rows.
    """
    (opened,) = open_sources([source])
    store = opened.store
    packer = Packer(seq_len, "best_fit")
    for d in opened.split.heldout.tolist():
        n = int(store.lengths[d])
        if n >= 2:
            for start, length in windows(n, seq_len):
                packer.add((0, d, start, length))
    batches: list[dict] = []
    rows: list[list[Piece]] = []
    while len(packer) and (max_batches is None or len(batches) < max_batches):
        rows.append(packer.next_row())
        if len(rows) == batch_size or not len(packer):
            batches.append(_rows_to_batch(rows, [store], seq_len, doc_mask))
            rows = []
    return batches
