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
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from pydantic import Field
from tqdm import tqdm

from danlu.config import ConfigError, StrictModel, build_config
from danlu.data.executor import Executor, ExecutorFields
from danlu.jsonl import BadLine, jsonl_files, read_jsonl, write_jsonl
from danlu.records import record_id
from danlu.runs import atomic_path, atomic_write_json, counts, read_report, reason_key, start_run
from danlu.tokenizer.special import SpecialTokens, special_tokens
from danlu.train.store import STORE_FORMAT, file_hash, id_hash, sample_hash, shard_check, token_dtype
from danlu.workers import ItemFailed

MAX_SHARD_DOCS = 200_000
EMPTY = "empty text"
ENCODE_BATCH = 512  # texts per encode_batch call inside a worker (bounds the memory of one call)


class TokenizeConfig(ExecutorFields):  # workers: encoding processes (0: one per CPU core); executor, address
    inputs: list[str]
    out: str
    tokenizer: str
    source: str | None = None  # overrides each record's "source" field
    shard_mb: float = Field(32.0, gt=0)  # MB of text per shard: the unit of resume and parallelism
    # Document framing comes from the tokenizer's own bos_token/eos_token (danlu.tokenizer.special). For a
    # tokenizer that names neither, say what ends a document: an eos_token of its vocabulary, or unframed: true
    # (documents then run into each other in packed rows; a warning says so).
    eos_token: Optional[str] = None
    unframed: bool = False


def _fingerprint(files: list[Path], cfg: TokenizeConfig) -> str:
    """Identifies what the store holds: inputs (path, size, mtime), tokenizer contents, source and shard size."""
    parts = {
        "format": STORE_FORMAT,
        "inputs": [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files],
        "tokenizer": file_hash(Path(cfg.tokenizer) / "tokenizer.json"),
        "source": cfg.source,
        "shard_mb": cfg.shard_mb,
        **({"framing": [cfg.eos_token, cfg.unframed]} if cfg.eos_token or cfg.unframed else {}),
    }
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=16).hexdigest()


def _framing(cfg: TokenizeConfig) -> tuple[SpecialTokens, list[str]]:
    """The tokenizer's special tokens and the warnings to report; refuses to frame nothing unless told to."""
    special = special_tokens(cfg.tokenizer, eos_token=cfg.eos_token)
    if special.framed:
        return special, []
    if not cfg.unframed:
        raise ConfigError(
            f"{cfg.tokenizer}: the tokenizer names neither a bos_token nor an eos_token (tokenizer_config.json), "
            "so documents would run into each other in packed training rows. Choose one: --set eos_token=TOKEN "
            "(a token of its vocabulary that ends each document), or --set unframed=true to store them unframed")
    return special, [f"{cfg.tokenizer} has no bos/eos token: documents are stored without boundary tokens "
                     "(unframed: true)"]


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
    if enc.vocab_size != job["vocab_size"]:
        raise ValueError(f"{job['tokenizer']}: the encoder's vocab size differs from tokenizer.json's")
    dtype = np.dtype(job["dtype"])
    texts: list[str] = job["texts"]
    encoded: list = []
    for i in range(0, len(texts), ENCODE_BATCH):
        encoded.extend(enc.encode_batch(texts[i : i + ENCODE_BATCH]))
    pre = [job["bos"]] if job["bos"] is not None else []
    post = [job["eos"]] if job["eos"] is not None else []
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
    _write_index(shard_dir / f"{name}.index.npz", {
        "offsets": offsets,
        "lengths": lengths,
        "id_hash": np.array([id_hash(x) for x in job["ids"]], dtype=np.uint64),
        "ids": np.array(job["ids"], dtype=str),
        "source_names": np.array(names, dtype=str),
        "source_codes": np.array([names.index(s) for s in job["sources"]], dtype=np.uint16),
    })
    summary = {
        "fingerprint": job["fingerprint"],
        "docs": len(lengths),
        "tokens": int(lengths.sum()),
        "text_bytes": job["text_bytes"],
        "sources": dict(Counter(job["sources"])),
        "rejects": job["rejects"],
        "check": shard_check(flat),  # size + sampled and full hashes (danlu.train.store)
        "encode_s": round(time.perf_counter() - t0, 3),
    }
    atomic_write_json(shard_dir / f"{name}.json", summary)
    return summary


def _write_index(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez's format (np.load reads it), but byte-identical for identical arrays: np.savez stamps each
    member with the time of writing, which would make every rerun's store differ."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with z.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)


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
                job["rejects"].append(BadLine(str(path), lineno, EMPTY).as_reject("tokenize"))
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


def _completed(store: Path, name: str, fingerprint: str, itemsize: int) -> dict | None:
    """The summary of a shard finished by an earlier run with the same fingerprint, or None."""
    tokens = store / "shards" / f"{name}.tokens"
    try:
        summary = json.loads((store / "shards" / f"{name}.json").read_text(encoding="utf-8"))
        size = tokens.stat().st_size
        ok = isinstance(summary, dict) and summary.get("fingerprint") == fingerprint \
            and size == summary.get("tokens", -1) * itemsize
        check = summary.get("check") if ok else None
        ok = ok and (not isinstance(check, dict) or sample_hash(path=tokens) == check.get("sample"))
    except (OSError, ValueError, AttributeError):
        return None
    return summary if ok else None


def _remove_leftovers(shard_dir: Path, keep: set[str]) -> None:
    """Temporary files of a killed run, and shards of an earlier, different run beyond this run's last shard."""
    for f in shard_dir.iterdir():
        if f.name.split(".")[0] not in keep:  # ".00003.tokens.x1y2.tmp" splits to "", never kept
            f.unlink(missing_ok=True)


def tokenize(inputs: list[str | Path], out: str | Path, tokenizer: str | Path, *, sets: Iterable[str] = (),
             force: bool = False, progress: bool = True, **options) -> dict:
    """Tokenize Document JSONL files (or folders of them) into the token store `out`; returns report.json's dict.
    `options` are TokenizeConfig's fields (source, workers, executor, address, shard_mb, eos_token, unframed).

    A store already finished from the same inputs and tokenizer is returned as is (report["reused"] is True)
    unless `force` (which also lets it take over a folder another stage wrote); an unfinished one continues
    from its completed shards.
    """
    files = jsonl_files(inputs)
    tok_dir = Path(tokenizer)
    if not (tok_dir / "tokenizer.json").exists():
        raise FileNotFoundError(f"{tok_dir}: not a Hugging Face tokenizer folder (no tokenizer.json)")
    cfg = build_config(TokenizeConfig, fields=dict(options, inputs=[str(p) for p in inputs], out=str(out),
                                                   tokenizer=str(tok_dir)), sets=sets, source="data tokenize")
    store = Path(out)
    fingerprint = _fingerprint(files, cfg)
    done = read_report(store)
    if done is not None and done.get("fingerprint") == fingerprint and not force:
        return {**done, "reused": True}

    special, warnings = _framing(cfg)
    ex = Executor.from_options(cfg)
    run = start_run(store, "tokenize", cfg, force=force)
    for w in warnings:
        run.log.warning("%s", w)
    dtype = token_dtype(special.vocab_size)
    (store / "shards").mkdir(exist_ok=True)
    with ex:
        executed, workers = ex.describe(), ex.parallelism
        run.log.info("%d input file(s); vocab %d -> %s tokens; %s; bos %s, eos %s", len(files),
                     special.vocab_size, dtype, executed, special.bos, special.eos)
        summaries: dict[str, dict] = {}
        lines_in = reused = fresh_bytes = 0
        t0 = time.perf_counter()
        bar = tqdm(total=sum(p.stat().st_size for p in files), unit="B", unit_scale=True, desc="tokenize",
                   disable=not progress)

        def fresh_jobs():
            """Shard jobs still to encode; shards an earlier run finished with the same fingerprint are taken as is."""
            nonlocal lines_in, reused, fresh_bytes
            for k, job in enumerate(_shards(files, int(cfg.shard_mb * 2**20), cfg.source)):
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
                           vocab_size=special.vocab_size, bos=special.bos_id, eos=special.eos_id,
                           fingerprint=fingerprint,
                           threads=1 if workers > 1 or ex.kind == "ray" else None)  # no oversubscription
                yield job

        try:  # at most 2 shards per worker in flight bounds the texts held in memory
            for job, summary in ex.map(_write_shard, fresh_jobs(), window=2 * workers):
                if isinstance(summary, ItemFailed):
                    raise RuntimeError(f"{store}: encoding shard {job['name']} failed: {summary.reason}")
                summaries[job["name"]] = summary
                bar.update(summary["text_bytes"])
            bar.update(max(0, bar.total - bar.n))  # it counts text bytes against file bytes: close the gap
        finally:
            bar.close()
    elapsed = time.perf_counter() - t0

    names = sorted(summaries)
    _remove_leftovers(store / "shards", set(names))
    rejects = [r for n in names for r in summaries[n]["rejects"]]
    write_jsonl(store / "rejects.jsonl", rejects)
    atomic_write_json(
        store / "store.json",
        {"format": STORE_FORMAT, "dtype": dtype.str, "vocab_size": special.vocab_size, "bos_id": special.bos_id,
         "eos_id": special.eos_id, "pad_id": special.pad_or_fallback(),
         "tokenizer_sha": file_hash(tok_dir / "tokenizer.json"), "shards": names,
         "checks": {n: summaries[n]["check"] for n in names if isinstance(summaries[n].get("check"), dict)}},
    )
    docs = sum(summaries[n]["docs"] for n in names)
    tokens = sum(summaries[n]["tokens"] for n in names)
    text_bytes = sum(summaries[n]["text_bytes"] for n in names)
    sources: Counter = Counter()
    for n in names:
        sources.update(summaries[n]["sources"])
    empty = sum(r["reason"] == EMPTY for r in rejects)
    bad = Counter(reason_key(r["reason"].split(":")[0]) for r in rejects if r["reason"] != EMPTY)
    report = {
        "counts": counts(lines_in, docs, {EMPTY: empty}, bad),
        "headline": ["tokens", "shards", "shards_reused", "mb_per_s"],
        "warnings": warnings,
        "fingerprint": fingerprint,
        "inputs": [str(p) for p in files],
        "tokens": tokens,
        "text_bytes": text_bytes,
        "sources": dict(sources),
        "dtype": dtype.name,
        "vocab_size": special.vocab_size,
        "framing": {"bos": special.bos, "eos": special.eos},
        "shards": len(names),
        "shards_reused": reused,
        "timings": {"tokenize_s": round(elapsed, 3)},
        "executor": executed,
        "mb_per_s": round(fresh_bytes / 2**20 / max(elapsed, 1e-9), 3),  # text encoded by this run only
        "tokens_per_doc": round(tokens / docs, 1) if docs else 0.0,
        "bytes_per_token": round(text_bytes / tokens, 3) if tokens else 0.0,
    }
    run.log.info("%d docs, %d tokens, %d rejected; %.2f MB/s", docs, tokens, len(rejects), report["mb_per_s"])
    return run.finish(report)
