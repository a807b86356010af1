"""Compare tokenizers on a corpus: compression per source, vocabulary overlap, texts that split very differently."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from tokenizers import Tokenizer

from danlu.text import HAN_CHAR as CJK
from danlu.tokenizer.bytelevel import token_bytes
from danlu.tokenizer.corpus import CorpusStats, iter_documents
from danlu.tokenizer.encode import load_encoder


def compare_tokenizers(tokenizers: list[str | Path], corpus: list[str | Path], examples: int = 5) -> dict:
    """Per tokenizer and source: chars/token and tokens per 1,000 CJK characters; pairwise vocabulary overlap;
    the lines whose token counts differ most between the first tokenizer and each other one."""
    names = _names(tokenizers)
    stats = CorpusStats()
    by_source: dict[str, list[str]] = defaultdict(list)
    for source, text in iter_documents(corpus, stats):
        by_source[source].append(text)
    if not by_source:
        raise ValueError(f"no documents in {', '.join(map(str, corpus))}")
    encoders = {n: load_encoder(t) for n, t in zip(names, tokenizers)}
    hf = {n: Tokenizer.from_file(str(Path(t) / "tokenizer.json")) for n, t in zip(names, tokenizers)}

    rows = []
    for source in sorted(by_source):
        texts = by_source[source]
        chars, cjk = sum(map(len, texts)), sum(len(CJK.findall(t)) for t in texts)
        rows += [_row(source, name, len(texts), chars, cjk, sum(map(len, enc.encode_batch(texts))))
                 for name, enc in encoders.items()]
    for name in names:  # "(all)": the sums of the per-source rows (each text is encoded once)
        mine = [r for r in rows if r["tokenizer"] == name]
        rows.append(_row("(all)", name, *(sum(r[k] for r in mine) for k in ("documents", "characters",
                                                                           "cjk_characters", "tokens"))))
    vocabs = {n: _vocab_set(h) for n, h in hf.items()}
    overlap = [
        {"a": a, "b": b, "shared": len(vocabs[a] & vocabs[b]), "a_size": len(vocabs[a]), "b_size": len(vocabs[b]),
         "jaccard": round(len(vocabs[a] & vocabs[b]) / len(vocabs[a] | vocabs[b]), 4)}
        for i, a in enumerate(names) for b in names[i + 1:]
    ]
    lines = _sample_lines(by_source)
    diffs = [_most_different(lines, names[0], other, encoders, hf, examples) for other in names[1:]]
    return {
        "tokenizers": dict(zip(names, map(str, tokenizers))),
        "corpus": {"files": stats.files, "documents": stats.documents, "characters": stats.characters,
                   "rejected": len(stats.rejected)},
        "rows": rows,
        "vocab_overlap": overlap,
        "examples": [d for d in diffs if d],
    }


def _row(source: str, name: str, documents: int, chars: int, cjk: int, tokens: int) -> dict:
    return {
        "source": source, "tokenizer": name, "documents": documents, "characters": chars, "cjk_characters": cjk,
        "tokens": tokens,
        "chars_per_token": round(chars / tokens, 4) if tokens else None,
        "tokens_per_1000_cjk": round(1000 * tokens / cjk, 2) if cjk else None,
    }


def print_comparison(result: dict) -> None:
    """Rich tables: compression per source, overlap, and example splits."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="tokenizer comparison (higher chars/token and lower tokens/1k CJK = fewer tokens)")
    for col in ("source", "tokenizer", "docs", "chars", "tokens", "chars/token", "tokens/1k CJK"):
        table.add_column(col, justify="left" if col in ("source", "tokenizer") else "right")
    for r in result["rows"]:
        table.add_row(
            r["source"], r["tokenizer"], str(r["documents"]), f"{r['characters']:,}", f"{r['tokens']:,}",
            f"{r['chars_per_token']:.3f}" if r["chars_per_token"] else "-",
            f"{r['tokens_per_1000_cjk']:.1f}" if r["tokens_per_1000_cjk"] else "-",
        )
    console.print(table)
    ov = Table(title="vocabulary overlap (by token bytes)")
    for col in ("a", "b", "shared", "|a|", "|b|", "jaccard"):
        ov.add_column(col)
    for o in result["vocab_overlap"]:
        ov.add_row(o["a"], o["b"], str(o["shared"]), str(o["a_size"]), str(o["b_size"]), f"{o['jaccard']:.3f}")
    console.print(ov)
    for block in result["examples"]:
        console.print(f"[bold]lines that split most differently: {block['a']} vs {block['b']}[/bold]")
        for ex in block["lines"]:
            console.print(f"  {ex['a_tokens']} vs {ex['b_tokens']} tokens: {ex['text']!r}", markup=False, highlight=False)
            console.print(f"    {block['a']}: {' | '.join(ex['a_pieces'])}", markup=False, highlight=False)
            console.print(f"    {block['b']}: {' | '.join(ex['b_pieces'])}", markup=False, highlight=False)


def _names(paths: list[str | Path]) -> list[str]:
    names = [Path(p).name or str(p) for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def _vocab_set(tok: Tokenizer) -> set:
    out = set()
    added = {t.content for t in tok.get_added_tokens_decoder().values()}
    for s in set(tok.get_vocab(with_added_tokens=False)) - added:
        b = token_bytes(s)
        out.add(b if b is not None else s.encode("utf-8"))
    return out


def _sample_lines(by_source: dict[str, list[str]], limit: int = 20000) -> list[str]:
    lines = [ln.strip() for texts in by_source.values() for t in texts for ln in t.splitlines()]
    lines = sorted({ln for ln in lines if 8 <= len(ln) <= 200})
    step = max(1, len(lines) // limit)
    return lines[::step]


def _pieces(tok: Tokenizer, ids: list[int]) -> list[str]:
    out = []
    for i in ids:
        s = tok.id_to_token(i) or "?"
        b = token_bytes(s)
        out.append(b.decode("utf-8", "replace") if b is not None else s)
    return out


def _most_different(lines, a, b, encoders, hf, k) -> dict | None:
    if not lines or k <= 0:
        return None
    ids_a, ids_b = encoders[a].encode_batch(lines), encoders[b].encode_batch(lines)
    def ratio(i: int) -> float:
        na, nb = max(len(ids_a[i]), 1), max(len(ids_b[i]), 1)
        return max(na / nb, nb / na)

    order = [i for i in sorted(range(len(lines)), key=ratio, reverse=True) if len(ids_a[i]) != len(ids_b[i])]
    cjk = [i for i in order if CJK.search(lines[i])]
    picked = cjk[: (k + 1) // 2]  # half the examples with Chinese text, the rest whatever differs most
    picked += [i for i in order if i not in picked][: k - len(picked)]
    return {
        "a": a,
        "b": b,
        "lines": [
            {"text": lines[i], "a_tokens": len(ids_a[i]), "b_tokens": len(ids_b[i]),
             "a_pieces": _pieces(hf[a], ids_a[i]), "b_pieces": _pieces(hf[b], ids_b[i])}
            for i in picked
        ],
    }
