"""`danlu data ...` commands. Each parses its flags and calls the stage's library function."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(no_args_is_help=True)


def _print_summary(report: dict, keys: tuple[str, ...]) -> None:
    parts = [f"{k}={report[k]}" for k in keys if k in report]
    typer.echo(" ".join(parts))


@app.command("ingest")
def ingest_cmd(
    inputs: List[Path] = typer.Argument(..., help="Files and folders to import (walked recursively)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder: documents.jsonl, rejects.jsonl, report.json."),
    source: Optional[str] = typer.Option(None, "--source", help="Corpus name for every record (default: input folder name)."),
    text_field: str = typer.Option("text", "--text-field", help="Field/column holding the text in jsonl/json/csv."),
    ocr: str = typer.Option("auto", "--ocr", help="OCR for PDF pages without a text layer: auto|off|force."),
    workers: int = typer.Option(0, "--workers", help="Reader processes (0: one per CPU core)."),
    file_timeout: float = typer.Option(3600.0, "--file-timeout", help="Stop a reader stuck this many seconds on "
                                       "one file; it fails, the run goes on (with 2+ workers; 0: no limit)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Import documents (txt, md, html, pdf, docx, epub, man pages, jsonl/json/csv) as JSONL document records."""
    from danlu.data.ingest import ingest

    if ocr not in ("auto", "off", "force"):
        raise typer.BadParameter(f"--ocr must be auto, off or force (got {ocr!r})")
    report = ingest(inputs, out, source=source, text_field=text_field, ocr=ocr, workers=workers or None,
                    file_timeout=file_timeout or None, progress=progress)
    files = report["files"]
    typer.echo(f"files={files['in']} written={files['written']} skipped={files['skipped']} failed={files['failed']} "
               f"records={report['records']} chars={report['chars']} ocr_pages={report['ocr_pages']} -> {out}")
    for f in report["failed"][:20]:
        typer.echo(f"  failed {f['path']}: {f['reason']}", err=True)
    if len(report["failed"]) > 20:
        typer.echo(f"  ... {len(report['failed']) - 20} more in {out}/report.json", err=True)


@app.command("tokenize")
def tokenize_cmd(
    inputs: List[Path] = typer.Argument(..., help="Document JSONL files or folders of them."),
    out: Path = typer.Option(..., "-o", "--out", help="Token store folder to write (resumed if unfinished)."),
    tokenizer: Path = typer.Option(..., "--tokenizer", help="Hugging Face tokenizer folder (tokenizer.json)."),
    source: Optional[str] = typer.Option(None, "--source", help="Source name of every record (default: its own)."),
    workers: int = typer.Option(0, "--workers", help="Encoding processes (0: one per CPU core)."),
    shard_mb: float = typer.Option(32.0, "--shard-mb", help="MB of text per shard (unit of resume and parallelism)."),
    force: bool = typer.Option(False, "--force", help="Redo a finished store."),
) -> None:
    """Tokenize documents once into a memory-mapped token store that pretraining runs stream from."""
    from danlu.data.tokenize import tokenize

    report = tokenize(inputs, out, tokenizer, source=source, workers=workers, shard_mb=shard_mb, force=force)
    if report.get("reused"):
        typer.echo(f"{out}: already tokenized (report.json complete); use --force to redo")
    _print_summary(report, ("records_in", "docs", "rejected", "tokens", "dtype", "shards", "shards_reused", "mb_per_s"))


@app.command("clean")
def clean_cmd(
    inputs: List[Path] = typer.Argument(..., help="Document or SFT JSONL files, or folders of them."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (clean.jsonl, rejects.jsonl, report.json)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Clean pipeline YAML (default: a preset)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="pretrain or sft (default: from the first record)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Normalise, mask PII, filter and deduplicate records; every removal is explained in rejects.jsonl."""
    from danlu.data.clean import clean

    report = clean(inputs, out, config=config, preset=preset, progress=progress)
    typer.echo(f"in={report['in']} kept={report['kept']} removed={report['removed']} "
               f"bad_records={report['bad_records']} -> {out}")
    for o in report["operators"]:
        extra = f" chars_changed={o['chars_changed']}" if "chars_changed" in o else ""
        typer.echo(f"  {o['op']:<12} in={o['in']} kept={o['kept']} removed={o['removed']}{extra}")


@app.command("dedup")
def dedup_cmd(
    inputs: List[Path] = typer.Argument(..., help="Document or SFT JSONL files, or folders of them."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (clean.jsonl, rejects.jsonl, report.json)."),
    exact: bool = typer.Option(True, "--exact/--no-exact", help="Drop exact duplicates (NFKC, case, whitespace)."),
    near: bool = typer.Option(True, "--near/--no-near", help="Drop MinHash-LSH near-duplicates."),
    threshold: float = typer.Option(0.8, "--threshold", help="Near-duplicate Jaccard threshold."),
    ngram: int = typer.Option(5, "--ngram", help="Character shingle size for near-duplicates."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Only deduplicate (no normalising or filtering): `data clean` with just its dedup steps. Each removed
    record is in rejects.jsonl with the id of the record it duplicates."""
    from danlu.config import validate
    from danlu.data.clean import clean
    from danlu.data.clean.config import CleanConfig

    steps = ([{"op": "exact_dedup"}] if exact else []) + (
        [{"op": "near_dedup", "threshold": threshold, "ngram": ngram}] if near else [])
    if not steps:
        raise typer.BadParameter("nothing to do: both --no-exact and --no-near")
    report = clean(inputs, out, config=validate({"steps": steps}, CleanConfig, "dedup"), progress=progress)
    typer.echo(f"in={report['in']} kept={report['kept']} removed={report['removed']} "
               f"bad_records={report['bad_records']} -> {out}")
    for o in report["operators"]:
        typer.echo(f"  {o['op']:<12} in={o['in']} kept={o['kept']} removed={o['removed']}")


@app.command("chunk")
def chunk_cmd(
    inputs: List[Path] = typer.Argument(..., help="Document JSONL files or folders of them."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (chunks.jsonl, report.json)."),
    tokenizer: str = typer.Option(..., "--tokenizer", help="HF tokenizer folder, a .tiktoken file or tiktoken:NAME."),
    max_tokens: int = typer.Option(4096, "--max-tokens", help="Token budget per chunk."),
    heading_prefix: bool = typer.Option(False, "--heading-prefix", help="Start each chunk with its heading path."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Split long Markdown documents at section boundaries and pack sections up to the token budget."""
    from danlu.data.chunk import chunk

    report = chunk(inputs, out, tokenizer=tokenizer, max_tokens=max_tokens, heading_prefix=heading_prefix,
                   progress=progress)
    _print_summary(report, ("in", "docs", "chunks", "split_docs", "removed", "tokens", "max_chunk_tokens",
                            "sentence_splits", "hard_splits", "mb_per_s"))


@app.command("stats")
def stats_cmd(
    inputs: List[Path] = typer.Argument(..., help="Document or SFT JSONL files, or folders of them."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Count real tokens (else estimated)."),
    html: Optional[Path] = typer.Option(None, "--html", help="Write an HTML report with plots here."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the statistics as JSON here."),
    near_dup: bool = typer.Option(True, "--near-dup/--no-near-dup", help="Also measure near-duplicates."),
    short_answer: int = typer.Option(3, "--short-answer", help="Flag SFT answers of at most this many chars."),
) -> None:
    """Documents, characters and tokens per source, lengths, duplicates, SFT mix, and corpus-size advice."""
    from danlu.data.stats import stats
    from danlu.runs import atomic_write_json

    report = stats(inputs, tokenizer=tokenizer, html=html, near_dup=near_dup, short_answer_chars=short_answer)
    est = " (estimated)" if report["tokens_estimated"] else ""
    typer.echo(f"documents={report['documents']} chars={report['chars']} tokens={report['tokens']}{est} "
               f"bad_records={report['bad_records']}")
    for name, s in report["per_source"].items():
        typer.echo(f"  {name}: docs={s['docs']} chars={s['chars']} tokens={s['tokens']}")
    d = report["duplicates"]
    typer.echo(f"duplicates: exact={d['exact_duplicates']} ({d['exact_rate']:.2%})"
               + (f" near={d['near_duplicates']} ({d['near_rate']:.2%})" if "near_duplicates" in d else ""))
    if "sft" in report:
        s = report["sft"]
        typer.echo(f"sft: records={s['records']} task_types={s['task_types']} "
                   f"short_answers={s['short_answers']['count']}")
    for line in report["advice"]:
        typer.echo(f"advice: {line}")
    if json_out:
        atomic_write_json(json_out, report)
    if html:
        typer.echo(f"html report: {html}")
