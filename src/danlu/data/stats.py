"""`danlu data stats`: what is in a corpus, and whether it is enough.

Documents, characters and tokens per source; length distributions; duplicate rate; for SFT data the
task_type mix, prompt/answer lengths and short answers (one-letter answers teach one-letter answering);
advice against the corpus sizes used for continued pretraining. Optional HTML report with embedded plots.
"""

from __future__ import annotations

import base64
import html as html_lib
import io
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from pydantic import Field

from danlu.config import StrictModel, build_config
from danlu.data.dedup import DedupKeys, dedup_keys, key_clusters, lsh_clusters, lsh_params
from danlu.data.executor import Executor, ExecutorFields, input_bytes
from danlu.jsonl import BadLine, jsonl_files
from danlu.records import read_records
from danlu.runs import counts, reason_key, start_run
from danlu.text import count_han
from danlu.workers import ItemFailed

NEAR = (128, 5, 1)  # near-duplicate MinHash: permutations, shingle size, seed (Jaccard >= NEAR_THRESHOLD)
NEAR_THRESHOLD = 0.8
BATCH_CHARS = 1 << 20  # text per task sent to a worker
BATCH_RECORDS = 2048
MIN_CPT_TOKENS = 10_000_000  # below this, continued pretraining rarely moves a model; prefer SFT/RAG
RECOMMENDED_CPT_TOKENS = 1_000_000_000


def estimate_tokens(text: str) -> int:
    """Rough token count without a tokenizer: ~1 token per CJK character, ~4 characters per token otherwise."""
    cjk = count_han(text)
    return cjk + (len(text) - cjk) // 4


def _sum_by(items: list[dict], key, field: str) -> Counter:
    out: Counter = Counter()
    for it in items:
        out[key(it)] += it[field]
    return out


def _dist(values: list[int]) -> dict:
    if not values:
        return {"count": 0}
    a = np.asarray(values)
    p = np.percentile(a, [10, 50, 90, 99])
    edges = np.unique(np.geomspace(1, max(int(a.max()), 2) + 1, 21).astype(int))
    hist, _ = np.histogram(a, bins=edges)
    return {"count": int(len(a)), "total": int(a.sum()), "mean": round(float(a.mean()), 1), "min": int(a.min()),
            "p10": float(p[0]), "p50": float(p[1]), "p90": float(p[2]), "p99": float(p[3]), "max": int(a.max()),
            "histogram": {"edges": edges.tolist(), "counts": hist.tolist()}}


def _advice(tokens: int, estimated: bool, sft: dict | None) -> list[str]:
    how = "estimated " if estimated else ""
    out = []
    if tokens < MIN_CPT_TOKENS:
        out.append(f"{tokens:,} {how}tokens is below the ~10M tokens continued pretraining needs to move a model; "
                   "use this data for SFT or retrieval (RAG), or gather more domain text.")
    elif tokens < RECOMMENDED_CPT_TOKENS:
        out.append(f"{tokens:,} {how}tokens clears the ~10M minimum for continued pretraining; ~1B is "
                   "recommended, so mix in general data to avoid forgetting and expect modest gains.")
    else:
        out.append(f"{tokens:,} {how}tokens meets the ~1B tokens recommended for continued pretraining.")
    if sft and sft["short_answers"]["count"]:
        n, total = sft["short_answers"]["count"], sft["records"]
        out.append(f"{n} of {total} SFT answers are at most {sft['short_answers']['max_chars']} characters: "
                   "short answers teach the model to answer tersely; remove or expand them.")
    return out


class StatsOptions(StrictModel):
    near_dup: bool = True  # also measure near-duplicates (MinHash)
    short_answer_chars: int = Field(3, ge=0)  # flag SFT answers of at most this many characters
    html: bool = True  # write OUT/report.html with plots


class StatsConfig(StatsOptions, ExecutorFields):
    inputs: list[str]
    out: str
    tokenizer: Optional[str] = None  # count real tokens (else estimated)


@dataclass
class _Record:
    """What the report needs of one record (computed in a worker; the text stays there)."""

    source: str
    chars: int
    tokens: int
    sft: bool = False
    task_type: str = ""
    prompt_chars: int = 0
    answer_chars: int = 0  # of the stripped answer
    prompt_tokens: int = 0
    answer_tokens: int = 0
    id: object = None


@dataclass
class _Job:
    tokenizer: str | None
    near: bool
    lines: list[tuple[str, int, object, str]]  # (file as given, line number, record or bad line, kind)


_COUNTERS: dict[str, object] = {}  # per process: a worker loads each tokenizer once


def _counter(tokenizer: str):
    if tokenizer not in _COUNTERS:
        from danlu.data.chunk import load_counter

        _COUNTERS[tokenizer] = load_counter(tokenizer)  # one call per batch: tiktoken's threads pay off
    return _COUNTERS[tokenizer]


def _stats_batch(job: _Job) -> tuple[list[_Record | dict], DedupKeys]:
    """Per input line its _Record (or, for a bad line, its entry in report["bad"]), and the dedup keys of the
    records' texts. Runs in a worker."""
    count = _counter(job.tokenizer) if job.tokenizer is not None else None
    out: list[_Record | dict] = []
    texts, pieces, owners = [], [], []
    for path, lineno, rec, kind in job.lines:
        if isinstance(rec, BadLine):
            out.append({"path": path, "line": lineno, "reason": rec.error, "chars": len(rec.raw.rstrip("\n"))})
            continue
        r = _Record(str(rec.get("source") or "unknown"), 0, 0)
        if kind != "document":
            msgs = rec["messages"] + ([rec["chosen"]] if kind == "preference" else [])
            last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
            prompt = "\n\n".join(m["content"] for m in (msgs[:last] if last is not None else msgs))
            answer = msgs[last]["content"] if last is not None else ""
            after = "\n\n".join(m["content"] for m in msgs[last + 1 :]) if last is not None else ""
            text = "\n\n".join(m["content"] for m in msgs)
            r.sft, r.task_type, r.id = True, str(rec.get("task_type") or "unknown"), rec.get("id")
            r.prompt_chars, r.answer_chars = len(prompt), len(answer.strip())
            # tokens of the record: its messages' contents, counted once (without a tokenizer: the estimate
            # of the joined text, as for documents)
            ps = ([prompt, answer] + ([after] if after else [])) if count else [text]
        else:
            text = rec["text"]
            ps = [text]
        r.chars = len(text)
        texts.append(text)
        pieces += ps
        owners.append((r, len(ps)))
        out.append(r)
    ns = iter(count(pieces) if count else [estimate_tokens(t) for t in pieces])
    for r, k in owners:
        got = [next(ns) for _ in range(k)]
        if r.sft and count:
            r.prompt_tokens, r.answer_tokens = got[0], got[1]
        r.tokens = sum(got)
    return out, dedup_keys(texts, exact=True, near=[NEAR] if job.near else [])


def _jobs(files: list[Path], cfg: StatsConfig) -> Iterable[_Job]:
    """Consecutive records in batches of about BATCH_CHARS characters."""
    lines: list = []
    size = 0
    for path, lineno, rec, kind in read_records(files, "auto"):
        lines.append((str(path), lineno, rec, kind))
        size += len(rec.raw) if isinstance(rec, BadLine) else len(rec.get("text") or "") + sum(
            len(m["content"]) for m in rec.get("messages") or ())
        if size >= BATCH_CHARS or len(lines) >= BATCH_RECORDS:
            yield _Job(cfg.tokenizer, cfg.near_dup, lines)
            lines, size = [], 0
    if lines:
        yield _Job(cfg.tokenizer, cfg.near_dup, lines)


def stats(inputs: str | Path | Iterable[str | Path], out: str | Path, *, tokenizer: str | Path | None = None,
          sets: Iterable[str] = (), **options) -> dict:
    """Corpus statistics for Document or SFT JSONL (auto-detected per record) into the run folder `out`:
    report.json and, unless html=False, report.html. `options` are StatsOptions' fields."""
    files = jsonl_files([inputs] if isinstance(inputs, (str, Path)) else inputs)
    cfg = build_config(StatsConfig, fields=dict(options, inputs=[str(f) for f in files], out=str(out),
                                                tokenizer=str(tokenizer) if tokenizer is not None else None),
                       sets=sets, source="data stats")
    ex = Executor.from_options(cfg, input_bytes(files))
    run = start_run(out, "stats", cfg)
    short_answer_chars = cfg.short_answer_chars
    if cfg.tokenizer is not None:
        _counter(cfg.tokenizer)  # a tokenizer that does not load fails here, before any work
    count = cfg.tokenizer is not None
    per_source: dict[str, dict] = defaultdict(lambda: {"docs": 0, "chars": 0, "tokens": 0})
    char_lens, token_lens, bad = [], [], []
    task_types: Counter[str] = Counter()
    prompt_chars, answer_chars, prompt_tokens, answer_tokens, short = [], [], [], [], []
    n_sft = 0
    keys: list[DedupKeys] = []
    with ex:
        run.log.info("executor: %s", ex.describe())
        for job, result in ex.map(_stats_batch, _jobs(files, cfg)):
            if isinstance(result, ItemFailed):
                raise RuntimeError(f"stats: a batch of {len(job.lines)} records from {job.lines[0][0]}:"
                                   f"{job.lines[0][1]} failed: {result.reason}")
            records, batch_keys = result
            keys.append(batch_keys)
            for r in records:
                if isinstance(r, dict):
                    bad.append(r)
                    continue
                if r.sft:
                    n_sft += 1
                    task_types[r.task_type] += 1
                    prompt_chars.append(r.prompt_chars)
                    answer_chars.append(r.answer_chars)
                    if r.answer_chars <= short_answer_chars:
                        short.append(r.id)
                    if count:
                        prompt_tokens.append(r.prompt_tokens)
                        answer_tokens.append(r.answer_tokens)
                per_source[r.source]["docs"] += 1
                per_source[r.source]["chars"] += r.chars
                per_source[r.source]["tokens"] += r.tokens
                char_lens.append(r.chars)
                token_lens.append(r.tokens)

        docs = len(char_lens)
        exact = np.concatenate([k.exact for k in keys]) if keys else np.zeros((0, 16), dtype=np.uint8)
        pairs = ex.band_join("stats")
        exact_dups = int((key_clusters(exact, pairs=pairs) != np.arange(docs)).sum())
        dup = {"exact_duplicates": exact_dups, "exact_rate": round(exact_dups / max(docs, 1), 4)}
        if cfg.near_dup and docs:
            sig = np.concatenate([k.near[NEAR] for k in keys])
            empty = np.concatenate([k.empty for k in keys])
            rep = lsh_clusters(sig, *lsh_params(NEAR_THRESHOLD, NEAR[0]), skip=empty, pairs=pairs,
                               parts=1 if ex.kind == "local" else 2)
            near = int((rep != np.arange(docs)).sum())
            dup |= {"near_duplicates": near, "near_rate": round(near / max(docs, 1), 4),
                    "near_settings": "MinHash-LSH, 5-char shingles, 128 permutations, Jaccard >= 0.8 (includes exact duplicates)"}
        del keys
        executed = ex.describe()
    total_tokens = sum(s["tokens"] for s in per_source.values())
    sft_part = None
    if n_sft:
        sft_part = {
            "records": n_sft,
            "task_types": dict(task_types.most_common()),
            "prompt_chars": _dist(prompt_chars), "answer_chars": _dist(answer_chars),
            **({"prompt_tokens": _dist(prompt_tokens), "answer_tokens": _dist(answer_tokens)} if count else {}),
            "short_answers": {"max_chars": short_answer_chars, "count": len(short), "ids": short[:50]},
        }
    report = {
        "counts": counts(docs + len(bad), docs, rejected=Counter(reason_key(b["reason"].split(":")[0]) for b in bad)),
        # characters: of the records read (their text, as counted below) and of the lines that were not records
        "chars": counts(sum(char_lens) + sum(b["chars"] for b in bad), sum(char_lens),
                        rejected=_sum_by(bad, lambda b: reason_key(b["reason"].split(":")[0]), "chars"),
                        unit="characters of the input"),
        "headline": ["characters", "tokens", "tokens_estimated", "duplicates.exact_duplicates", "duplicates.near_duplicates"],
        "inputs": [str(f) for f in files],
        "bad": bad[:100],
        "characters": sum(char_lens),
        "tokens": total_tokens,
        "tokens_estimated": not count,
        "tokenizer": cfg.tokenizer,
        "per_source": {k: dict(v) for k, v in sorted(per_source.items())},
        "char_lengths": _dist(char_lens),
        "token_lengths": _dist(token_lens),
        "duplicates": dup,
        **({"sft": sft_part} if sft_part else {}),
    }
    report["advice"] = _advice(total_tokens, not count, sft_part)
    report["executor"] = executed
    if cfg.html:
        write_html(report, run.path("report.html"), char_lens, token_lens, prompt_chars, answer_chars)
    return run.finish(report)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _hist(ax, values: list[int], title: str, xlabel: str) -> None:
    if values:
        top = max(max(values), 2)
        ax.hist(values, bins=np.geomspace(1, top + 1, 40))
        ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("records")


def write_html(report: dict, path: str | Path, char_lens, token_lens, prompt_chars, answer_chars) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from danlu.runs import atomic_write_text

    images = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    _hist(axes[0], char_lens, "Characters per record", "characters (log)")
    _hist(axes[1], token_lens, "Tokens per record" + (" (estimated)" if report["tokens_estimated"] else ""),
          "tokens (log)")
    images.append(("Length distributions", _png(fig)))
    plt.close(fig)
    sources = report["per_source"]
    if sources:
        fig, ax = plt.subplots(figsize=(11, 0.4 * len(sources) + 1.5))
        names = list(sources)
        ax.barh(names, [sources[n]["tokens"] for n in names])
        ax.set_xlabel("tokens")
        ax.set_title("Tokens per source")
        images.append(("Sources", _png(fig)))
        plt.close(fig)
    sft = report.get("sft")
    if sft:
        fig, axes = plt.subplots(1, 3, figsize=(15, 3.5))
        tt = sft["task_types"]
        axes[0].barh(list(tt), list(tt.values()))
        axes[0].set_title("task_type")
        _hist(axes[1], prompt_chars, "Prompt length", "characters (log)")
        _hist(axes[2], answer_chars, "Answer length", "characters (log)")
        axes[2].axvline(sft["short_answers"]["max_chars"] + 0.5, color="red", linestyle="--")
        images.append(("SFT", _png(fig)))
        plt.close(fig)

    esc = html_lib.escape
    rows = "".join(
        f"<tr><td>{esc(k)}</td><td>{v['docs']:,}</td><td>{v['chars']:,}</td><td>{v['tokens']:,}</td></tr>"
        for k, v in sources.items()
    )
    dup = report["duplicates"]
    dup_line = f"exact duplicates: {dup['exact_duplicates']:,} ({dup['exact_rate']:.2%})"
    if "near_duplicates" in dup:
        dup_line += f"; near duplicates: {dup['near_duplicates']:,} ({dup['near_rate']:.2%})"
    body = [
        "<h1>danlu corpus statistics</h1>",
        f"<p>{report['counts']['kept']:,} records, {report['characters']:,} characters, {report['tokens']:,} tokens"
        f"{' (estimated)' if report['tokens_estimated'] else ''}; "
        f"{sum(report['counts']['rejected'].values())} bad records.</p>",
        "<h2>Advice</h2><ul>" + "".join(f"<li>{esc(a)}</li>" for a in report["advice"]) + "</ul>",
        "<h2>Per source</h2><table><tr><th>source</th><th>records</th><th>chars</th><th>tokens</th></tr>"
        + rows + "</table>",
        f"<h2>Duplicates</h2><p>{esc(dup_line)}</p>",
    ]
    if sft:
        short = sft["short_answers"]
        body.append(f"<h2>SFT</h2><p>{sft['records']:,} records; {short['count']:,} answers of at most "
                    f"{short['max_chars']} characters (first ids: {esc(', '.join(map(str, short['ids'][:10])))})</p>")
    for title, data in images:
        body.append(f"<h2>{esc(title)}</h2><img alt='{esc(title)}' src='data:image/png;base64,{data}'>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>danlu stats</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{padding:2px 10px;text-align:right}"
            "td:first-child,th:first-child{text-align:left}</style></head><body>" + "\n".join(body) + "</body></html>")
    atomic_write_text(path, page)
