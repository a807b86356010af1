"""`danlu tokenizer ...` commands. Each parses its flags and calls the stage's library function."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from danlu.cliutil import force_option, run_stage, sets_option

app = typer.Typer(no_args_is_help=True)


@app.command("train")
def train_cmd(
    corpus: List[Path] = typer.Argument(..., help="Document JSONL files/folders (field 'text') and plain .txt files."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (a Hugging Face tokenizer folder)."),
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size", help="Total vocabulary size, special tokens "
                                             "included (default 32768)."),
    type: Optional[str] = typer.Option(None, "--type", help="bpe (byte-level BPE, danlu's trainer) or unigram (HF trainer)."),
    character_coverage: Optional[float] = typer.Option(
        None, "--character-coverage", help="bpe: share of non-ASCII text whose characters become tokens first."
    ),
    set_: List[str] = sets_option(),
    force: bool = force_option(),
) -> None:
    """Train a byte-level tokenizer on a corpus and save it as a Hugging Face tokenizer folder."""
    from danlu.tokenizer.train import train_tokenizer

    run_stage(force, train_tokenizer, corpus, out, vocab_size=vocab_size, type=type,
              character_coverage=character_coverage, sets=set_)


@app.command("expand")
def expand_cmd(
    base: Path = typer.Argument(..., help="Base tokenizer folder: byte-level BPE, or SentencePiece BPE (Llama 2 style)."),
    domain: Path = typer.Argument(..., help="Domain tokenizer folder whose new tokens to add."),
    out: Path = typer.Option(..., "-o", "--out", help="Output tokenizer folder."),
    max_new: Optional[int] = typer.Option(None, "--max-new", help="Add at most this many tokens (domain order)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Local HF model to resize for the new tokenizer."),
    model_out: Optional[Path] = typer.Option(None, "--model-out", help="Where the resized model goes."),
    set_: List[str] = sets_option(),
    force: bool = force_option(),
) -> None:
    """Add a domain tokenizer's new tokens to a base tokenizer (existing ids keep their meaning)."""
    from danlu.tokenizer.expand import expand_tokenizer

    report = run_stage(force, expand_tokenizer, base, domain, out, max_new=max_new, model=model, model_out=model_out,
                       sets=set_)
    if "model" in report:
        m = report["model"]
        typer.echo(f"  model embeddings {m['rows_before']} -> {m['rows_after']} rows -> {m['dir']}")


@app.command("compare")
def compare_cmd(
    tokenizers: List[Path] = typer.Argument(..., help="Tokenizer folders to compare (the first is the reference)."),
    corpus: List[Path] = typer.Option(..., "--corpus", help="Document JSONL / .txt files or folders."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the full result as JSON here."),
    examples: int = typer.Option(5, "--examples", help="Lines that split most differently, per pair."),
) -> None:
    """Chars per token and tokens per 1,000 CJK characters per source, vocabulary overlap, differing splits."""
    from danlu.runs import atomic_write_json
    from danlu.tokenizer.compare import compare_tokenizers, print_comparison

    result = compare_tokenizers(tokenizers, corpus, examples=examples)
    print_comparison(result)
    if json_out:
        atomic_write_json(json_out, result)
        typer.echo(f"JSON: {json_out}")
