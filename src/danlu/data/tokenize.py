"""`danlu data tokenize`: Document JSONL -> an on-disk token store that every pretraining run streams from.

The input is read once, in order, and cut into shards of about `shard_mb` MB of text. Each shard is encoded in a
process pool (danlu.tokenizer.encode does the encoding) and written atomically as a token file, an index and a
summary; the summary is written last and carries a fingerprint of the inputs, tokenizer and settings. A rerun
after a crash recomputes the same shard boundaries and skips every shard whose summary matches, and a finished
store (complete report.json with the same fingerprint) is not redone at all. See danlu.train.store for the
layout and the reader.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from danlu.config import StrictModel
from danlu.jsonl import BadLine, JsonlWriter, jsonl_files, read_jsonl
from danlu.records import record_id
from danlu.runs import atomic_path, atomic_write_json, read_report, start_run
from danlu.train.store import STORE_FORMAT, id_hash, token_dtype

MAX_SHARD_DOCS = 200_000
ENCODE_BATCH = 512  # texts per encode_batch call inside a worker (bounds the memory of one call)


class TokenizeConfig(StrictModel):
    inputs: list[str]
    out: str
    tokenizer: str
    source: str | None = None  # overrides each record's "source" field
    workers: int = 0  # 0: one per CPU core
    shard_mb: float = 32.0


def _file_sha(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fingerprint(files: list[Path], cfg: TokenizeConfig) -> str:
    """Identifies what the store holds: inputs (path, size, mtime), tokenizer contents, source and shard size."""
    parts = {
        "format": STORE_FORMAT,
        "inputs": [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files],
        "tokenizer": _file_sha(Path(cfg.tokenizer) / "tokenizer.json"),
        "source": cfg.source,
        "shard_mb": cfg.shard_mb,
    }
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=16).hexdigest()


def _special_ids(tokenizer_dir: Path) -> tuple[int, int | None, int | None, int]:
    """(vocab size, bos, eos, pad) as danlu.tokenizer.encode.load_encoder reads them, without building an encoder
    in the parent process; pad falls back to eos, then 0 (padding is never trained)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    bos, eos, pad = (tok.token_to_id(t) for t in ("<|bos|>", "<|eos|>", "<|pad|>"))
    if pad is None:
        pad = eos if eos is not None else 0
    return tok.get_vocab_size(with_added_tokens=True), bos, eos, pad


# --- worker side -------------------------------------------------------------------------------------------

_ENCODERS: dict[str, object] = {}


def _encoder(tokenizer_dir: str, threads: int | None):
    enc = _ENCODERS.get(tokenizer_dir)
    if enc is None:
        from danlu.tokenizer.encode import load_encoder

        enc = _ENCODERS[tokenizer_dir] = load_encoder(tokenizer_dir, threads=threads)
    return enc


def _write_shard(job: dict) -> dict:
    """Encode one shard's texts and write its token file, index and (last) summary. Runs in a worker."""
    t0 = time.perf_counter()
    enc = _encoder(job["tokenizer"], job["threads"])
    if (enc.vocab_size, enc.bos_id, enc.eos_id) != (job["vocab_size"], job["bos"], job["eos"]):
        raise ValueError(f"{job['tokenizer']}: the encoder's vocab size/bos/eos differ from tokenizer.json's")
    dtype = np.dtype(job["dtype"])
    texts: list[str] = job["texts"]
    encoded: list = []
    for i in range(0, len(texts), ENCODE_BATCH):
        encoded.extend(enc.encode_batch(texts[i : i + ENCODE_BATCH]))
    pre = [enc.bos_id] if enc.bos_id is not None else []
    post = [enc.eos_id] if enc.eos_id is not None else []
    lengths = np.array([len(ids) + len(pre) + len(post) for ids in encoded], dtype=np.int64)
    offsets = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths):
        np.cumsum(lengths[:-1], out=offsets[1:])
    flat = np.empty(int(lengths.sum()), dtype=dtype)
    for off, n, ids in zip(offsets.tolist(), lengths.tolist(), encoded):
        row = flat[off : off + n]
        if pre:
            row[0] = pre[0]
        row[len(pre) : n - len(post)] = ids
        if post:
            row[n - 1] = post[0]
    if len(flat) and int(flat.max()) >= job["vocab_size"]:
        raise ValueError(f"{job['tokenizer']}: encoder produced id {int(flat.max())} >= vocab size {job['vocab_size']}")

    shard_dir = Path(job["store"]) / "shards"
    name = job["name"]
    with atomic_path(shard_dir / f"{name}.tokens") as tmp:
        flat.tofile(tmp)
    names = sorted(set(job["sources"]))
    with atomic_path(shard_dir / f"{name}.index.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                offsets=offsets,
                lengths=lengths,
                id_hash=np.array([id_hash(x) for x in job["ids"]], dtype=np.uint64),
                ids=np.array(job["ids"], dtype=str),
                source_names=np.array(names, dtype=str),
                source_codes=np.array([names.index(s) for s in job["sources"]], dtype=np.uint16),
            )
    summary = {
        "fingerprint": job["fingerprint"],
        "docs": len(lengths),
        "tokens": int(lengths.sum()),
        "text_bytes": job["text_bytes"],
        "sources": dict(Counter(job["sources"])),
        "rejects": job["rejects"],
        "encode_s": round(time.perf_counter() - t0, 3),
    }
    atomic_write_json(shard_dir / f"{name}.json", summary)
    return summary


# --- main side ---------------------------------------------------------------------------------------------


def _shards(files: list[Path], shard_bytes: int, source: str | None):
    """Yield shard jobs (texts, ids, sources, rejects) cut at the same places on every run over the same input."""
    job = _new_job()
    for path in files:
        for lineno, rec in read_jsonl(path, require={"text": str}):
            job["lines"] += 1
            if isinstance(rec, BadLine):
                job["rejects"].append(rec.as_reject("tokenize"))
            elif not rec["text"].strip():
                job["rejects"].append(BadLine(str(path), lineno, "empty text").as_reject("tokenize"))
            else:
                job["ids"].append(record_id(rec, path, lineno))
                src = source or rec.get("source")
                job["sources"].append(src if isinstance(src, str) and src else "unknown")
                job["texts"].append(rec["text"])
                job["text_bytes"] += len(rec["text"].encode("utf-8"))
            if job["text_bytes"] >= shard_bytes or len(job["texts"]) >= MAX_SHARD_DOCS:
                yield job
                job = _new_job()
    if job["lines"]:
        yield job


def _new_job() -> dict:
    return {"texts": [], "ids": [], "sources": [], "rejects": [], "text_bytes": 0, "lines": 0}


def _pool_context():
    """fork where the OS has it: workers start in milliseconds with danlu already imported, and (unlike spawn)
    a caller's script needs no `if __name__ == "__main__"` guard. The parent has not run a tokenizer (special ids
    come from tokenizer.json), so no tokenizer thread pool is forked."""
    return get_context("fork" if "fork" in get_all_start_methods() else "spawn")


def _completed(store: Path, name: str, fingerprint: str, itemsize: int) -> dict | None:
    """The summary of a shard finished by an earlier run with the same fingerprint, or None."""
    try:
        summary = json.loads((store / "shards" / f"{name}.json").read_text(encoding="utf-8"))
        size = (store / "shards" / f"{name}.tokens").stat().st_size
    except (OSError, ValueError):
        return None
    ok = summary.get("fingerprint") == fingerprint and size == summary.get("tokens", -1) * itemsize
    return summary if ok else None


def _remove_leftovers(shard_dir: Path, keep: set[str]) -> None:
    """Temporary files of a killed run, and shards of an earlier, different run beyond this run's last shard."""
    for f in shard_dir.iterdir():
        if f.name.split(".")[0] not in keep:  # ".00003.tokens.x1y2.tmp" splits to "", never kept
            f.unlink(missing_ok=True)


def tokenize(
    inputs: list[str | Path],
    out: str | Path,
    tokenizer: str | Path,
    source: str | None = None,
    workers: int = 0,
    shard_mb: float = 32.0,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Tokenize Document JSONL files (or folders of them) into the token store `out`; returns report.json's dict.

    A store already finished from the same inputs and tokenizer is returned as is (report["reused"] is True)
    unless `force`; an unfinished one continues from its completed shards.
    """
    files = jsonl_files(inputs)
    tok_dir = Path(tokenizer)
    if not (tok_dir / "tokenizer.json").exists():
        raise FileNotFoundError(f"{tok_dir}: not a Hugging Face tokenizer folder (no tokenizer.json)")
    cfg = TokenizeConfig(
        inputs=[str(p) for p in inputs], out=str(out), tokenizer=str(tok_dir), source=source,
        workers=workers or (os.cpu_count() or 1), shard_mb=shard_mb,
    )
    store = Path(out)
    fingerprint = _fingerprint(files, cfg)
    done = read_report(store)
    if done is not None and done.get("fingerprint") == fingerprint and not force:
        return {**done, "reused": True}

    run = start_run(store, "tokenize", cfg)
    vocab_size, bos, eos, pad = _special_ids(tok_dir)
    dtype = token_dtype(vocab_size)
    run.log.info("%d input file(s); vocab %d -> %s tokens; %d worker(s)", len(files), vocab_size, dtype, cfg.workers)
    (store / "shards").mkdir(exist_ok=True)

    summaries: dict[str, dict] = {}
    lines_in = 0
    reused = 0
    fresh_bytes = 0
    t0 = time.perf_counter()
    total_bytes = sum(p.stat().st_size for p in files)
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenize", disable=not progress)
    pool = ProcessPoolExecutor(cfg.workers, mp_context=_pool_context()) if cfg.workers > 1 else None
    pending: dict[Future, str] = {}
    try:
        for k, job in enumerate(_shards(files, int(shard_mb * 2**20), source)):
            name = f"{k:05d}"
            lines_in += job.pop("lines")
            prior = None if force else _completed(store, name, fingerprint, dtype.itemsize)
            if prior is not None:
                summaries[name] = prior
                reused += 1
                bar.update(prior["text_bytes"])
                continue
            fresh_bytes += job["text_bytes"]
            job.update(name=name, store=str(store), tokenizer=str(tok_dir), dtype=dtype.str,
                       vocab_size=vocab_size, bos=bos, eos=eos, fingerprint=fingerprint,
                       threads=1 if pool else None)  # one encoder thread per worker process: no oversubscription
            if pool is None:
                summaries[name] = _write_shard(job)
                bar.update(job["text_bytes"])
                continue
            pending[pool.submit(_write_shard, job)] = name
            while len(pending) >= 2 * cfg.workers:  # bound the texts held in memory
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    summaries[pending.pop(fut)] = s = fut.result()
                    bar.update(s["text_bytes"])
        for fut in list(pending):
            summaries[pending.pop(fut)] = s = fut.result()
            bar.update(s["text_bytes"])
        bar.update(max(0, bar.total - bar.n))  # it counts text bytes against file bytes: close the gap
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    elapsed = time.perf_counter() - t0

    names = sorted(summaries)
    _remove_leftovers(store / "shards", set(names))
    rejects = [r for n in names for r in summaries[n]["rejects"]]
    with JsonlWriter(store / "rejects.jsonl") as w:
        for r in rejects:
            w.write(r)
    atomic_write_json(
        store / "store.json",
        {"format": STORE_FORMAT, "dtype": dtype.str, "vocab_size": vocab_size, "bos_id": bos, "eos_id": eos,
         "pad_id": pad, "tokenizer_sha": _file_sha(tok_dir / "tokenizer.json"), "shards": names},
    )
    docs = sum(summaries[n]["docs"] for n in names)
    tokens = sum(summaries[n]["tokens"] for n in names)
    text_bytes = sum(summaries[n]["text_bytes"] for n in names)
    sources: Counter = Counter()
    for n in names:
        sources.update(summaries[n]["sources"])
    reasons = Counter(r["reason"].split(":")[0] for r in rejects)
    report = {
        "fingerprint": fingerprint,
        "inputs": [str(p) for p in files],
        "counts": {"in": lines_in, "out": docs, "removed": len(rejects), "removed_by_reason": dict(reasons)},
        "records_in": lines_in,
        "docs": docs,
        "rejected": len(rejects),
        "rejected_by_reason": dict(reasons),
        "tokens": tokens,
        "text_bytes": text_bytes,
        "sources": dict(sources),
        "dtype": dtype.name,
        "vocab_size": vocab_size,
        "shards": len(names),
        "shards_reused": reused,
        "timings": {"tokenize_s": round(elapsed, 3)},
        "mb_per_s": round(fresh_bytes / 2**20 / max(elapsed, 1e-9), 3),  # text encoded by this run only
        "tokens_per_doc": round(tokens / docs, 1) if docs else 0.0,
        "bytes_per_token": round(text_bytes / tokens, 3) if tokens else 0.0,
    }
    assert lines_in == docs + len(rejects), "every input record is either a document or a reject"
    run.log.info("%d docs, %d tokens, %d rejected; %.2f MB/s", docs, tokens, len(rejects), report["mb_per_s"])
    return run.finish(report)
