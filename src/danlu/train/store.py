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

Damage is caught, never trained on: store.json records per shard its size, a sampled hash (SAMPLES blocks of
BLOCK bytes, read at every open: a shard truncated, extended or overwritten is refused in milliseconds) and a
full blake2b hash (read only by `danlu data verify STORE`, with the index and the ids' range). Every problem is
a StoreError naming the store, the file and the damage.

Held-out split (per store, deterministic, independent of document order): a document is held out when the
64-bit hash of its record id, divided by 2**64, is below `heldout_fraction` (default 1%); when that selects fewer
than `min_heldout_docs`, the documents with the smallest hashes are added until there are that many (but never
more than a tenth of the store, so a store of under 10 documents holds out only what the hash selects). Training
never reads held-out documents; `heldout_batches` reads only them.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from danlu.names import display, safe_name
from danlu.runs import read_report

STORE_FORMAT = 1
HELDOUT_FRACTION = 0.01
MIN_HELDOUT_DOCS = 4
SAMPLES, BLOCK = 16, 4096  # the sampled hash: 64 KiB read per shard at open
INDEX_ARRAYS = ("offsets", "lengths", "id_hash", "ids", "source_names", "source_codes")


class StoreError(ValueError):
    """A token store that is damaged: the message names the store, the file, the damage and what to do."""

    def __init__(self, store: Path, file: str, damage: str):
        self.store, self.file, self.damage = Path(store), file, damage
        super().__init__(f"token store {display(store)}: {file}: {damage}. Check the whole store with `danlu data "
                         f"verify {display(store)}`; re-tokenize it with `danlu data tokenize ... -o "
                         f"{display(store)} --force`")


def file_hash(path: str | Path) -> str:
    """blake2b-128 of a file's content (tokenizer.json's identity, a shard's full check)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tokenizer_sha(tokenizer_dir: str | Path) -> str:
    """What store.json's tokenizer_sha records: the hash of the tokenizer folder's tokenizer.json."""
    return file_hash(Path(tokenizer_dir) / "tokenizer.json")


def _sample_spans(size: int) -> list[tuple[int, int]]:
    if size <= SAMPLES * BLOCK:
        return [(0, size)]
    return [(k * (size - BLOCK) // (SAMPLES - 1), BLOCK) for k in range(SAMPLES)]


def sample_hash(data: bytes | memoryview | None = None, path: str | Path | None = None) -> str:
    """The sampled hash of a shard's bytes (in memory, or read from `path` with a few seeks): its size and
    SAMPLES evenly spaced blocks, the first and the last included."""
    if data is not None:
        view = memoryview(data).cast("B")
        size = len(view)
        parts = [view[o : o + n] for o, n in _sample_spans(size)]
    else:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            parts = []
            for o, n in _sample_spans(size):
                f.seek(o)
                parts.append(f.read(n))
    h = hashlib.blake2b(size.to_bytes(8, "little"), digest_size=16)
    for part in parts:
        h.update(part)
    return h.hexdigest()


def shard_check(flat: np.ndarray) -> dict:
    """What the writer records for a shard's token file (see the module docstring)."""
    view = memoryview(np.ascontiguousarray(flat)).cast("B")
    return {"bytes": len(view), "sample": sample_hash(view),
            "blake2b": hashlib.blake2b(view, digest_size=16).hexdigest()}


def read_meta(path: Path) -> dict:
    """store.json, checked: the fields the reader relies on, with sane types and safe shard names."""
    meta_path = path / "store.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise StoreError(path, "store.json", f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except ValueError as e:
        raise StoreError(path, "store.json", f"not valid JSON ({e})") from None
    except OSError as e:
        raise StoreError(path, "store.json", f"cannot be read ({e.strerror or e})") from None
    if not isinstance(meta, dict):
        raise StoreError(path, "store.json", f"expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != STORE_FORMAT:
        raise StoreError(path, "store.json", f"store format {meta.get('format')!r}; this danlu reads {STORE_FORMAT}")
    problems = []
    if meta.get("dtype") not in ("<u2", "<u4", "uint16", "uint32"):
        problems.append(f"dtype {meta.get('dtype')!r} (expected <u2 or <u4)")
    vocab = meta.get("vocab_size")
    if not (isinstance(vocab, int) and not isinstance(vocab, bool) and vocab > 0):
        problems.append(f"vocab_size {vocab!r} (expected a positive integer)")
        vocab = None
    for key in ("bos_id", "eos_id", "pad_id"):
        v = meta.get(key)
        ok = v is None if key != "pad_id" else False
        ok = ok or (isinstance(v, int) and not isinstance(v, bool) and v >= 0 and (vocab is None or v < vocab))
        if not ok:
            problems.append(f"{key} {v!r} (expected an id below vocab_size {vocab})")
    shards = meta.get("shards")
    if not (isinstance(shards, list) and all(isinstance(x, str) for x in shards)):
        problems.append(f"shards {shards!r} (expected a list of names)")
    else:
        for name in shards:
            try:
                safe_name(name, "shard name")
            except ValueError as e:
                problems.append(str(e))
    checks = meta.get("checks", {})
    if not isinstance(checks, dict):
        problems.append("checks (expected an object of per-shard checks)")
    if problems:
        raise StoreError(path, "store.json", "invalid " + "; ".join(problems))
    return meta


def load_index(path: Path, name: str, arrays: tuple[str, ...] = INDEX_ARRAYS) -> dict[str, np.ndarray]:
    """A shard's index arrays (np.load checks the zip's CRCs), or StoreError."""
    f = f"shards/{name}.index.npz"
    try:
        with np.load(path / f, allow_pickle=False) as z:
            missing = [a for a in arrays if a not in z.files]
            if missing:
                raise StoreError(path, f, f"damaged index: no {', '.join(missing)} array")
            return {a: z[a] for a in arrays}
    except StoreError:
        raise
    except FileNotFoundError:
        raise StoreError(path, f, "missing") from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise StoreError(path, f, f"damaged index ({type(e).__name__}: {e})") from None


def check_shard(path: Path, meta: dict, name: str, index: dict[str, np.ndarray], full: bool = False) -> int:
    """The shard's token file against its index and store.json's checks; returns its token count. `full`
    also compares the full hash (reads the whole file)."""
    f = f"shards/{name}.tokens"
    itemsize = np.dtype(meta["dtype"]).itemsize
    offsets, lengths = index["offsets"], index["lengths"]
    n = len(lengths)
    if any(len(index[a]) != n for a in ("offsets", "id_hash", "source_codes")) or \
            ("ids" in index and len(index["ids"]) != n):
        raise StoreError(path, f"shards/{name}.index.npz", "damaged index: its arrays have different lengths")
    unknown_source = n and int(index["source_codes"].max()) >= max(1, len(index["source_names"]))
    if n and (lengths.min() < 0 or offsets.min() < 0 or unknown_source):
        raise StoreError(path, f"shards/{name}.index.npz", "damaged index: negative offsets/lengths or unknown sources")
    try:
        size = (path / f).stat().st_size
    except OSError as e:
        what = "missing" if isinstance(e, FileNotFoundError) else f"cannot be read ({e.strerror})"
        raise StoreError(path, f, what) from None
    if size % itemsize:
        raise StoreError(path, f, f"odd size: {size} bytes is not a whole number of {itemsize}-byte tokens "
                                  "(truncated?)")
    tokens = int(lengths.sum())
    if size != tokens * itemsize:
        raise StoreError(path, f, f"holds {size // itemsize} tokens but its index has {tokens} (truncated or "
                                  "overwritten)")
    if n and int((offsets + lengths).max()) > tokens:
        raise StoreError(path, f"shards/{name}.index.npz", "damaged index: documents end past the shard's end")
    check = meta.get("checks", {}).get(name)
    if isinstance(check, dict):
        if check.get("bytes") != size:
            raise StoreError(path, f, f"{size} bytes, but {check.get('bytes')} were written (truncated or replaced)")
        if check.get("sample") and sample_hash(path=path / f) != check["sample"]:
            raise StoreError(path, f, "its content differs from what was written (sampled hash mismatch: "
                                      "overwritten or corrupted)")
        if full and check.get("blake2b") and file_hash(path / f) != check["blake2b"]:
            raise StoreError(path, f, "its content differs from what was written (full hash mismatch)")
    return tokens


def id_hash(record_id: str) -> int:
    """The 64-bit hash of a record id that decides the held-out split (stable across runs and machines)."""
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
        if read_report(self.path) is None or not (self.path / "store.json").exists():
            raise FileNotFoundError(
                f"{display(self.path)}: not a finished token store (no complete report.json/store.json); "
                f"run `danlu data tokenize ... -o {display(self.path)}` first"
            )
        self.meta = read_meta(self.path)
        self.dtype = np.dtype(self.meta["dtype"])
        self.vocab_size: int = self.meta["vocab_size"]
        self.bos_id: int | None = self.meta["bos_id"]
        self.eos_id: int | None = self.meta["eos_id"]
        self.pad_id: int = self.meta["pad_id"]
        self.shard_names: list[str] = self.meta["shards"]
        offsets, lengths, hashes, shard_of, src_codes, names = [], [], [], [], [], []
        for k, name in enumerate(self.shard_names):
            z = load_index(self.path, name, tuple(a for a in INDEX_ARRAYS if a != "ids"))
            check_shard(self.path, self.meta, name, z)
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
        """Tokens of document `i` (framed), or the window [start, start+length) of it; a read-only view.
        An id beyond the vocabulary (a shard damaged after its hash was taken) is a StoreError, not an
        IndexError deep inside the model."""
        n = int(self.lengths[i])
        end = n if length is None else min(n, start + length)
        off = int(self.offsets[i])
        k = int(self.shard_of[i])
        view = self._shard(k)[off + start : off + end]
        if view.size and int(view.max()) >= self.vocab_size:
            raise StoreError(self.path, f"shards/{self.shard_names[k]}.tokens",
                             f"document {i} holds id {int(view.max())}, beyond the vocabulary of {self.vocab_size}")
        return view

    def ids(self) -> list[str]:
        """Record ids of all documents, in store order (read from the index on demand)."""
        out: list[str] = []
        for name in self.shard_names:
            out.extend(str(x) for x in load_index(self.path, name, ("ids",))["ids"])
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
