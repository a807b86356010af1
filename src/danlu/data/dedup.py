"""Deduplication: exact (hash of normalised text) and near-duplicate (MinHash + LSH banding).

The MinHash is vectorised numpy over a whole batch of documents, instead of datasketch's one object per
document with one Python hash call per shingle:

- shingles are character n-grams of the normalised text; each gets a 32-bit hash from a polynomial rolling
  hash over the code points (numpy, all shingles of a batch at once) - documented equivalent of datasketch's
  sha1_hash32: a different 32-bit hash family for shingles, so signatures match datasketch exactly only when
  datasketch is given the same shingle hashes (tests/test_dedup.py checks that bit for bit);
- the permutations are datasketch 2.x's default "affine32" scheme with its seeds: fmix32(h), then
  a_k * h + b_k mod 2^32 with (a, b) drawn from np.random.RandomState(seed) exactly as datasketch draws them;
- LSH uses datasketch's optimal (bands, rows) for the threshold, and documents sharing any band are joined
  into one cluster (connected components); the earliest document of a cluster is kept.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import xxhash

_WS = re.compile(r"\s+")
_MAX32 = np.uint32(0xFFFFFFFF)
_POLY = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime as the polynomial base


def normalise(text: str) -> str:
    """What "the same text" means for dedup: NFKC, case-folded, whitespace runs as one space."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def exact_key(text: str) -> bytes:
    return xxhash.xxh3_128_digest(normalise(text).encode("utf-8"))


def shingle_hashes(text: str, ngram: int = 5) -> np.ndarray:
    """32-bit hashes of every character n-gram of `text` (already normalised); a shorter text is one shingle."""
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if len(cps) == 0:
        return np.zeros(0, dtype=np.uint32)
    n = min(ngram, len(cps))
    length = len(cps) - n + 1
    h = np.zeros(length, dtype=np.uint64)
    for k in range(n):
        h = h * _POLY + cps[k : k + length]
    return ((h >> np.uint64(32)) ^ h).astype(np.uint32)


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3 32-bit finaliser (what datasketch's affine32 scheme applies before permuting)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def permutations(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 (a, b), drawn in the same order from the same generator."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def signatures(
    texts: Iterable[str], *, num_perm: int = 128, ngram: int = 5, seed: int = 1, batch_shingles: int = 1 << 14
) -> np.ndarray:
    """MinHash signatures (n_docs, num_perm) uint32 of the normalised texts; empty texts get all 0xFFFFFFFF."""
    a, b = permutations(num_perm, seed)
    hashes = [shingle_hashes(normalise(t), ngram) for t in texts]
    sig = np.full((len(hashes), num_perm), _MAX32, dtype=np.uint32)
    if not hashes:
        return sig
    doc_of = np.repeat(np.arange(len(hashes)), [len(h) for h in hashes])
    flat = _fmix32(np.concatenate(hashes))
    a_col, b_col = a[:, None], b[:, None]
    buf = np.empty((num_perm, batch_shingles), dtype=np.uint32)
    for s in range(0, len(flat), batch_shingles):
        hv, docs = flat[s : s + batch_shingles], doc_of[s : s + batch_shingles]
        phv = buf[:, : len(hv)]  # (num_perm, shingles): the min runs along contiguous rows
        np.multiply(a_col, hv[None, :], out=phv)  # uint32 wraparound is the mod 2^32
        np.add(phv, b_col, out=phv)
        starts = np.flatnonzero(np.r_[True, docs[1:] != docs[:-1]])
        mins = np.minimum.reduceat(phv, starts, axis=1).T
        ids = docs[starts]
        sig[ids] = np.minimum(sig[ids], mins)
    return sig


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) minimising false positives + false negatives (datasketch's own optimiser, same weights)."""
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, 0.5, 0.5)


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        p = self.parent
        while p[x] != x:
            p[x] = p[p[x]]
            x = p[x]
        return x

    def union(self, x: int, y: int) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx != ry:  # the smaller index (earlier document) stays the root
            self.parent[max(rx, ry)] = min(rx, ry)


def lsh_clusters(sig: np.ndarray, bands: int, rows: int, skip: Sequence[bool] | None = None) -> np.ndarray:
    """For each document the index of its cluster's earliest member (itself if unique)."""
    n = len(sig)
    uf = _UnionFind(n)
    active = np.ones(n, dtype=bool) if skip is None else ~np.asarray(skip, dtype=bool)
    idx = np.flatnonzero(active)
    for band in range(bands):
        keys = np.ascontiguousarray(sig[idx, band * rows : (band + 1) * rows])
        keys = keys.view(np.dtype((np.void, keys.dtype.itemsize * rows))).reshape(-1)
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        shared = counts[inverse] > 1
        if not shared.any():
            continue
        first = np.full(len(counts), n, dtype=np.int64)
        np.minimum.at(first, inverse[shared], idx[shared])
        for member, root in zip(idx[shared].tolist(), first[inverse[shared]].tolist()):
            if member != root:
                uf.union(root, member)
    return np.array([uf.find(i) for i in range(n)], dtype=np.int64)


def exact_clusters(texts: Iterable[str]) -> np.ndarray:
    """For each document the index of the first document with the same normalised text."""
    first: dict[bytes, int] = {}
    return np.array([first.setdefault(exact_key(t), i) for i, t in enumerate(texts)], dtype=np.int64)


@dataclass
class NearDupResult:
    representative: np.ndarray  # index of the kept member of each document's cluster
    bands: int
    rows: int


def near_clusters(
    texts: Sequence[str], *, threshold: float = 0.8, num_perm: int = 128, ngram: int = 5, seed: int = 1
) -> NearDupResult:
    """Near-duplicate clusters of `texts` (MinHash + LSH at `threshold` estimated Jaccard)."""
    sig = signatures(texts, num_perm=num_perm, ngram=ngram, seed=seed)
    bands, rows = lsh_params(threshold, num_perm)
    empty = [not t.strip() for t in texts]
    return NearDupResult(lsh_clusters(sig, bands, rows, skip=empty), bands, rows)
