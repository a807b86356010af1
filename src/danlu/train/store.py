"""Read a pretraining token store written by `danlu data tokenize` (memory-mapped; the corpus never enters RAM).

Layout of a store folder:

    STORE/
      store.json               dtype, vocab size, bos/eos/pad ids, list of shards   (written at the end)
      report.json              the tokenize run's report (status "complete" marks a finished store)
      rejects.jsonl            input lines that could not be used, with file, line and reason
      shards/NNNNN.tokens      raw token ids of many documents back to back (uint16 if vocab < 65536, else uint32)
      shards/NNNNN.index.npz   per document: offset + length into the shard, id hash, source code, record id
      shards/NNNNN.json        shard summary; written last, so its presence marks a completed shard

Each document is stored framed: bos (if the tokenizer has one) + tokens + eos (if it has one).

Held-out split (per store, deterministic, independent of document order): a document is held out when the
64-bit hash of its record id, divided by 2**64, is below `heldout_fraction` (default 1%); when that selects fewer
than `min_heldout_docs`, the documents with the smallest hashes are added until there are that many (but never
more than a tenth of the store, so a store of under 10 documents holds out only what the hash selects). Training
never reads held-out documents; `heldout_batches` reads only them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from danlu.runs import read_report

STORE_FORMAT = 1
HELDOUT_FRACTION = 0.01
MIN_HELDOUT_DOCS = 4


def id_hash(record_id: str) -> int:
    """The 64-bit hash of a record id that decides the held-out split (stable across runs and machines)."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(record_id.encode("utf-8"), digest_size=8).digest(), "little")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size < 65536 else np.dtype(np.uint32)


@dataclass
class Split:
    """Document numbers (into the store) used for training and held out for evaluation, both ascending."""

    train: np.ndarray
    heldout: np.ndarray


class TokenStore:
    """A finished token store: document lengths in memory, tokens memory-mapped shard by shard."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "store.json"
        if read_report(self.path) is None or not meta_path.exists():
            raise FileNotFoundError(
                f"{self.path}: not a finished token store (no complete report.json/store.json); "
                f"run `danlu data tokenize ... -o {self.path}` first"
            )
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if self.meta.get("format") != STORE_FORMAT:
            raise ValueError(f"{meta_path}: store format {self.meta.get('format')}, this danlu reads {STORE_FORMAT}")
        self.dtype = np.dtype(self.meta["dtype"])
        self.vocab_size: int = self.meta["vocab_size"]
        self.bos_id: int | None = self.meta["bos_id"]
        self.eos_id: int | None = self.meta["eos_id"]
        self.pad_id: int = self.meta["pad_id"]
        self.shard_names: list[str] = self.meta["shards"]
        offsets, lengths, hashes, shard_of, src_codes, names = [], [], [], [], [], []
        for k, name in enumerate(self.shard_names):
            with np.load(self.path / "shards" / f"{name}.index.npz", allow_pickle=False) as z:
                offsets.append(z["offsets"])
                lengths.append(z["lengths"])
                hashes.append(z["id_hash"])
                shard_of.append(np.full(len(z["lengths"]), k, dtype=np.int32))
                # Source names are stored per shard; remap to one store-wide table.
                local = [str(s) for s in z["source_names"]]
                for s in local:
                    if s not in names:
                        names.append(s)
                remap = np.array([names.index(s) for s in local] or [0], dtype=np.int32)
                src_codes.append(remap[z["source_codes"]] if len(local) else z["source_codes"].astype(np.int32))
        cat = (lambda xs, dt: np.concatenate(xs).astype(dt, copy=False) if xs else np.zeros(0, dt))
        self.offsets = cat(offsets, np.int64)
        self.lengths = cat(lengths, np.int64)
        self.id_hashes = cat(hashes, np.uint64)
        self.shard_of = cat(shard_of, np.int32)
        self.source_codes = cat(src_codes, np.int32)
        self.source_names = names
        self._maps: dict[int, np.memmap] = {}

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())

    def _shard(self, k: int) -> np.ndarray:
        m = self._maps.get(k)
        if m is None:
            f = self.path / "shards" / f"{self.shard_names[k]}.tokens"
            m = np.memmap(f, dtype=self.dtype, mode="r") if f.stat().st_size else np.zeros(0, self.dtype)
            self._maps[k] = m
        return m

    def doc(self, i: int, start: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens of document `i` (framed), or the window [start, start+length) of it; a read-only view."""
        n = int(self.lengths[i])
        end = n if length is None else min(n, start + length)
        off = int(self.offsets[i])
        return self._shard(int(self.shard_of[i]))[off + start : off + end]

    def ids(self) -> list[str]:
        """Record ids of all documents, in store order (read from the index on demand)."""
        out: list[str] = []
        for name in self.shard_names:
            with np.load(self.path / "shards" / f"{name}.index.npz", allow_pickle=False) as z:
                out.extend(str(x) for x in z["ids"])
        return out

    def split(self, heldout_fraction: float = HELDOUT_FRACTION, min_heldout_docs: int = MIN_HELDOUT_DOCS) -> Split:
        """The deterministic train/held-out split described in the module docstring."""
        n = len(self)
        threshold = np.uint64(min(int(heldout_fraction * 2.0**64), 2**64 - 1))
        held = self.id_hashes < threshold
        want = min(min_heldout_docs, n // 10)
        if held.sum() < want:
            order = np.argsort(self.id_hashes, kind="stable")
            held[order[:want]] = True
        return Split(train=np.flatnonzero(~held), heldout=np.flatnonzero(held))
