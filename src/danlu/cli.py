"""The `danlu` command: one sub-app per pipeline stage. Thin: parse arguments, call a library function.

Heavy libraries (torch, transformers) are imported inside the commands that need them, so `danlu --help`
stays instant.
"""

from __future__ import annotations

import sys

import typer

from danlu import __version__
from danlu.config import ConfigError
from danlu.data.cli import app as data_app
from danlu.tokenizer.cli import app as tokenizer_app
from danlu.train.cli import app as train_app

app = typer.Typer(
    name="danlu",
    help="danlu (丹炉): raw domain documents -> clean data -> tokenizer -> trained, evaluated, served LLM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data", help="Import, clean, dedup, chunk, analyse and tokenize corpora.")
app.add_typer(tokenizer_app, name="tokenizer", help="Train, expand and compare tokenizers.")
app.add_typer(train_app, name="train", help="Pretraining (and later SFT/DPO) on tokenized data.")


@app.command("run")
def run_cmd(
    pipeline: str = typer.Argument(..., help="Pipeline YAML (see examples/quickstart.yaml)."),
    force: bool = typer.Option(False, "--force", help="Rerun every step, even those whose inputs are unchanged."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Run the whole pipeline: ingest -> clean -> tokenizer -> chunk -> tokenize -> stats -> pretrain."""
    from danlu.pipeline import run_pipeline

    for s in run_pipeline(pipeline, force=force, progress=progress, echo=typer.echo):
        typer.echo(f"  {s['step']:<20} {s['status']:<8} {s.get('elapsed_s', ''):>8}  {s['out']}")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"danlu {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    pass


def main() -> None:
    """Entry point: user errors (bad config, missing file) print one clear message and exit 2, no traceback."""
    try:
        app()
    except (ConfigError, FileNotFoundError, NotADirectoryError, ValueError) as e:
        typer.secho(f"error: {e}", err=True, fg="red")
        sys.exit(2)


if __name__ == "__main__":
    main()
