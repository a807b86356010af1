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

At corpus scale nothing here needs the texts together: `dedup_keys` turns a batch of texts into what dedup
keeps per document (a 16-byte exact key, a MinHash signature, an "empty" flag), so a stage computes them in
its workers while streaming and keeps ~0.5 KB per document instead of the text. Clusters are then found from
the keys alone: each band (or the exact key) is cut into hash partitions, every partition is grouped on its
own (`group_pairs`: np.unique, the same on every executor, Ray included), and the pairs (member, earliest
member of its group) join into connected components whose earliest document is kept - the same clusters as
grouping the whole corpus at once, since equal keys always fall into the same partition.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import xxhash

_MAX32 = np.uint32(0xFFFFFFFF)
_POLY = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime as the polynomial base


def normalise(text: str) -> str:
    """What "the same text" means for dedup: NFKC, case-folded, whitespace runs as one space (str.split and the
    regex whitespace class agree on what whitespace is, and split + join is faster than a regex substitution)."""
    return " ".join(nfkc(text).casefold().split())


_ASTRAL = re.compile("[\U00010000-\U0010FFFF]")


@functools.lru_cache(maxsize=1)
def _nfkc_changes() -> tuple[re.Pattern, dict[str, str]]:
    """The characters of the BMP that NFKC changes (2,972 in this Python's Unicode tables: full-width forms,
    ligatures, ...), each with its NFKC form, and a pattern that finds them."""
    table = {}
    for cp in range(0x10000):
        c = chr(cp)
        if (n := unicodedata.normalize("NFKC", c)) != c:
            table[c] = n
    return re.compile("[" + "".join(map(re.escape, table)) + "]"), table


def nfkc(text: str) -> str:
    """unicodedata.normalize("NFKC", text), ~1.6x faster on Chinese text (full-width punctuation in every
    sentence makes every text need normalising, and NFKC was 40% of dedup's cost). Each character NFKC changes is
    replaced by its own NFKC form first: that leaves the NFKC of the whole unchanged (both have the same
    compatibility decomposition), so when the result is normalised - the quick check says so at once - it is the
    NFKC; otherwise (combining marks, jamo that compose across characters) it is normalised as a whole. Text with
    characters beyond the BMP is normalised as a whole."""
    if _ASTRAL.search(text):
        return unicodedata.normalize("NFKC", text)
    pattern, table = _nfkc_changes()
    out = pattern.sub(lambda m: table[m.group()], text)
    return out if unicodedata.is_normalized("NFKC", out) else unicodedata.normalize("NFKC", out)


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
    return normalised_signatures([normalise(t) for t in texts], num_perm=num_perm, ngram=ngram, seed=seed,
                                 batch_shingles=batch_shingles)


def normalised_signatures(norms: Sequence[str], *, num_perm: int = 128, ngram: int = 5, seed: int = 1,
                          batch_shingles: int = 1 << 14) -> np.ndarray:
    """`signatures` of texts already passed through `normalise` (each document's row depends on it alone)."""
    a, b = permutations(num_perm, seed)
    hashes = [shingle_hashes(t, ngram) for t in norms]
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


# (bands, rows) of datasketch's optimiser for common settings: a run then need not import datasketch and
# scipy.integrate (0.5 s) to find them again; tests/test_dedup.py checks every entry against datasketch
_LSH_PARAMS = {
    64: [(14, 4), (12, 5), (10, 6), (9, 7), (8, 8), (7, 9), (5, 11), (4, 15), (3, 21), (2, 32)],
    128: [(25, 5), (21, 6), (18, 7), (16, 8), (14, 9), (11, 11), (9, 13), (8, 16), (5, 25), (3, 42)],
    256: [(42, 6), (36, 7), (32, 8), (28, 9), (25, 10), (21, 12), (17, 15), (13, 19), (9, 28), (5, 51)],
}
KNOWN_LSH_PARAMS = {(round(0.5 + 0.05 * i, 2), n): p for n, ps in _LSH_PARAMS.items() for i, p in enumerate(ps)}


@functools.lru_cache(maxsize=None)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) minimising false positives + false negatives (datasketch's own optimiser, same weights)."""
    if (threshold, num_perm) in KNOWN_LSH_PARAMS:
        return KNOWN_LSH_PARAMS[(threshold, num_perm)]
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, 0.5, 0.5)


def group_pairs(task: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """One partition of a band-join. `task` is (doc indices, their keys: one row of equal width per document);
    returns (members, roots): every document whose key another document shares, with the smallest index
    among them (documents that are their group's smallest index are left out)."""
    idx, keys = task
    if len(idx) < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    keys = np.ascontiguousarray(keys)
    flat = keys.view(np.dtype((np.void, keys.dtype.itemsize * keys.shape[1]))).reshape(-1)
    _, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    shared = counts[inverse] > 1
    if not shared.any():
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    first = np.full(len(counts), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, inverse[shared], idx[shared])
    members, roots = idx[shared], first[inverse[shared]]
    keep = members != roots
    return members[keep], roots[keep]


def partitions(keys: np.ndarray, idx: np.ndarray, parts: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`keys` (rows of idx) cut into `parts` hash partitions by their first 32 bits: equal keys share one."""
    if parts <= 1:
        yield idx, keys
        return
    head = np.ascontiguousarray(keys).view(np.uint8)[:, :4].copy().view(np.uint32).reshape(-1)
    part = head % np.uint32(parts)
    for p in range(parts):
        sel = part == p
        if sel.any():
            yield idx[sel], keys[sel]


def components(n: int, pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """For each of n documents the smallest index of its connected component under the (member, root) pairs.

    Union-find in numpy rounds (scipy.sparse.csgraph would do it too, but importing it costs 0.25 s at the end
    of every run): each document points at a smaller one of its component, roots at themselves; every round
    hooks the larger root of each pair that still spans two trees onto the smaller one, then points every
    document at its root. When no pair spans two trees, each component is one tree, and its root - pointed at
    by all and pointing at no smaller one - is its smallest index."""
    found = [(m, r) for m, r in pairs if len(m)]
    label = np.arange(n, dtype=np.int64)
    if not found:
        return label
    a = np.concatenate([m for m, _ in found])
    b = np.concatenate([r for _, r in found])
    while True:
        ra, rb = label[a], label[b]
        apart = ra != rb
        if not apart.any():
            return label
        ra, rb = ra[apart], rb[apart]
        low = np.minimum(ra, rb)
        np.minimum.at(label, ra, low)
        np.minimum.at(label, rb, low)
        while not np.array_equal(nxt := label[label], label):
            label = nxt


Pairs = Callable[[Iterable[tuple[np.ndarray, np.ndarray]]], Iterable[tuple[np.ndarray, np.ndarray]]]


def _local_pairs(tasks):
    return map(group_pairs, tasks)


def lsh_clusters(sig: np.ndarray, bands: int, rows: int, skip: Sequence[bool] | None = None, *,
                 pairs: Pairs = _local_pairs, parts: int = 1) -> np.ndarray:
    """For each document the index of its cluster's earliest member (itself if unique). `pairs` runs
    group_pairs over the band partitions (in this process by default; an executor passes its own map), `parts`
    is the number of hash partitions per band."""
    n = len(sig)
    active = np.ones(n, dtype=bool) if skip is None else ~np.asarray(skip, dtype=bool)
    idx = np.flatnonzero(active)
    tasks = (t for band in range(bands)
             for t in partitions(sig[idx, band * rows : (band + 1) * rows], idx, parts))
    return components(n, pairs(tasks))


def exact_clusters(texts: Iterable[str]) -> np.ndarray:
    """For each document the index of the first document with the same normalised text."""
    return key_clusters(np.array([np.frombuffer(exact_key(t), dtype=np.uint8) for t in texts],
                                 dtype=np.uint8).reshape(-1, 16))


def key_clusters(keys: np.ndarray, *, pairs: Pairs = _local_pairs, parts: int = 1) -> np.ndarray:
    """`exact_clusters` from precomputed exact keys (n, 16) uint8 (see dedup_keys)."""
    n = len(keys)
    return components(n, pairs(partitions(keys, np.arange(n, dtype=np.int64), parts)))


@dataclass
class DedupKeys:
    """What dedup keeps of a batch of documents: exact keys (n, 16) uint8, MinHash signatures per setting
    (num_perm, ngram, seed) -> (n, num_perm) uint32, and which texts are blank (never near-duplicates)."""

    exact: np.ndarray
    near: dict[tuple[int, int, int], np.ndarray]
    empty: np.ndarray


def dedup_keys(texts: Sequence[str], exact: bool = True,
               near: Iterable[tuple[int, int, int]] = ()) -> DedupKeys:
    """Dedup keys of a batch of texts, each text normalised once for all of them."""
    norms = [normalise(t) for t in texts]
    keys = np.zeros((len(norms), 16 if exact else 0), dtype=np.uint8)
    if exact and norms:
        keys = np.frombuffer(b"".join(xxhash.xxh3_128_digest(t.encode("utf-8")) for t in norms),
                             dtype=np.uint8).reshape(-1, 16)
    sigs = {(p, g, s): normalised_signatures(norms, num_perm=p, ngram=g, seed=s) for p, g, s in near}
    return DedupKeys(keys, sigs, np.array([not t.strip() for t in texts], dtype=bool))


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
