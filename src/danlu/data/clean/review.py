"""review.html: what each operator removed, so thresholds are chosen by looking at examples, not by trust.

Per operator: records and sections removed, characters and share of the corpus; per reason (numbers folded,
as in the report's counts): how often, how many characters, and a sample of examples - a seeded reservoir
sample, plus the largest removals, which are where a bad threshold costs most. Each example shows its record,
span and the removed text (cut to `excerpt_chars`).
"""

from __future__ import annotations

import html
import random
from collections import defaultdict
from dataclasses import dataclass, field

from pydantic import Field

from danlu.config import StrictModel
from danlu.runs import atomic_write_text


class ReviewOptions(StrictModel):
    examples: int = Field(8, ge=0)  # random examples kept per operator and reason
    largest: int = Field(3, ge=0)  # the largest removals kept per operator
    excerpt_chars: int = Field(1500, ge=100)  # removed text shown per example


@dataclass
class Example:
    op: str
    reason: str
    id: str
    path: str | None
    chars: int
    text: str
    span: tuple[int, int] | None = None  # a removed section; None: the whole record
    duplicate_of: str | None = None


@dataclass
class _Sample:
    seen: int = 0
    items: list[Example] = field(default_factory=list)


class Review:
    def __init__(self, opts: ReviewOptions, seed: int = 0):
        self.opts = opts
        self.rng = random.Random(seed)
        self.samples: dict[tuple[str, str], _Sample] = defaultdict(_Sample)
        self.largest: dict[str, list[Example]] = defaultdict(list)

    def add(self, ex: Example, reason_key: str) -> None:
        ex.text = ex.text[: self.opts.excerpt_chars]
        s = self.samples[(ex.op, reason_key)]
        s.seen += 1
        if len(s.items) < self.opts.examples:
            s.items.append(ex)
        else:  # reservoir sampling: every removal has the same chance to be shown
            j = self.rng.randrange(s.seen)
            if j < self.opts.examples:
                s.items[j] = ex
        big = self.largest[ex.op]
        if self.opts.largest and (len(big) < self.opts.largest or ex.chars > big[-1].chars):
            big.append(ex)
            big.sort(key=lambda e: -e.chars)
            del big[self.opts.largest :]

    def write(self, path, operators: list[dict], total_chars: int, dry_run: bool) -> None:
        esc = html.escape
        body = ["<h1>danlu clean: what each operator removed</h1>",
                f"<p>{'Dry run: nothing was written to clean.jsonl. ' if dry_run else ''}"
                f"Corpus: {total_chars:,} characters as read. Shares are of that.</p>",
                "<table><tr><th>operator</th><th>granularity</th><th>records in</th><th>records removed</th>"
                "<th>sections removed</th><th>chars removed</th><th>share</th></tr>"]
        for o in operators:
            if o["kind"] in ("read", "transform"):
                continue
            body.append(f"<tr><td><a href='#{esc(o['op'])}'>{esc(o['op'])}</a></td><td>{esc(o.get('granularity', ''))}"
                        f"</td><td>{o['in']:,}</td><td>{o['removed']:,}</td><td>{o.get('sections_removed', 0):,}</td>"
                        f"<td>{o['chars_removed']:,}</td><td>{o['chars_share']:.2%}</td></tr>")
        body.append("</table>")
        by_op: dict[str, list[tuple[str, _Sample]]] = defaultdict(list)
        for (op, key), s in self.samples.items():
            by_op[op].append((key, s))
        for o in operators:
            op = o["op"]
            if op not in by_op:
                continue
            body.append(f"<h2 id='{esc(op)}'>{esc(op)}</h2>")
            reason_chars = o.get("reason_chars", {})
            for key, s in sorted(by_op[op], key=lambda kv: -reason_chars.get(kv[0], 0)):
                body.append(f"<h3>{esc(key)}: {s.seen:,} removals, {reason_chars.get(key, 0):,} chars"
                            f"{'; a random ' + str(len(s.items)) if s.seen > len(s.items) else ''}</h3>")
                body.extend(_example(e) for e in s.items)
            if self.largest.get(op):
                body.append("<h3>largest removals</h3>")
                body.extend(_example(e) for e in self.largest[op])
        page = ("<!doctype html><html><head><meta charset='utf-8'><title>danlu clean review</title><style>"
                "body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{padding:2px 10px}"
                "pre{white-space:pre-wrap;background:#f6f6f6;padding:.5em;max-height:18em;overflow:auto}"
                ".meta{color:#555;font-size:90%}</style></head><body>" + "\n".join(body) + "</body></html>")
        atomic_write_text(path, page)


def _example(e: Example) -> str:
    esc = html.escape
    where = f"section {e.span[0]:,}-{e.span[1]:,}" if e.span else "whole record"
    dup = f"; duplicate of {esc(e.duplicate_of)}" if e.duplicate_of else ""
    return (f"<div class='meta'>{esc(e.id)} {esc(e.path or '')} - {where}, {e.chars:,} chars; "
            f"{esc(e.reason)}{dup}</div><pre>{esc(e.text)}</pre>")
