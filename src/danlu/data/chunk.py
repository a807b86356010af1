"""`danlu data chunk`: split long Markdown documents at section boundaries and pack them up to a token budget.

Units, from coarse to fine: a section (a heading and what follows up to the next heading), a block (paragraph,
list, table, fenced code), a sentence (split after Chinese/English sentence punctuation or a newline), and -
only when one sentence alone exceeds the budget - the longest prefix that fits. Consecutive units are packed
greedily; each chunk is then counted exactly with the real tokenizer and re-packed tighter if the estimate
(sum of unit counts) was short. Every chunk is a slice of the document, and the text between consecutive
chunks is only whitespace, so the chunks give back the document (up to the separators).
"""

from __future__ import annotations

import bisect
import re
import time
from dataclasses import dataclass
from pathlib import Path
from collections import Counter
from typing import Callable, Iterable

from pydantic import Field
from tqdm import tqdm

from danlu.config import StrictModel, build_config

from danlu.data.clean.markdown import blocks
from danlu.data.executor import Executor, ExecutorFields, input_bytes
from danlu.jsonl import BadLine, JsonlWriter, jsonl_files, read_jsonl
from danlu.records import record_id, stable_id
from danlu.runs import counts, reason_key, start_run
from danlu.workers import ItemFailed

CountFn = Callable[[list[str]], list[int]]

# cl100k_base's pre-tokenisation pattern (tiktoken_ext.openai_public), for bare .tiktoken rank files
_CL100K_PAT = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
_SENTENCE_END = re.compile(r"[。！？；!?;…]+[”’」』)）\"']*|\.(?=\s)|\n")
# A hard cut searches at most budget * MAX_CHARS_PER_TOKEN characters ahead, so one cut costs O(budget), not
# O(rest of the sentence). A prefix found under this cap is still within budget, just less full if tokens there
# average more characters than this (long whitespace runs, say).
MAX_CHARS_PER_TOKEN = 16
NO_TEXT = "no text to chunk"
BATCH_CHARS = 1 << 19  # text per task sent to a worker
BATCH_RECORDS = 1024


def load_counter(tokenizer: str | Path, threads: int | None = None) -> CountFn:
    """Token counts for a batch of texts (no special tokens; "<|eos|>" typed in a text counts as text).

    `tokenizer`: a Hugging Face tokenizer folder (tokenizer.json; counted with the encoder `danlu data tokenize`
    uses, so chunk counts are the token store's lengths), a local `.tiktoken` rank file (cl100k
    pre-tokenisation), or `tiktoken:NAME` for an encoding tiktoken already has in its local cache.
    `threads`: encoding threads per call (danlu.tokenizer.encode.load_encoder; 1 inside worker processes).
    """
    spec = str(tokenizer)
    if spec.startswith("tiktoken:") or spec.endswith(".tiktoken"):
        import tiktoken

        if spec.startswith("tiktoken:"):
            try:
                enc = tiktoken.get_encoding(spec.split(":", 1)[1])
            except Exception as e:  # no network here: only cached encodings load
                raise FileNotFoundError(f"{spec}: tiktoken encoding not available locally ({e})") from None
        else:
            from tiktoken.load import load_tiktoken_bpe

            if not Path(spec).is_file():
                raise FileNotFoundError(f"{spec}: no such tiktoken file")
            enc = tiktoken.Encoding(Path(spec).stem, pat_str=_CL100K_PAT,
                                    mergeable_ranks=load_tiktoken_bpe(spec), special_tokens={})
        return lambda texts: [len(ids) for ids in enc.encode_ordinary_batch(texts)]
    from danlu.tokenizer.encode import load_encoder

    enc = load_encoder(spec, threads=threads)
    return lambda texts: [len(ids) for ids in enc.encode_batch(texts)] if texts else []


@dataclass
class Unit:
    start: int
    end: int
    tokens: int
    path: tuple[str, ...]  # heading path where the unit starts
    at_heading: bool  # the unit starts with its own heading
    heading_only: bool = False  # a lone heading: it moves to the next chunk rather than end one


@dataclass
class Chunk:
    start: int
    end: int
    path: tuple[str, ...]
    prefix: str
    tokens: int = -1  # -1 until counted


def _sentences(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Contiguous pieces of text[start:end], each ending after sentence punctuation or a newline."""
    cuts = [m.end() for m in _SENTENCE_END.finditer(text, start, end)]
    bounds = [start] + [c for c in cuts if start < c < end] + [end]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if a < b]


def _fit_prefix(text: str, start: int, end: int, budget: int, count: CountFn,
                chars_per_token: float) -> tuple[int, int]:
    """(cut, tokens): a long prefix text[start:cut] within `budget` tokens (at least 1 char), and its count.

    Searches (start, start + budget * MAX_CHARS_PER_TOKEN] only; cut == end means all of text[start:end] fits.
    Starts just under the cut the density `chars_per_token` predicts and gallops out until a prefix over the
    budget brackets the cut, then bisects: each count is about one cut long, so a cut costs O(budget log budget).
    """
    cap = min(end, start + budget * MAX_CHARS_PER_TOKEN)
    probe = min(cap, start + max(1, int(budget * chars_per_token * 0.95)))
    step = max(1, (probe - start) // 16)

    def fits(i: int) -> tuple[bool, int]:
        n = count([text[start:i]])[0]
        return n <= budget, n

    ok, n = fits(probe)
    if ok:  # gallop up
        lo, lo_n = probe, n
        while True:
            if lo == cap:
                return lo, lo_n
            probe = min(cap, lo + step)
            ok, n = fits(probe)
            if not ok:
                hi = probe
                break
            lo, lo_n, step = probe, n, step * 2
    else:  # gallop down
        hi = probe
        while True:
            if hi == start + 1:  # one character is over the budget: it still makes a unit of its own
                return hi, n
            probe = max(start + 1, hi - step)
            ok, n = fits(probe)
            if ok:
                lo, lo_n = probe, n
                break
            hi, step = probe, step * 2
    while hi - lo > 1:  # invariant: text[start:lo] fits (lo_n tokens), text[start:hi] does not
        mid = (lo + hi) // 2
        ok, n = fits(mid)
        if ok:
            lo, lo_n = mid, n
        else:
            hi = mid
    return lo, lo_n


def _units(text: str, budget: int, count: CountFn) -> tuple[list[Unit], dict[str, int]]:
    """Sections that fit, else their blocks that fit, else sentences, else hard cuts; in text order."""
    bl = blocks(text)
    stats = {"sentence_splits": 0, "hard_splits": 0}
    if not bl:
        return [], stats
    paths, stack = [], []
    for b in bl:
        if b.kind == "heading":
            stack = [(lvl, t) for lvl, t in stack if lvl < b.level] + [(b.level, b.title)]
        paths.append(tuple(t for _, t in stack))
    sections: list[list[int]] = []
    for i, b in enumerate(bl):
        if b.kind == "heading" or not sections:
            sections.append([])
        sections[-1].append(i)
    section_tokens = count([text[bl[sec[0]].start : bl[sec[-1]].end] for sec in sections])
    big = [i for sec, n in zip(sections, section_tokens) if n > budget for i in sec]
    block_tokens = dict(zip(big, count([text[bl[i].start : bl[i].end] for i in big])))

    units: list[Unit] = []
    for sec, sec_tokens in zip(sections, section_tokens):
        first = bl[sec[0]]
        if sec_tokens <= budget:
            units.append(Unit(first.start, bl[sec[-1]].end, sec_tokens, paths[sec[0]], first.kind == "heading"))
            continue
        for i in sec:
            b = bl[i]
            if block_tokens[i] <= budget:
                units.append(Unit(b.start, b.end, block_tokens[i], paths[i], b.kind == "heading", b.kind == "heading"))
                continue
            stats["sentence_splits"] += 1
            units.extend(_split_span(text, b.start, b.end, budget, count, paths[i], stats))
    return units, stats


def _split_span(text: str, start: int, end: int, budget: int, count: CountFn, path: tuple[str, ...],
                stats: dict[str, int]) -> list[Unit]:
    """Units of at most `budget` tokens covering text[start:end]: sentences, and hard cuts of long sentences."""
    units = []
    pieces = _sentences(text, start, end)
    for (s, e), n in zip(pieces, count([text[s:e] for s, e in pieces])):
        if n <= budget:
            units.append(Unit(s, e, n, path, False))
            continue
        density = (e - s) / n
        while s < e:  # one sentence over the budget: cut long prefixes that fit until the rest fits
            cut, k = _fit_prefix(text, s, e, budget, count, density)
            stats["hard_splits"] += cut < e
            units.append(Unit(s, cut, k, path, False))
            density = (cut - s) / max(k, 1)
            s = cut
    return units


def _prefix(path: tuple[str, ...], at_heading: bool) -> str:
    shown = path[:-1] if at_heading else path
    return " > ".join(shown) + "\n\n" if shown else ""


def _pack(text: str, units: list[Unit], budget: int, heading_prefix: bool, count: CountFn) -> list[Chunk]:
    groups: list[list[Unit]] = []
    cur: list[Unit] = []
    cur_tokens = 0
    for u in units:
        gap = 1 if cur and text[cur[-1].end : u.start] else 0
        if cur and cur_tokens + gap + u.tokens > budget:
            carry = [cur.pop()] if len(cur) > 1 and cur[-1].heading_only else []
            if carry and carry[0].tokens + 1 + u.tokens > budget:
                cur.append(carry.pop())  # heading and next unit cannot share a chunk anyway
            groups.append(cur)
            cur, cur_tokens, gap = carry, sum(c.tokens for c in carry), 1 if carry else 0
        cur.append(u)
        cur_tokens += gap + u.tokens
    if cur:
        groups.append(cur)
    chunks = []
    for g in groups:
        start, end = g[0].start, g[-1].end
        body = text[start:end]
        start += len(body) - len(body.lstrip())
        end -= len(body) - len(body.rstrip())
        if start >= end:
            continue
        prefix = _prefix(g[0].path, g[0].at_heading) if heading_prefix else ""
        # a chunk that is exactly one unit already has its exact count
        known = g[0].tokens if len(g) == 1 and not prefix and (start, end) == (g[0].start, g[0].end) else -1
        chunks.append(Chunk(start, end, g[0].path, prefix, known))
    return chunks


def plan_chunks(text: str, count: CountFn, max_tokens: int = 4096, heading_prefix: bool = False) -> tuple[list[Chunk], dict]:
    """Chunks (character spans + heading path + exact token count) of one document."""
    body = text.strip()
    if body and len(body) <= 4 * max_tokens:  # short document: likely one chunk, one count decides
        n = count([body])[0]
        if n <= max_tokens:
            start = len(text) - len(text.lstrip())
            first = blocks(body.split("\n", 1)[0])
            path = (first[0].title,) if first and first[0].kind == "heading" else ()
            return [Chunk(start, start + len(body), path, "", n)], {"sentence_splits": 0, "hard_splits": 0}
    reserve = 0
    if heading_prefix:
        titles = [b.title for b in blocks(text) if b.kind == "heading"]
        reserve = count([" > ".join(titles) + "\n\n"])[0] if titles else 0  # bounds every heading path
        if reserve > max_tokens // 2:  # headings too long to repeat: no prefixes for this document
            heading_prefix, reserve = False, 0
    budget = max_tokens - reserve
    units, stats = _units(text, budget, count)
    pending = [(units, budget)]
    done: list[Chunk] = []
    while pending:  # re-pack any chunk whose exact count exceeds the budget with a tighter estimate
        us, b = pending.pop()
        chunks = _pack(text, us, b, heading_prefix, count)
        unknown = [c for c in chunks if c.tokens < 0]
        for c, n in zip(unknown, count([c.prefix + text[c.start : c.end] for c in unknown])):
            c.tokens = n
        over = [c for c in chunks if c.tokens > max_tokens and b > 1]
        done.extend(c for c in chunks if not (c.tokens > max_tokens and b > 1))
        if not over:
            continue
        starts, ends = [u.start for u in us], [u.end for u in us]  # units are disjoint and in text order
        for c in over:
            inside = us[bisect.bisect_right(ends, c.start) : bisect.bisect_left(starts, c.end)]
            tighter = max(1, b - (c.tokens - max_tokens) - 1)
            if len(inside) > 1:
                pending.append((inside, tighter))
            else:  # one unit whose exact count with the prefix is over: split it finer
                u = inside[0]
                pending.append((_split_span(text, u.start, u.end, tighter, count, u.path, stats), tighter))
    done.sort(key=lambda c: c.start)
    return done, stats


class ChunkOptions(StrictModel):
    """What `danlu data chunk` and the pipeline's `chunk:` section set."""

    max_tokens: int = Field(4096, ge=8)  # token budget per chunk
    heading_prefix: bool = False  # start each chunk with its heading path


class ChunkConfig(ChunkOptions, ExecutorFields):
    inputs: list[str]
    out: str
    tokenizer: str  # HF tokenizer folder, a .tiktoken file or tiktoken:NAME


_COUNTERS: dict[str, CountFn] = {}  # per process: a worker loads each tokenizer once


def _counter(tokenizer: str) -> CountFn:
    """The stage's counter: one encoding thread (chunking makes many small calls, for which tiktoken's
    per-call thread pool cost ~2.5x the encoding itself; parallelism comes from the executor's workers)."""
    if tokenizer not in _COUNTERS:
        _COUNTERS[tokenizer] = load_counter(tokenizer, threads=1)
    return _COUNTERS[tokenizer]


@dataclass
class _Job:
    tokenizer: str
    max_tokens: int
    heading_prefix: bool
    lines: list[tuple[str, int, dict | BadLine]]  # (file as given, line number, record or bad line)


def _chunk_batch(job: _Job) -> list[tuple[dict | None, list[dict], dict]]:
    """Per input line: (its reject or None, its chunk records, its split counts). Runs in a worker."""
    count = _counter(job.tokenizer)
    out = []
    for path, lineno, rec in job.lines:
        if isinstance(rec, BadLine):
            out.append((rec.as_reject("chunk"), [], {}))
            continue
        text = rec["text"]
        parent_id = record_id(rec, path, lineno)
        chunks, st = plan_chunks(text, count, job.max_tokens, job.heading_prefix)
        if not chunks:
            out.append(({"path": path, "line": lineno, "stage": "chunk", "id": parent_id, "reason": NO_TEXT},
                        [], st))
            continue
        records = [{
            "id": stable_id(parent_id, idx),
            "text": c.prefix + text[c.start : c.end],
            "source": rec.get("source"),
            "path": rec.get("path"),
            "format": rec.get("format"),
            "meta": {**(rec.get("meta") or {}), "parent_id": parent_id, "chunk_index": idx,
                     "chunk_count": len(chunks), "heading_path": list(c.path), "tokens": c.tokens,
                     "char_start": c.start, "char_end": c.end, "prefix_chars": len(c.prefix)},
        } for idx, c in enumerate(chunks)]
        out.append((None, records, st))
    return out


def _jobs(files: list[Path], cfg: ChunkConfig, bar) -> Iterable[_Job]:
    """Consecutive lines of the inputs in batches of about BATCH_CHARS characters."""
    lines: list = []
    size = 0
    for path in files:
        bar.set_description(f"chunk {path.name}")
        for lineno, rec in read_jsonl(path, require={"text": str}):
            lines.append((str(path), lineno, rec))
            size += len(rec.raw) if isinstance(rec, BadLine) else len(rec["text"])
            if size >= BATCH_CHARS or len(lines) >= BATCH_RECORDS:
                yield _Job(cfg.tokenizer, cfg.max_tokens, cfg.heading_prefix, lines)
                lines, size = [], 0
    if lines:
        yield _Job(cfg.tokenizer, cfg.max_tokens, cfg.heading_prefix, lines)


def chunk(inputs: str | Path | Iterable[str | Path], out: str | Path, *, tokenizer: str | Path,
          sets: Iterable[str] = (), progress: bool = True, **options) -> dict:
    """Chunk Document JSONL into `out`/chunks.jsonl; returns the report (also in report.json).
    `options` are ChunkOptions' fields (max_tokens, heading_prefix) and where it runs (ExecutorFields:
    workers, executor, address; the output is the same everywhere)."""
    files = jsonl_files([inputs] if isinstance(inputs, (str, Path)) else inputs)
    cfg = build_config(ChunkConfig, fields=dict(options, inputs=[str(f) for f in files], out=str(out),
                                                tokenizer=str(tokenizer)), sets=sets, source="data chunk")
    max_tokens = cfg.max_tokens
    _counter(cfg.tokenizer)  # a tokenizer that does not load fails here, before any output
    ex = Executor.from_options(cfg, input_bytes(files))
    run = start_run(out, "chunk", cfg)
    t0 = time.time()
    n_in = docs = n_chunks = split_docs = tokens = max_seen = nbytes = over = 0
    chars_in = chars_kept = chars_empty = chunk_chars = 0
    bad: Counter = Counter()
    bad_chars: Counter = Counter()
    empty = 0
    splits = {"sentence_splits": 0, "hard_splits": 0}
    out_dir = Path(out)
    bar = tqdm(desc="chunk", unit="doc", disable=not progress or None)
    with ex, JsonlWriter(out_dir / "rejects.jsonl") as rejects, JsonlWriter(out_dir / "chunks.jsonl") as writer:
        run.log.info("executor: %s", ex.describe())
        for job, results in ex.map(_chunk_batch, _jobs(files, cfg, bar)):
            if isinstance(results, ItemFailed):
                raise RuntimeError(f"chunk: a batch of {len(job.lines)} records from {job.lines[0][0]}:"
                                   f"{job.lines[0][1]} failed: {results.reason}")
            bar.update(len(job.lines))
            for (path, lineno, rec), (reject, records, st) in zip(job.lines, results):
                n_in += 1
                if isinstance(rec, BadLine):
                    bad[reason_key(rec.error.split(":")[0])] += 1
                    bad_chars[reason_key(rec.error.split(":")[0])] += len(rec.raw.rstrip("\n"))
                    chars_in += len(rec.raw.rstrip("\n"))
                    rejects.write(reject)
                    continue
                text = rec["text"]
                chars_in += len(text)
                nbytes += len(text.encode("utf-8"))
                for k in splits:
                    splits[k] += st[k]
                if not records:
                    empty += 1
                    chars_empty += len(text)
                    rejects.write(reject)
                    continue
                docs += 1
                chars_kept += len(text)
                split_docs += len(records) > 1
                for r in records:
                    writer.write(r)
                    meta = r["meta"]
                    n_chunks += 1
                    chunk_chars += meta["char_end"] - meta["char_start"]
                    tokens += meta["tokens"]
                    max_seen = max(max_seen, meta["tokens"])
                    over += meta["tokens"] > max_tokens
        executed = ex.describe()
    bar.close()
    elapsed = time.time() - t0
    report = {
        # records in = documents chunked (each into one or more chunks) + filtered + rejected
        "counts": counts(n_in, docs, {NO_TEXT: empty}, bad),
        # characters of the input: a chunked document's text is kept whole (its chunks are slices of it: only
        # the whitespace between them is not in chunks.jsonl, chunk_chars says how much is)
        "chars": counts(chars_in, chars_kept, {NO_TEXT: chars_empty}, bad_chars, unit="characters of the input"),
        "headline": ["chunks", "split_docs", "tokens", "max_chunk_tokens", "chunk_chars", "mb_per_s"],
        "chunks": n_chunks, "chunk_chars": chunk_chars, "split_docs": split_docs, "tokens": tokens, "max_chunk_tokens": max_seen,
        "over_budget_chunks": over, **splits,
        "mb_per_s": round(nbytes / 1e6 / max(elapsed, 1e-9), 3),
        "outputs": {"records": "chunks.jsonl", "rejects": "rejects.jsonl"},
        "executor": executed,
    }
    return run.finish(report)
