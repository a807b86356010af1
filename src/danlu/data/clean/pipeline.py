"""Run a clean config over JSONL records: per-record operators in order, then dedup over the survivors.

Granularity: a filter whose granularity is "section" judges a long document (`sections.long_doc_chars` or
more) section by section (sections.py); failing sections are cut out, the rest of the text is kept byte for
byte, and each cut is a line in rejects.jsonl with the document's id, the span (character offsets into the
text as that operator saw it), the operator and the reason. Only when every section fails does the document
go. Shorter documents, SFT records and "document" filters (length) are judged whole, as Gopher's rules were
calibrated.

Accounting: every input line ends up in exactly one place - clean.jsonl (kept, perhaps with sections cut) or
rejects.jsonl (with the operator and reason; bad lines with their file and line number). report.json has the
counts contract in records, and in characters of the input as read: each record carries a balance of its
characters as read; a cut section charges its length to the operator that cut it (capped at the balance),
a removed record charges what is left of its balance, so in == kept + filtered + rejected holds exactly, also
per operator (chars_in == chars_kept + chars_removed; the next operator's chars_in is this one's chars_kept).
Transforms' characters changed are counted separately (chars_changed). With a tokenizer the same is done in
tokens. review.html shows examples of what each operator removed; with `dry_run` nothing else is written.

Execution: the records are read here and sent in batches (`BATCH_CHARS` of text) to an executor (a local
process pool or Ray: danlu.data.executor), whose workers run the per-record operators (each over the whole
batch in turn: _clean_batch) and compute each survivor's dedup keys (exact hash, MinHash signature). Results come back in input order, so the outputs are the
same for any number of workers. Survivors go to a spill file as they come; dedup then works on the keys alone
(~0.5 KB per document, not its text), and a second pass over the spill file writes clean.jsonl, so memory stays
flat as the corpus grows (docs/scale.md has the measurements).
"""

from __future__ import annotations

import json
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from danlu.config import build_config
from danlu.data.clean.base import changed_chars
from danlu.data.clean.config import CleanConfig, ExactDedup, NearDedup, load_clean_config
from danlu.data.clean.review import Example, Review
from danlu.data.clean.sections import section_spans
from danlu.data.dedup import DedupKeys, dedup_keys, key_clusters, lsh_clusters, lsh_params
from danlu.data.executor import Executor, ExecutorFields, input_bytes
from danlu.jsonl import BadLine, JsonlWriter, jsonl_files
from danlu.records import dedup_text, read_records, record_id, record_text
from danlu.runs import counts, reason_key, start_run
from danlu.workers import ItemFailed

OUTPUT = "clean.jsonl"
REJECTS = "rejects.jsonl"
DUPLICATES = "duplicates.jsonl"
REVIEW = "review.html"
EXCERPT_CHARS = 200  # removed text kept in rejects.jsonl when keep_rejected_text is off
BATCH_CHARS = 1 << 20  # text per task sent to a worker: pickling costs little next to the operators' work
BATCH_RECORDS = 2048


class _StepStats:
    def __init__(self, name: str, kind: str, granularity: str = ""):
        self.name, self.kind, self.granularity = name, kind, granularity
        self.n_in = self.removed = self.trimmed = self.sections_removed = 0
        self.records_changed = self.chars_changed = 0
        self.chars_in = self.chars_removed = 0  # characters of the input as read (the chars accounting)
        self.tokens_in = self.tokens_removed = 0
        self.seconds = 0.0
        self.reasons: Counter[str] = Counter()  # removals (records and sections) by reason key
        self.reason_chars: Counter[str] = Counter()
        self.big_drops: list[tuple[str, str | None, int, str]] = []  # (id, path, chars, reason) dropped whole

    def merge(self, other: "_StepStats") -> None:
        """Add what `other` (the same operator over a later batch) counted."""
        for name in ("n_in", "removed", "trimmed", "sections_removed", "records_changed", "chars_changed",
                     "chars_in", "chars_removed", "tokens_in", "tokens_removed", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.reasons.update(other.reasons)
        self.reason_chars.update(other.reason_chars)
        self.big_drops.extend(other.big_drops)

    def as_dict(self, total_chars: int, tokens: bool) -> dict:
        d = {"op": self.name, "kind": self.kind}
        if self.granularity:
            d["granularity"] = self.granularity
        d |= {"in": self.n_in, "kept": self.n_in - self.removed, "removed": self.removed}
        if self.kind == "filter":
            d |= {"trimmed": self.trimmed, "sections_removed": self.sections_removed}
        d |= {"chars_in": self.chars_in, "chars_kept": self.chars_in - self.chars_removed,
              "chars_removed": self.chars_removed, "chars_share": round(self.chars_removed / max(total_chars, 1), 6)}
        if tokens:
            d |= {"tokens_in": self.tokens_in, "tokens_removed": self.tokens_removed}
        if self.kind == "transform":
            d |= {"records_changed": self.records_changed, "chars_changed": self.chars_changed}
        if self.reasons:
            d["reasons"] = dict(self.reasons.most_common(20))
            d["reason_chars"] = dict(self.reason_chars.most_common(20))
        d["seconds"] = round(self.seconds, 3)
        return d


@dataclass
class _Balance:
    """What is left of a record's characters (and tokens) as read, to charge to the operators that remove it."""

    chars: int
    tokens: int = 0

    def charge(self, chars: int, tokens: int = 0) -> tuple[int, int]:
        c, t = min(chars, self.chars), min(tokens, self.tokens)
        self.chars -= c
        self.tokens -= t
        return c, t


def clean(
    inputs: str | Path | Iterable[str | Path],
    out: str | Path,
    *,
    config: CleanConfig | str | Path | None = None,
    preset: str | None = None,
    sets: Iterable[str] = (),
    dry_run: bool = False,
    progress: bool = True,
    workers: int | None = None,
    executor: str | None = None,
    address: str | None = None,
    **options,
) -> dict:
    """Clean (and dedup) JSONL records into `out`/clean.jsonl; returns the report (also in report.json).

    `config` is a CleanConfig or a YAML path; without one, `preset` ("pretrain" or "sft") is used, and without
    that the preset follows the first record's kind (SFT if it has "messages"). `options` are CleanConfig's
    top-level fields (keep_rejected_text, tokenizer; None = not given) and `sets` are `--set` overrides (see
    load_clean_config). `dry_run`: judge everything and write rejects.jsonl, review.html and report.json, but
    no clean.jsonl. `workers`, `executor`, `address`: where it runs (danlu.data.executor.ExecutorFields;
    None = not given); the outputs are the same everywhere.
    """
    files = jsonl_files([inputs] if isinstance(inputs, (str, Path)) else inputs)
    where_to = build_config(ExecutorFields, fields=dict(workers=workers, executor=executor, address=address),
                            source="data clean")
    if isinstance(config, CleanConfig):
        cfg = build_config(CleanConfig, config.model_dump(mode="json"), fields=options, sets=sets,
                           source="data clean") if sets or any(v is not None for v in options.values()) else config
    else:
        cfg = load_clean_config(config, preset=None if config else preset or _guess_preset(files), sets=sets,
                                fields=options)
    cfg = cfg.model_copy(update={"inputs": [str(f) for f in files]})
    ex = Executor.from_options(where_to, input_bytes(files))
    run = start_run(out, "clean", cfg)
    t0 = time.time()
    record_steps = [s for s in cfg.steps if s.kind != "dedup"]
    dedup_steps = [s for s in cfg.steps if s.kind == "dedup"]
    read_stats = _StepStats("read", "read")
    stats = [_StepStats(n, s.kind, getattr(s, "granularity", "") if s.kind == "filter" else "")
             for n, s in zip(_step_names(cfg.steps), cfg.steps)]
    out_dir = Path(out)
    if dry_run:  # a dry run leaves no output that an earlier run in this folder wrote
        for name in (OUTPUT, DUPLICATES):
            (out_dir / name).unlink(missing_ok=True)
    review = Review(cfg.review)
    survivors_path = out_dir / ".clean.survivors.jsonl"
    survivors = _Survivors()
    tokens_in = 0
    near = sorted({(s.num_perm, s.ngram, s.seed) for s in dedup_steps if isinstance(s, NearDedup)})
    exact = any(isinstance(s, ExactDedup) for s in dedup_steps)
    bar = tqdm(desc="clean", unit="rec", disable=not progress or None)

    with ex, JsonlWriter(out_dir / REJECTS) as rejects:
        run.log.info("executor: %s", ex.describe())
        emit = _Emitter(rejects, review, cfg.keep_rejected_text)
        target = survivors_path if dedup_steps or dry_run else out_dir / OUTPUT
        with JsonlWriter(target) as kept:
            jobs = (_Job(cfg, lines, exact, near) for lines in _batches(read_records(files, cfg.format)))
            for job, res in ex.map(_clean_batch, jobs):
                if isinstance(res, ItemFailed):
                    raise RuntimeError(f"clean: a batch of {len(job.lines)} records from "
                                       f"{job.lines[0][0]}:{job.lines[0][1]} failed: {res.reason}")
                bar.update(len(job.lines))
                read_stats.merge(res.read)
                for st, part in zip(stats, res.steps):
                    st.merge(part)
                for entry in res.out.rejects:
                    rejects.write(entry)
                for example, key in res.out.examples:
                    review.add(example, key)
                emit.chars_out += res.chars_out
                tokens_in += res.tokens_in
                for rec in res.kept:
                    kept.write(rec)
                if dedup_steps:
                    survivors.add(res)
        bar.close()
        if dedup_steps:
            _run_dedup(survivors, survivors_path, out_dir, dedup_steps, stats[len(record_steps):], emit, run,
                       cfg, dry_run, ex)
        survivors_path.unlink(missing_ok=True)
        executed = ex.describe()

    total = read_stats.chars_in
    operators = [read_stats.as_dict(total, False)] + [s.as_dict(total, cfg.tokenizer is not None) for s in stats]
    kept_n = read_stats.n_in - read_stats.removed - sum(s.removed for s in stats)
    kept_chars = total - read_stats.chars_removed - sum(s.chars_removed for s in stats)
    report = {
        "counts": counts(read_stats.n_in, kept_n, {s.name: s.removed for s in stats},
                         {f"read: {k}": n for k, n in read_stats.reasons.items()}),
        "chars": counts(total, kept_chars, {s.name: s.chars_removed for s in stats},
                        {"read": read_stats.chars_removed}, unit="characters of the input"),
        "headline": ["chars_out", "filters_chars_share"] + [f"removed.{s.name}" for s in stats
                                                             if s.chars_removed or s.removed],
        "chars_out": emit.chars_out,  # characters written (after transforms and cuts)
        "filters_chars_removed": sum(s.chars_removed for s in stats if s.kind == "filter"),  # dedup aside
        "filters_chars_share": f"{sum(s.chars_removed for s in stats if s.kind == 'filter') / max(total, 1):.2%}",
        "removed": {s.name: _removed_text(s, total) for s in stats if s.chars_removed or s.removed},
        "dry_run": dry_run,
        "inputs": [str(f) for f in files],
        "operators": operators,
        "outputs": {"rejects": REJECTS, "review": REVIEW,
                    **({} if dry_run else {"records": OUTPUT}),
                    **({"duplicates": DUPLICATES} if dedup_steps and not dry_run else {})},
        "warnings": _warnings(stats, total, cfg, dry_run),
        "seconds": round(time.time() - t0, 3),
        "executor": executed,
    }
    if cfg.tokenizer is not None:
        report["tokens"] = counts(tokens_in, tokens_in - sum(s.tokens_removed for s in stats),
                                  {s.name: s.tokens_removed for s in stats}, unit="tokens of the input")
        report["tokens_kept"] = report["tokens"]["kept"]
        report["headline"].insert(1, "tokens_kept")
    review.write(out_dir / REVIEW, operators, total, dry_run)
    for o in operators:
        run.log.info("%-14s in=%d kept=%d removed=%d chars_removed=%d %s", o["op"], o["in"], o["kept"],
                     o["removed"], o["chars_removed"],
                     f"chars_changed={o['chars_changed']}" if "chars_changed" in o else "")
    return run.finish(report)


def _step_names(steps: list) -> list[str]:
    """Each step's name in the report: its op, and "op#2", "op#3" for the second and third step of one op."""
    seen: Counter[str] = Counter()
    names = []
    for s in steps:
        seen[s.op] += 1
        names.append(s.op if seen[s.op] == 1 else f"{s.op}#{seen[s.op]}")
    return names


_COUNTERS: dict[str, Callable[[list[str]], list[int]]] = {}  # per process: a worker loads each tokenizer once


def _token_counter(tokenizer: str | None) -> Callable[[list[str]], list[int]] | None:
    if tokenizer is None:
        return None
    if tokenizer not in _COUNTERS:
        from danlu.data.chunk import load_counter

        _COUNTERS[tokenizer] = load_counter(tokenizer, threads=1)  # one record per call: no thread pool
    return _COUNTERS[tokenizer]


# --- per-record work, in batches (what a worker runs) -------------------------------------------------------

Line = tuple[str, int, "dict | BadLine", str]  # (file as given, line number, record or bad line, kind)


@dataclass
class _Job:
    cfg: CleanConfig
    lines: list[Line]
    exact: bool  # survivors need exact keys
    near: list[tuple[int, int, int]]  # and MinHash signatures for these (num_perm, ngram, seed)


_first = itemgetter(0)


class _Collected:
    """What a batch emitted (rejects.jsonl entries, review examples), for the main process to write in order.
    The steps run over the whole batch one after another, so what each record emits is tagged with its place in
    the batch (`at`) and put back in input order (`in_order`): the same order as one record at a time."""

    def __init__(self, excerpt_chars: int):
        self.excerpt_chars = excerpt_chars
        self.at = 0
        self._rejects: list[tuple[int, dict]] = []
        self._examples: list[tuple[int, tuple[Example, str]]] = []

    def write(self, entry: dict) -> None:
        self._rejects.append((self.at, entry))

    def add(self, example: Example, key: str) -> None:
        example.text = example.text[: self.excerpt_chars]  # what Review keeps: no need to send more
        self._examples.append((self.at, (example, key)))

    def in_order(self) -> None:
        """rejects and examples in input order (a stable sort: one record's in the order of the steps)."""
        self.rejects = [e for _, e in sorted(self._rejects, key=_first)]
        self.examples = [e for _, e in sorted(self._examples, key=_first)]
        del self._rejects, self._examples


@dataclass
class _BatchResult:
    read: _StepStats
    steps: list[_StepStats]  # the per-record steps'
    out: _Collected
    kept: list[dict] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    balances: list[_Balance] = field(default_factory=list)
    dedup_chars: list[int] = field(default_factory=list)  # length of each kept record's dedup text
    keys: DedupKeys | None = None
    chars_out: int = 0
    tokens_in: int = 0


def _batches(lines: Iterable[Line]) -> Iterator[list[Line]]:
    """Consecutive lines in batches of about BATCH_CHARS characters (the cut never depends on the executor)."""
    batch: list[Line] = []
    size = 0
    for path, lineno, rec, kind in lines:
        batch.append((str(path), lineno, rec, kind))
        size += len(rec.raw) if isinstance(rec, BadLine) else len(record_text(rec, kind))
        if size >= BATCH_CHARS or len(batch) >= BATCH_RECORDS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _clean_batch(job: _Job) -> _BatchResult:
    """Every per-record step over one batch, and the dedup keys of its survivors. Runs in a worker.

    Step by step over the whole batch rather than record by record through all steps: each operator's code and
    data (compiled patterns, lingua's models) stay in the CPU caches while it runs over a thousand records,
    instead of being evicted by the next operators after every record (measured on the Debian corpus: 10-30% less
    operator time). Records do not see each other, so the results are the same; what they emit is put back in
    input order (_Collected.in_order)."""
    cfg = job.cfg
    count_tokens = _token_counter(cfg.tokenizer)
    record_steps = [s for s in cfg.steps if s.kind != "dedup"]
    names = _step_names(cfg.steps)
    res = _BatchResult(_StepStats("read", "read"),
                       [_StepStats(n, s.kind, getattr(s, "granularity", "") if s.kind == "filter" else "")
                        for n, s in zip(names, record_steps)],
                       _Collected(cfg.review.excerpt_chars))
    emit = _Emitter(res.out, res.out, cfg.keep_rejected_text)  # type: ignore[arg-type]
    read = res.read
    live: list[_Live] = []
    for at, (path, lineno, rec, kind) in enumerate(job.lines):
        read.n_in += 1
        if isinstance(rec, BadLine):
            read.removed += 1
            read.reasons[reason_key(rec.error.split(":")[0])] += 1
            read.chars_in += len(rec.raw.rstrip("\n"))
            read.chars_removed += len(rec.raw.rstrip("\n"))
            res.out.at = at
            res.out.write({**rec.as_reject("clean"), "op": "read"})
            continue
        rec["id"] = record_id(rec, path, lineno)
        text = record_text(rec, kind)
        balance = _Balance(len(text), count_tokens([text])[0] if count_tokens else 0)
        read.chars_in += balance.chars
        res.tokens_in += balance.tokens
        live.append(_Live(at, rec, kind, balance, {"path": path, "line": lineno}))
    for step, st in zip(record_steps, res.steps):
        t = time.perf_counter()
        survivors = []
        for item in live:
            res.out.at = item.at
            if _apply_step(item, step, st, cfg, emit, count_tokens):
                survivors.append(item)
        live = survivors
        st.seconds += time.perf_counter() - t
    res.out.in_order()
    dedup_texts = []
    for item in live:
        emit.chars_out += len(record_text(item.rec, item.kind))
        res.kept.append(item.rec)
        res.kinds.append(item.kind)
        res.balances.append(item.balance)
        if job.exact or job.near:
            dedup_texts.append(dedup_text(item.rec, item.kind))
            res.dedup_chars.append(len(dedup_texts[-1]))
    res.chars_out = emit.chars_out
    if job.exact or job.near:
        res.keys = dedup_keys(dedup_texts, exact=job.exact, near=job.near)
    return res


class _Survivors:
    """What dedup keeps of every record that passed the per-record steps, in input order: its id, path, kind,
    characters and tokens still to charge, dedup text length and dedup keys - never its text."""

    def __init__(self):
        self.ids: list[str] = []
        self.paths: list[str | None] = []
        self.kinds: list[str] = []
        self.chars, self.tokens, self.dedup_chars = array("q"), array("q"), array("q")
        self._keys: list[DedupKeys] = []
        self._interned: dict = {}

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, res: _BatchResult) -> None:
        intern = self._interned.setdefault
        for rec, kind, balance in zip(res.kept, res.kinds, res.balances):
            self.ids.append(rec["id"])
            path = rec.get("path")
            self.paths.append(intern(path, path) if isinstance(path, str) else path)
            self.kinds.append(intern(kind, kind))
            self.chars.append(balance.chars)
            self.tokens.append(balance.tokens)
        self.dedup_chars.extend(res.dedup_chars)
        if res.keys is not None:
            self._keys.append(res.keys)

    def keys(self) -> DedupKeys:
        """All keys in one piece. Each batch's arrays are copied into place and released at once, so the peak is
        one copy of the signatures and a batch, not two copies (as np.concatenate of all batches would hold)."""
        parts, self._keys = self._keys, []
        if not parts:
            return DedupKeys(np.zeros((0, 16), dtype=np.uint8), {}, np.zeros(0, dtype=bool))
        n = sum(len(k.empty) for k in parts)
        exact = np.empty((n, parts[0].exact.shape[1]), dtype=np.uint8)
        empty = np.empty(n, dtype=bool)
        near = {s: np.empty((n, sig.shape[1]), dtype=sig.dtype) for s, sig in parts[0].near.items()}
        at = 0
        parts.reverse()  # popped from the end: the first batch first
        while parts:
            k = parts.pop()
            m = len(k.empty)
            exact[at : at + m], empty[at : at + m] = k.exact, k.empty
            for setting, sig in near.items():
                sig[at : at + m] = k.near[setting]
            at += m
            del k
        return DedupKeys(exact, near, empty)


def _removed_text(s: _StepStats, total: int) -> str:
    """One operator's removals in one word for the summary line: chars/share/records[+sections]."""
    parts = [f"{s.chars_removed:,}ch", f"{s.chars_removed / max(total, 1):.2%}", f"{s.removed}rec"]
    if s.sections_removed:
        parts[-1] += f"+{s.sections_removed}sect"
    return "/".join(parts)


def _warnings(stats: list[_StepStats], total: int, cfg: CleanConfig, dry_run: bool) -> list[str]:
    out = []
    if dry_run:
        out.append(f"dry run: nothing written to {OUTPUT}; what would be removed is in {REJECTS} and {REVIEW}")
    for s in stats:
        if s.kind == "transform" or (s.kind == "dedup" and not cfg.warn.dedup):
            continue
        share = s.chars_removed / max(total, 1)
        if share > cfg.warn.chars_share:
            out.append(f"{s.name} removed {share:.2%} of the characters ({s.chars_removed:,} of {total:,}), more "
                       f"than warn.chars_share={cfg.warn.chars_share:.0%}: look at {REVIEW} before trusting it")
        if s.big_drops:
            shown = "; ".join(f"{p or i} ({n:,} chars: {r})" for i, p, n, r in s.big_drops[:5])
            more = f"; and {len(s.big_drops) - 5} more" if len(s.big_drops) > 5 else ""
            out.append(f"{s.name} dropped {len(s.big_drops)} record(s) of {cfg.warn.record_chars:,}+ characters "
                       f"whole: {shown}{more}")
    return out


class _Emitter:
    """Writes removals to rejects.jsonl and review.html's sample, and counts the characters written."""

    def __init__(self, rejects: JsonlWriter, review: Review, keep_text: bool):
        self.rejects, self.review, self.keep_text = rejects, review, keep_text
        self.chars_out = 0

    def record(self, op: str, reason: str, rec: dict, kind: str, where: dict, chars: int, **extra) -> None:
        text = record_text(rec, kind)
        entry = {"stage": "clean", "op": op, "reason": reason, "id": rec["id"], **where, **extra}
        if self.keep_text or kind != "document":
            entry["record"] = rec
        else:
            entry["record"] = {**rec, "text": text[:EXCERPT_CHARS]}
            entry["text_chars"], entry["text_truncated"] = len(text), len(text) > EXCERPT_CHARS
        self.rejects.write(entry)
        self.review.add(Example(op, reason, rec["id"], rec.get("path"), chars, text,
                                duplicate_of=extra.get("duplicate_of")), reason_key(reason))

    def section(self, op: str, reason: str, rec: dict, where: dict, span: tuple[int, int], text: str,
                index: int, of: int) -> None:
        entry = {"stage": "clean", "op": op, "reason": reason, "id": rec["id"], **where,
                 "record_path": rec.get("path"), "span": list(span), "chars": span[1] - span[0],
                 "section": index, "sections": of}
        if self.keep_text:
            entry["text"] = text
        else:
            entry["text"], entry["text_truncated"] = text[:EXCERPT_CHARS], len(text) > EXCERPT_CHARS
        self.rejects.write(entry)
        self.review.add(Example(op, reason, rec["id"], rec.get("path"), span[1] - span[0], text, span),
                        reason_key(reason))


def _guess_preset(files: list[Path]) -> str:
    for _, _, rec, kind in read_records(files[:1], "auto"):
        if not isinstance(rec, BadLine):
            return "pretrain" if kind == "document" else "sft"
    return "pretrain"


def _map_contents(rec: dict, kind: str, fn) -> dict:
    """`rec` with `fn` applied to its text, or to every message content (and a pair's two answers, a KTO
    record's completion)."""
    if kind == "document":
        return {**rec, "text": fn(rec["text"])}
    out = {**rec, "messages": [{**m, "content": fn(m["content"])} for m in rec["messages"]]}
    for side in ("chosen", "rejected", "completion"):
        if side in rec:
            out[side] = {**rec[side], "content": fn(rec[side]["content"])}
    return out


@dataclass
class _Live:
    """A record on its way through the per-record steps: its place in the batch, the record as the steps left
    it, the record as read (what rejects.jsonl shows), and what is left of its characters as read (charged to
    the operators that remove text)."""

    at: int
    rec: dict
    kind: str
    balance: _Balance
    where: dict
    original: dict = field(init=False)
    spans_of: tuple[str, list[tuple[int, int]]] | None = None  # section spans of the current text, cached

    def __post_init__(self):
        self.original = self.rec


def _apply_step(item: _Live, step, st: _StepStats, cfg: CleanConfig, emit: _Emitter, count_tokens) -> bool:
    """One step on one record: a transform rewrites it, a filter keeps it, cuts failing sections out of it or
    removes it (written to the rejects). False when the record is gone."""
    rec, kind, balance = item.rec, item.kind, item.balance
    st.n_in += 1
    st.chars_in += balance.chars
    st.tokens_in += balance.tokens
    if step.kind == "transform":
        changed = 0

        def apply(text: str) -> str:
            nonlocal changed
            new = step.apply(text)
            changed += changed_chars(text, new)
            return new

        item.rec = _map_contents(rec, kind, apply)
        st.chars_changed += changed
        st.records_changed += changed > 0
        return True
    text = record_text(rec, kind)
    reason = None
    if kind == "document" and step.granularity == "section" and len(text) >= cfg.sections.long_doc_chars:
        if item.spans_of is None or item.spans_of[0] != text:
            item.spans_of = (text, section_spans(text, cfg.sections))
        spans = item.spans_of[1]
        bad = [(i, s, e, r) for i, (s, e) in enumerate(spans) if (r := step.judge(text[s:e]))]
        if bad and len(bad) < len(spans):
            for i, s, e, r in bad:
                piece = text[s:e]
                c, tk = balance.charge(e - s, count_tokens([piece])[0] if count_tokens else 0)
                st.chars_removed += c
                st.tokens_removed += tk
                st.sections_removed += 1
                st.reasons[reason_key(r)] += 1
                st.reason_chars[reason_key(r)] += c
                emit.section(st.name, r, rec, item.where, (s, e), piece, i, len(spans))
            st.trimmed += 1
            drop = {i for i, *_ in bad}
            item.rec = {**rec, "text": "".join(text[s:e] for i, (s, e) in enumerate(spans) if i not in drop)}
            return True
        if bad:  # every section failed: the document goes, under its sections' most common reason
            top = Counter(reason_key(r) for *_, r in bad).most_common(1)[0][0]
            reason = f"all {len(spans)} sections: " + next(r for *_, r in bad if reason_key(r) == top)
    else:
        reason = step.judge_record(rec, text)
    if not reason:
        return True
    chars = balance.chars
    c, tk = balance.charge(balance.chars, balance.tokens)
    st.removed += 1
    st.chars_removed += c
    st.tokens_removed += tk
    st.reasons[reason_key(reason)] += 1
    st.reason_chars[reason_key(reason)] += c
    if len(text) >= cfg.warn.record_chars:
        st.big_drops.append((rec["id"], rec.get("path"), len(text), reason))
    emit.record(st.name, reason, item.original, kind, item.where, chars)
    return False


def _run_dedup(survivors: _Survivors, survivors_path: Path, out_dir: Path, steps: list, stats: list[_StepStats],
               emit: _Emitter, run, cfg: CleanConfig, dry_run: bool, ex: Executor) -> None:
    """Apply the dedup steps in order to the survivors' keys; then write kept records, rejects and the duplicate
    clusters in one pass over the spill file."""
    keys = survivors.keys()
    chars = np.frombuffer(survivors.chars, dtype=np.int64).copy()
    tokens = np.frombuffer(survivors.tokens, dtype=np.int64).copy()
    alive = np.arange(len(survivors), dtype=np.int64)
    duplicate_of: dict[int, tuple[int, str]] = {}  # removed index -> (kept index, op)
    charged: dict[int, int] = {}  # removed index -> characters charged
    join = ex.band_join("dedup")
    parts = _partitions(ex, len(alive))
    for step, st in zip(steps, stats):
        t = time.perf_counter()
        st.n_in = len(alive)
        st.chars_in = int(chars[alive].sum())
        st.tokens_in = int(tokens[alive].sum())
        if isinstance(step, ExactDedup):
            rep = key_clusters(keys.exact[alive], pairs=join, parts=parts)
        else:
            assert isinstance(step, NearDedup)
            bands, rows = lsh_params(step.threshold, step.num_perm)
            skip = np.ones(len(keys.empty), dtype=bool)  # removed records and blank texts join no cluster
            skip[alive] = keys.empty[alive]
            # on all signatures, not sig[alive] (a copy of them all): a skipped record is its own cluster, and
            # the smallest index among alive records is the smallest position among them, so this is the same
            rep = lsh_clusters(keys.near[(step.num_perm, step.ngram, step.seed)], bands, rows, skip=skip,
                               pairs=join, parts=parts)[alive]
            rep = np.searchsorted(alive, rep)  # back to positions in `alive`
            run.log.info("near_dedup: %d bands x %d rows", bands, rows)
        keep = rep == np.arange(len(alive))
        for pos in np.flatnonzero(~keep).tolist():
            i = int(alive[pos])
            duplicate_of[i] = (int(alive[rep[pos]]), st.name)
            charged[i] = c = int(chars[i])
            st.removed += 1
            st.chars_removed += c
            st.tokens_removed += int(tokens[i])
            chars[i] = tokens[i] = 0
            st.reasons["duplicate"] += 1
            st.reason_chars["duplicate"] += c
            if survivors.dedup_chars[i] >= cfg.warn.record_chars:
                st.big_drops.append((survivors.ids[i], survivors.paths[i], survivors.dedup_chars[i], "duplicate"))
        alive = alive[keep]
        st.seconds += time.perf_counter() - t
    del keys

    def root(i: int) -> int:  # a record removed by exact dedup may point at one later removed by near dedup
        while i in duplicate_of:
            i = duplicate_of[i][0]
        return i

    replaced: dict[int, list[dict]] = {}
    for i, (kept_i, op) in sorted(duplicate_of.items()):
        replaced.setdefault(root(i), []).append({"id": survivors.ids[i], "path": survivors.paths[i], "op": op})
    kept = None if dry_run else JsonlWriter(out_dir / OUTPUT)
    dups = None if dry_run else JsonlWriter(out_dir / DUPLICATES)
    try:
        # kept records are copied line by line (the spill file is JsonlWriter's output, as clean.jsonl is: parsing
        # and writing them again would give the same bytes); only duplicates are parsed, for their rejects
        with open(survivors_path, encoding="utf-8", newline="\n") as spill:
            lines = 0
            for i, line in enumerate(spill):
                lines += 1
                if i in duplicate_of:
                    kind, rec = survivors.kinds[i], json.loads(line)
                    emit.chars_out -= len(record_text(rec, kind))
                    emit.record(duplicate_of[i][1], f"duplicate of {survivors.ids[root(i)]}", rec, kind, {},
                                charged[i], duplicate_of=survivors.ids[root(i)])
                    continue
                if dups is not None and i in replaced:
                    dups.write({"kept": survivors.ids[i], "path": survivors.paths[i], "replaced": replaced[i]})
                if kept is not None:
                    kept.write_line(line)
        if lines != len(survivors):  # our own spill file: a missing line means the disk lied
            raise RuntimeError(f"{survivors_path}: danlu's own spill file has {lines} lines, not {len(survivors)}")
    except BaseException:
        for w in (kept, dups):
            if w is not None:
                w.close(ok=False)
        raise
    for w in (kept, dups):
        if w is not None:
            w.close()


def _partitions(ex: Executor, n: int) -> int:
    """Hash partitions per band: one here; on Ray enough that a task holds ~250K documents' band keys."""
    return 1 if ex.kind == "local" else max(2, -(-n // 250_000))
