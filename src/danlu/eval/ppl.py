"""`ppl`: loss, perplexity, bits per byte and bits per character per source on held-out documents.

Perplexity per token depends on the tokenizer (a vocabulary that cuts text into fewer, longer tokens has a
higher per-token loss for the same model quality), so a model with an expanded vocabulary cannot be compared
with its base by ppl. Bits per byte (total nats / ln 2 / UTF-8 bytes of the text) and per character can: they
price the same text whatever the tokens, so they are the headline figures, per source, so continued
pretraining shows its forgetting of general text next to its domain gain.

Each document is scored on its own: framed as the tokenizer frames it (its BOS; a tokenizer that adds none
gets its BOS, else EOS, in front, lm-eval's prefix token, so the first text token is predicted too), cut into
windows of `max_length` tokens every `stride` tokens when longer (each window scores only the tokens the
previous one did not, with the rest as context: the Hugging Face perplexity recipe), windows batched
right-padded.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from danlu.eval.config import PplConfig, Runtime

LN2 = math.log(2)


@dataclass
class DocStats:
    id: str
    source: str
    bytes: int
    chars: int
    tokens: int = 0  # tokens scored
    nats: float = 0.0
    windows: int = 0


@dataclass
class Window:
    doc: int
    ids: list[int]
    score_from: int  # positions >= this (targets ids[score_from:]) are scored; earlier ones are context


@dataclass
class SourceTotals:
    documents: int = 0
    tokens: int = 0
    bytes: int = 0
    chars: int = 0
    nats: float = 0.0
    docs: list = field(default_factory=list)

    def metrics(self) -> dict:
        loss = self.nats / self.tokens if self.tokens else float("nan")
        return {"documents": self.documents, "tokens": self.tokens, "bytes": self.bytes, "chars": self.chars,
                "loss": loss, "ppl": math.exp(min(loss, 50.0)) if self.tokens else float("nan"),
                "bits_per_byte": self.nats / LN2 / self.bytes if self.bytes else float("nan"),
                "bits_per_char": self.nats / LN2 / self.chars if self.chars else float("nan"),
                "bytes_per_token": self.bytes / self.tokens if self.tokens else float("nan")}


def frame(tokenizer, text: str) -> tuple[list[int], bool]:
    """(ids, framed): the tokenizer's encoding with its own special tokens, plus a prefix token in front when
    it adds none; `framed` is False when there is no token to put there (the first token is then context)."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    special = set(tokenizer.all_special_ids)
    if ids and ids[0] in special:
        return ids, True
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if prefix is None:
        return ids, False
    return [prefix] + ids, True


def windows(doc: int, ids: list[int], max_length: int, stride: int) -> list[Window]:
    """Strided windows: every token after the first is a target exactly once. The first window scores all it
    holds; each next one scores the next `stride` tokens with the max_length - stride tokens before them as
    context (stride < max_length, so every window keeps at least one token of context)."""
    out: list[Window] = []
    end = min(len(ids), max_length)
    out.append(Window(doc, ids[:end], score_from=1))
    while end < len(ids):
        new_end = min(len(ids), end + stride)
        begin = max(0, new_end - max_length)
        out.append(Window(doc, ids[begin:new_end], score_from=end - begin))
        end = new_end
    return out


def score_windows(model, wins: list[Window], batch_tokens: int, progress: bool = True) -> list[tuple[float, int]]:
    """(nats, tokens) per window: the summed next-token loss over its scored targets."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from danlu.train.objectives import IGNORE, cross_entropy_sum, lm_logits

    device = next(model.parameters()).device
    order = sorted(range(len(wins)), key=lambda i: -len(wins[i].ids))
    results: list[tuple[float, int]] = [(0.0, 0)] * len(wins)
    bar = tqdm(total=len(wins), desc="ppl windows", disable=not progress)
    start = 0
    with torch.no_grad():
        while start < len(order):
            width = len(wins[order[start]].ids)
            n = max(1, batch_tokens // width)
            idx = order[start: start + n]
            ids = torch.zeros((len(idx), width), dtype=torch.long)
            labels = torch.full((len(idx), width), IGNORE, dtype=torch.long)
            for j, i in enumerate(idx):
                w = wins[i]
                ids[j, : len(w.ids)] = torch.tensor(w.ids)
                labels[j, w.score_from: len(w.ids)] = torch.tensor(w.ids[w.score_from:])
            logits = lm_logits(model, {"input_ids": ids.to(device)}, doc_mask=False)
            # labels follow the HF convention (aligned with input_ids): position t predicts label t + 1
            shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE).to(device)
            for j, i in enumerate(idx):
                nats = cross_entropy_sum(logits[j].float(), shifted[j])
                results[i] = (float(nats.double()), int((shifted[j] != IGNORE).sum()))
            del logits
            bar.update(len(idx))
            start += len(idx)
    bar.close()
    return results


def run_ppl(model_dir: str | Path, out: str | Path, cfg: PplConfig, runtime: Runtime = Runtime(),
            progress: bool = True, loaded=None) -> dict:
    """Score held-out documents into the run folder `out`: results.json (per source and all), documents.jsonl
    (every document's tokens, bytes, nats, bits per byte), rejects.jsonl, index.html; returns the report."""
    from danlu.eval.fingerprint import data_fingerprint, eval_fingerprint, model_fingerprint
    from danlu.eval.model import load_model
    from danlu.jsonl import JsonlWriter, jsonl_files
    from danlu.records import read_records, record_id
    from danlu.runs import atomic_write_json, counts, reason_key, start_run

    run = start_run(out, "eval-ppl", cfg)
    files = jsonl_files(cfg.data)
    fp = eval_fingerprint(model_fingerprint(model_dir), data_fingerprint(files),
                          {"ppl": cfg.model_dump(mode="json", exclude={"batch_tokens", "data"})})
    lm = loaded or load_model(model_dir, runtime)
    max_length = min(cfg.max_length, lm.max_length)
    stride = min(cfg.stride, max_length)
    docs: list[DocStats] = []
    wins: list[Window] = []
    n_in, filtered, rejected = 0, Counter(), Counter()
    per_source_seen: Counter = Counter()
    unframed = 0
    with JsonlWriter(run.path("rejects.jsonl")) as rej:
        for path, line, rec, _ in read_records(files, kind="document"):
            n_in += 1
            if not isinstance(rec, dict):
                rejected[reason_key(rec.error)] += 1
                rej.write(rec.as_reject("eval-ppl"))
                continue
            source = str(rec.get("source") or Path(path).stem)
            if cfg.max_documents and per_source_seen[source] >= cfg.max_documents:
                filtered["max_documents"] += 1
                continue
            per_source_seen[source] += 1
            text = rec["text"]
            ids, framed = frame(lm.tokenizer, text)
            if len(ids) < 2:
                filtered["empty text"] += 1
                continue
            unframed += not framed
            docs.append(DocStats(id=record_id(rec, path, line), source=source, bytes=len(text.encode("utf-8")),
                                 chars=len(text)))
            wins += windows(len(docs) - 1, ids, max_length, stride)
    run.log.info("%d documents, %d windows (max_length %d, stride %d)", len(docs), len(wins), max_length, stride)
    for w, (nats, tokens) in zip(wins, score_windows(lm.model, wins, cfg.batch_tokens, progress)):
        d = docs[w.doc]
        d.nats += nats
        d.tokens += tokens
        d.windows += 1

    totals: dict[str, SourceTotals] = defaultdict(SourceTotals)
    with JsonlWriter(run.path("documents.jsonl")) as w:
        for d in docs:
            for key in (d.source, "(all)"):
                t = totals[key]
                t.documents += 1
                t.tokens += d.tokens
                t.bytes += d.bytes
                t.chars += d.chars
                t.nats += d.nats
            w.write({"id": d.id, "source": d.source, "tokens": d.tokens, "bytes": d.bytes, "chars": d.chars,
                     "windows": d.windows, "nats": d.nats, "loss": d.nats / d.tokens,
                     "bits_per_byte": d.nats / LN2 / d.bytes if d.bytes else None})
    sources = {k: totals[k].metrics() for k in sorted(totals, key=lambda k: (k == "(all)", k))}
    warnings = []
    if unframed:
        warnings.append(f"{unframed} document(s): the tokenizer has no BOS/EOS to put in front, so their first "
                        "token is context only (bits per byte still divide by all of the text's bytes)")
    doc = {"suite": "ppl", "max_length": max_length, "stride": stride, "sources": sources}
    atomic_write_json(run.path("results.json"), doc)
    allm = sources.get("(all)", {})
    report = run.finish({
        "suite": "ppl", "model": str(model_dir), "fingerprint": fp,
        "counts": counts(n_in, len(docs), filtered=filtered, rejected=rejected, unit="documents"),
        "headline": ["summary.bits_per_byte", "summary.loss", "summary.sources"],
        "summary": {"bits_per_byte": round(allm.get("bits_per_byte", float("nan")), 4),
                     "loss": round(allm.get("loss", float("nan")), 4), "sources": len(sources) - 1},
        "results": sources, "warnings": warnings})
    _write_html(run.path("index.html"), report, doc)
    return report


def _write_html(path, report: dict, doc: dict) -> None:
    from danlu.eval.html import bars, table, write_page

    cols = ["documents", "tokens", "bytes", "chars", "loss", "ppl", "bits_per_byte", "bits_per_char",
            "bytes_per_token"]
    rows = [[s, *(m[c] for c in cols)] for s, m in doc["sources"].items()]
    sections = [
        ("Per source", table(["source", *cols], rows)
         + "<p class='muted'>bits per byte = total nats / ln 2 / UTF-8 bytes: comparable across tokenizers; "
           "loss and ppl are per token of this model's tokenizer.</p>"),
        ("Bits per byte", bars({s: m["bits_per_byte"] for s, m in doc["sources"].items()})),
        ("Windows", f"<p>max_length {doc['max_length']}, stride {doc['stride']}</p>"),
    ]
    write_page(path, f"ppl: {report['model']}", report, sections)
