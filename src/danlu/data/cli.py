"""`danlu data ...` commands. Each parses its flags and calls the stage's library function.

Flags default to None ("not given"): the stage's config model holds every default, and `--set key=value`
overrides any of its fields. Every command prints the stage's report through danlu.runs.summary_lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from danlu.cliutil import echo_report, force_option, run_stage, sets_option

app = typer.Typer(no_args_is_help=True)
WORKERS_HELP = "Worker processes (0: one per CPU core; small inputs run in one). With --executor ray: CPUs of the local Ray instance."


def _executor_option():
    return typer.Option(None, "--executor", help="Where the work runs: local (a process pool) or ray (Ray tasks "
                        "on a cluster or a local instance; pip install 'danlu[ray]'). The outputs are the same.")


def _address_option():
    return typer.Option(None, "--address", help="With --executor ray: the cluster to join (auto, HOST:PORT, "
                        "ray://HOST:10001); default: a Ray instance on this machine for this command.")


def _workers_option(help: str = WORKERS_HELP):
    return typer.Option(None, "--workers", help=help)


@app.command("ingest")
def ingest_cmd(
    inputs: List[Path] = typer.Argument(..., help="Files and folders to import (walked recursively)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder: documents.jsonl, rejects.jsonl, report.json."),
    source: Optional[str] = typer.Option(None, "--source", help="Corpus name for every record (default: input folder name)."),
    text_field: Optional[str] = typer.Option(None, "--text-field", help="Field/column holding the text in jsonl/json/csv."),
    ocr: Optional[str] = typer.Option(None, "--ocr", help="OCR for PDF pages without a text layer: auto|off|force."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Reader processes (0: one per CPU core)."),
    executor: Optional[str] = _executor_option(),
    address: Optional[str] = _address_option(),
    file_timeout: Optional[float] = typer.Option(None, "--file-timeout", help="Stop a reader stuck this many seconds "
                                                 "on one file; it fails, the run goes on (with 2+ workers; 0: no limit)."),
    set_: List[str] = sets_option(),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    force: bool = force_option(),
) -> None:
    """Import documents (txt, md, html, pdf, docx, epub, man pages, jsonl/json/csv) as JSONL document records."""
    from danlu.data.ingest import ingest

    report = ingest(inputs, out, source=source, text_field=text_field, ocr=ocr, workers=workers,
                    executor=executor, address=address, file_timeout=file_timeout, sets=set_, progress=progress,
                    force=force)
    echo_report(report)
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
    workers: Optional[int] = typer.Option(None, "--workers", help="Encoding processes (0: one per CPU core)."),
    executor: Optional[str] = _executor_option(),
    address: Optional[str] = _address_option(),
    shard_mb: Optional[float] = typer.Option(None, "--shard-mb", help="MB of text per shard (unit of resume and parallelism)."),
    set_: List[str] = sets_option(),
    force: bool = typer.Option(False, "--force", help="Redo a finished store (and take over a folder another "
                               "stage wrote)."),
) -> None:
    """Tokenize documents once into a memory-mapped token store that pretraining runs stream from."""
    from danlu.data.tokenize import tokenize

    report = tokenize(inputs, out, tokenizer, source=source, workers=workers, executor=executor, address=address,
                      shard_mb=shard_mb, sets=set_, force=force)
    if report.get("reused"):
        typer.echo(f"{out}: already tokenized (report.json complete); use --force to redo")
    echo_report(report)


@app.command("clean")
def clean_cmd(
    inputs: List[Path] = typer.Argument(..., help="Document or SFT JSONL files, or folders of them."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (clean.jsonl, rejects.jsonl, report.json)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Clean pipeline YAML (or a clean run's config.yaml)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="pretrain or sft (default: from the first record)."),
    set_: List[str] = sets_option("Override an operator's parameter, e.g. --set "
                                   "near_dedup.threshold=0.9 or --set steps.3.min_chars=20 (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Judge everything, write rejects.jsonl, review.html and "
                                 "report.json, but no clean.jsonl: look at what each operator would remove."),
    keep_rejected_text: Optional[bool] = typer.Option(None, "--keep-rejected-text/--no-keep-rejected-text",
                                                      help="Keep removed records and sections in full in "
                                                      "rejects.jsonl (default), or only an excerpt."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Also account in tokens (HF tokenizer "
                                            "folder, .tiktoken file or tiktoken:NAME)."),
    workers: Optional[int] = _workers_option(),
    executor: Optional[str] = _executor_option(),
    address: Optional[str] = _address_option(),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    force: bool = force_option(),
) -> None:
    """Normalise, mask PII, filter and deduplicate records; every removal is explained in rejects.jsonl and
    shown by example in review.html. Long documents are judged section by section."""
    from danlu.data.clean import clean

    run_stage(force, clean, inputs, out, config=config, preset=preset, sets=set_, dry_run=dry_run,
              keep_rejected_text=keep_rejected_text, tokenizer=tokenizer, progress=progress,
              workers=workers, executor=executor, address=address)


@app.command("dedup")
def dedup_cmd(
    inputs: List[Path] = typer.Argument(..., help="Document or SFT JSONL files, or folders of them."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (clean.jsonl, rejects.jsonl, report.json)."),
    exact: Optional[bool] = typer.Option(None, "--exact/--no-exact", help="Drop exact duplicates (NFKC, case, whitespace)."),
    near: Optional[bool] = typer.Option(None, "--near/--no-near", help="Drop MinHash-LSH near-duplicates."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Near-duplicate Jaccard threshold."),
    ngram: Optional[int] = typer.Option(None, "--ngram", help="Character shingle size for near-duplicates."),
    set_: List[str] = sets_option("Override a field, e.g. --set near_dedup.num_perm=256."),
    workers: Optional[int] = _workers_option(),
    executor: Optional[str] = _executor_option(),
    address: Optional[str] = _address_option(),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    force: bool = force_option(),
) -> None:
    """Only deduplicate (no normalising or filtering): `data clean` with just its dedup steps. Each removed
    record is in rejects.jsonl with the id of the record it duplicates."""
    from danlu.config import build_config
    from danlu.data.clean import clean
    from danlu.data.clean.config import DedupConfig

    near_dedup = {k: v for k, v in (("threshold", threshold), ("ngram", ngram)) if v is not None} or None
    cfg = build_config(DedupConfig, fields=dict(exact=exact, near=near, near_dedup=near_dedup), sets=set_,
                       source="data dedup")
    run_stage(force, clean, inputs, out, config=cfg.clean_config(), progress=progress, workers=workers,
              executor=executor, address=address)


@app.command("chunk")
def chunk_cmd(
    inputs: List[Path] = typer.Argument(..., help="Document JSONL files or folders of them."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (chunks.jsonl, report.json)."),
    tokenizer: str = typer.Option(..., "--tokenizer", help="HF tokenizer folder, a .tiktoken file or tiktoken:NAME."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Token budget per chunk (default 4096)."),
    heading_prefix: Optional[bool] = typer.Option(None, "--heading-prefix/--no-heading-prefix",
                                                  help="Start each chunk with its heading path."),
    set_: List[str] = sets_option(),
    workers: Optional[int] = _workers_option(),
    executor: Optional[str] = _executor_option(),
    address: Optional[str] = _address_option(),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    force: bool = force_option(),
) -> None:
    """Split long Markdown documents at section boundaries and pack sections up to the token budget."""
    from danlu.data.chunk import chunk

    run_stage(force, chunk, inputs, out, tokenizer=tokenizer, max_tokens=max_tokens, heading_prefix=heading_prefix,
              sets=set_, progress=progress, workers=workers, executor=executor, address=address)


@app.command("stats")
def stats_cmd(
    inputs: List[Path] = typer.Argument(..., help="Document or SFT JSONL files, or folders of them."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (report.json, report.html)."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Count real tokens (else estimated)."),
    near_dup: Optional[bool] = typer.Option(None, "--near-dup/--no-near-dup", help="Also measure near-duplicates."),
    short_answer: Optional[int] = typer.Option(None, "--short-answer", help="Flag SFT answers of at most this many chars."),
    set_: List[str] = sets_option(),
    workers: Optional[int] = _workers_option(),
    executor: Optional[str] = _executor_option(),
    address: Optional[str] = _address_option(),
    force: bool = force_option(),
) -> None:
    """Documents, characters and tokens per source, lengths, duplicates, SFT mix, and corpus-size advice."""
    from danlu.data.stats import stats

    run_stage(force, stats, inputs, out, tokenizer=tokenizer, near_dup=near_dup, short_answer_chars=short_answer,
              sets=set_, workers=workers, executor=executor, address=address)


@app.command("verify")
def verify_cmd(
    stores: List[Path] = typer.Argument(..., help="Token store folders (`danlu data tokenize` outputs)."),
) -> None:
    """Check token stores completely: every shard's hash, index and token ids; exit 1 if one is damaged."""
    from danlu.data.verify import summary_lines, verify_store

    damaged = 0
    for store in stores:
        result = verify_store(store)
        damaged += not result["ok"]
        for line in summary_lines(result):
            typer.echo(line, err=not result["ok"])
    if damaged:
        raise typer.Exit(1)


from danlu.data.sft.cli import pref_cmd, sft_cmd  # noqa: E402  (SFT / preference data import)
app.command("sft")(sft_cmd)
app.command("pref")(pref_cmd)
