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
from pathlib import Path
from typing import Iterable

import numpy as np

from danlu.data.clean.pipeline import read_records
from danlu.data.dedup import exact_clusters, near_clusters
from danlu.jsonl import BadLine, jsonl_files
from danlu.text import count_han

MIN_CPT_TOKENS = 10_000_000  # below this, continued pretraining rarely moves a model; prefer SFT/RAG
RECOMMENDED_CPT_TOKENS = 1_000_000_000


def estimate_tokens(text: str) -> int:
    """Rough token count without a tokenizer: ~1 token per CJK character, ~4 characters per token otherwise."""
    cjk = count_han(text)
    return cjk + (len(text) - cjk) // 4


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


def stats(
    inputs: str | Path | Iterable[str | Path],
    *,
    tokenizer: str | Path | None = None,
    html: str | Path | None = None,
    near_dup: bool = True,
    short_answer_chars: int = 3,
) -> dict:
    """Corpus statistics for Document or SFT JSONL (auto-detected per record); writes `html` if given."""
    files = jsonl_files([inputs] if isinstance(inputs, (str, Path)) else inputs)
    count = None
    if tokenizer is not None:
        from danlu.data.chunk import load_counter

        count = load_counter(tokenizer)
    per_source: dict[str, dict] = defaultdict(lambda: {"docs": 0, "chars": 0, "tokens": 0})
    char_lens, token_lens, texts, bad = [], [], [], []
    task_types: Counter[str] = Counter()
    prompt_chars, answer_chars, prompt_tokens, answer_tokens, short = [], [], [], [], []
    n_sft = 0
    # (source, pieces, is_sft): a document's text, or an SFT record's [prompt, answer, messages after the answer]
    batch: list[tuple[str, list[str], bool]] = []

    def flush() -> None:
        pieces = [t for _, ps, _ in batch for t in ps]
        counts = iter(count(pieces) if count else [estimate_tokens(t) for t in pieces])
        for src, ps, is_sft in batch:
            ns = [next(counts) for _ in ps]
            if is_sft and count:
                prompt_tokens.append(ns[0])
                answer_tokens.append(ns[1])
            n = sum(ns)
            per_source[src]["tokens"] += n
            token_lens.append(n)
        batch.clear()

    for path, lineno, rec, sft in read_records(files, "auto"):
        if isinstance(rec, BadLine):
            bad.append({"path": str(path), "line": lineno, "reason": rec.error})
            continue
        src = str(rec.get("source") or "unknown")
        if sft:
            n_sft += 1
            msgs = rec["messages"]
            last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
            prompt = "\n\n".join(m["content"] for m in (msgs[:last] if last is not None else msgs))
            answer = msgs[last]["content"] if last is not None else ""
            after = "\n\n".join(m["content"] for m in msgs[last + 1 :]) if last is not None else ""
            text = "\n\n".join(m["content"] for m in msgs)
            task_types[str(rec.get("task_type") or "unknown")] += 1
            prompt_chars.append(len(prompt))
            answer_chars.append(len(answer.strip()))
            if len(answer.strip()) <= short_answer_chars:
                short.append(rec.get("id"))
            # tokens of the record: its messages' contents, counted once (without a tokenizer: the estimate
            # of the joined text, as for documents)
            pieces = ([prompt, answer] + ([after] if after else [])) if count else [text]
        else:
            text = rec["text"]
            pieces = [text]
        per_source[src]["docs"] += 1
        per_source[src]["chars"] += len(text)
        char_lens.append(len(text))
        texts.append(text)
        batch.append((src, pieces, sft))
        if len(batch) >= 256:
            flush()
    flush()

    docs = len(texts)
    exact_dups = int((exact_clusters(texts) != np.arange(docs)).sum())
    dup = {"exact_duplicates": exact_dups, "exact_rate": round(exact_dups / max(docs, 1), 4)}
    if near_dup and docs:
        rep = near_clusters(texts).representative
        near = int((rep != np.arange(docs)).sum())
        dup |= {"near_duplicates": near, "near_rate": round(near / max(docs, 1), 4),
                "near_settings": "MinHash-LSH, 5-char shingles, 128 permutations, Jaccard >= 0.8 (includes exact duplicates)"}
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
        "inputs": [str(f) for f in files],
        "records": docs + len(bad),
        "documents": docs,
        "bad_records": len(bad),
        "bad": bad[:100],
        "chars": sum(char_lens),
        "tokens": total_tokens,
        "tokens_estimated": count is None,
        "tokenizer": str(tokenizer) if tokenizer else None,
        "per_source": {k: dict(v) for k, v in sorted(per_source.items())},
        "char_lengths": _dist(char_lens),
        "token_lengths": _dist(token_lens),
        "duplicates": dup,
        **({"sft": sft_part} if sft_part else {}),
    }
    report["advice"] = _advice(total_tokens, count is None, sft_part)
    if html:
        write_html(report, html, char_lens, token_lens, prompt_chars, answer_chars)
    return report


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
        f"<p>{report['documents']:,} records, {report['chars']:,} characters, {report['tokens']:,} tokens"
        f"{' (estimated)' if report['tokens_estimated'] else ''}; {report['bad_records']} bad records.</p>",
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
