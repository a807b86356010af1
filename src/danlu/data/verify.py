"""`danlu data verify STORE`: check a token store completely, without changing it.

Opening a store (danlu.train.store.TokenStore) checks what is cheap: store.json, every index, every shard's
size and sampled hash. This reads everything: each shard's full hash against the one recorded when it was
written, every token id against the vocabulary, the index's id hashes against its ids, and the tokenize
report's totals against the store's. Every problem is listed (one damaged shard does not hide another).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from danlu.names import display
from danlu.runs import read_report
from danlu.train.store import StoreError, check_shard, id_hash, load_index, read_meta

CHUNK = 1 << 24  # tokens per max() over a memory-mapped shard


def verify_store(path: str | Path) -> dict:
    """{"store", "ok", "shards", "documents", "tokens", "problems": [text], "notes": [text]}."""
    store = Path(path)
    result = {"store": str(store), "ok": False, "shards": 0, "documents": 0, "tokens": 0, "problems": [],
              "notes": []}
    problems, notes = result["problems"], result["notes"]
    if not (store / "store.json").is_file():
        problems.append("no such folder" if not store.is_dir() else "not a token store (no store.json)")
        return result
    report = read_report(store)
    if report is None:
        problems.append("report.json: missing or not complete (the tokenize run did not finish)")
    try:
        meta = read_meta(store)
    except StoreError as e:
        problems.append(f"{e.file}: {e.damage}")
        return result
    vocab, dtype = meta["vocab_size"], np.dtype(meta["dtype"])
    checks = meta.get("checks", {})
    for name in meta["shards"]:
        try:
            index = load_index(store, name)
            tokens = check_shard(store, meta, name, index, full=True)
            if name not in checks:
                notes.append(f"shards/{name}.tokens: no hash was recorded (written by an older danlu): its "
                             "structure is checked, its content cannot be")
            _check_ids(store, name, index, tokens, dtype, vocab)
        except StoreError as e:
            problems.append(f"{e.file}: {e.damage}")
            continue
        result["shards"] += 1
        result["documents"] += len(index["lengths"])
        result["tokens"] += tokens
    if report is not None and not problems:
        kept, want_tokens = report.get("counts", {}).get("kept"), report.get("tokens")
        if (kept, want_tokens) != (result["documents"], result["tokens"]):
            problems.append(f"report.json: says {kept} documents and {want_tokens} tokens, the shards hold "
                            f"{result['documents']} and {result['tokens']}")
    result["ok"] = not problems
    return result


def _check_ids(store: Path, name: str, index: dict, tokens: int, dtype: np.dtype, vocab: int) -> None:
    f = f"shards/{name}.tokens"
    data = np.memmap(store / f, dtype=dtype, mode="r") if tokens else np.zeros(0, dtype)
    for start in range(0, tokens, CHUNK):
        block = data[start : start + CHUNK]
        if int(block.max()) >= vocab:
            at = int(np.argmax(block >= vocab))
            doc = int(np.searchsorted(index["offsets"], start + at, side="right")) - 1
            raise StoreError(store, f, f"token {start + at} (in document {doc} of the shard) is id {int(block[at])}, "
                                       f"beyond the vocabulary of {vocab}")
    ids = [str(x) for x in index["ids"]]
    if any(id_hash(x) != int(h) for x, h in zip(ids, index["id_hash"].tolist())):
        raise StoreError(store, f"shards/{name}.index.npz", "damaged index: id hashes do not match the record ids")


def summary_lines(result: dict) -> list[str]:
    r = result
    if r["ok"]:
        lines = [f"{display(r['store'])}: ok: {r['shards']} shards, {r['documents']:,} documents, {r['tokens']:,} "
                 "tokens; every hash, index and id checked"]
    else:
        lines = [f"{display(r['store'])}: DAMAGED ({len(r['problems'])} problem(s))"]
        lines += [f"  - {p}" for p in r["problems"]]
        lines.append(f"  re-tokenize it: danlu data tokenize ... -o {display(r['store'])} --force")
    return lines + [f"  note: {n}" for n in r["notes"]]
