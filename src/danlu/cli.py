"""The `danlu` command: one sub-app per pipeline stage. Thin: parse arguments, call a library function.

Heavy libraries (torch, transformers) are imported inside the commands that need them, so `danlu --help`
stays instant.
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path
from typing import List, Optional

import typer

from danlu import __version__
from danlu.cliutil import force_option, run_stage, sets_option
from danlu.config import ConfigError
from danlu.names import display
from danlu.data.cli import app as data_app
from danlu.eval.cli import app as eval_app
from danlu.serve.cli import chat_cmd, serve_cmd
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
app.add_typer(eval_app, name="eval", help="Evaluate models (ppl, mcq, gen, judge, diagnostics) and compare runs.")
app.command("serve")(serve_cmd)
app.command("chat")(chat_cmd)


@app.command("run")
def run_cmd(
    pipeline: str = typer.Argument(..., help="Pipeline YAML (see examples/quickstart.yaml)."),
    force: bool = typer.Option(False, "--force", help="Rerun every step, even those whose inputs are unchanged."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    set_: List[str] = sets_option("Override a pipeline key, e.g. --set sft.0.optim.lr=1e-3 (repeatable)."),
) -> None:
    """Run the whole build: ingest -> clean -> tokenizer -> chunk -> tokenize -> stats -> pretrain -> SFT -> eval
    -> compare -> report (OUT/report.html); each step skipped when its inputs are unchanged."""
    from danlu.pipeline import run_pipeline

    summary = run_pipeline(pipeline, force=force, progress=progress, echo=typer.echo, sets=set_)
    for s in summary:
        typer.echo(f"  {s['step']:<28} {s['status']:<8} {s.get('elapsed_s', ''):>8}  {s['out']}")
    trained = [s["out"] for s in summary if s["step"].startswith(("pretrain", "sft ", "dpo "))]
    report = [s["out"] for s in summary if s["step"] == "report"]
    if report:
        typer.echo(f"review the build: {Path(report[0]).parent / 'report.html'}")
    if trained:
        typer.echo(f"talk to the model: danlu chat {trained[-1]}    serve it: danlu serve {trained[-1]}")


@app.command("export")
def export_cmd(
    model: str = typer.Argument(..., help="A model folder, a LoRA adapter folder, or a training run (its model/)."),
    out: str = typer.Option(..., "-o", "--out", help="Output folder: a plain Hugging Face model."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    tolerance: Optional[float] = typer.Option(None, "--tolerance", help="Max logit difference allowed "
                                              "(default: 1e-4 of the largest logit in float32, 3e-2 in 16-bit)."),
) -> None:
    """Merge a LoRA adapter into its base and write a plain HF folder (tokenizer, chat template, lineage);
    fails, writing nothing, if the exported model's logits differ from the trained model's."""
    from danlu.model.export import export

    r = export(model, out, dtype=dtype, tolerance=tolerance)
    typer.echo(f"export: {model} -> {out} ({r['dtype']}; merged adapter: {r['merged_adapter']}); parity on "
               f"{r['probe_sequences']} probe sequences: max logit difference {r['max_abs_logit_diff']:.3g} "
               f"<= {r['tolerance']:.3g}")


@app.command("score")
def score_cmd(
    model: str = typer.Argument(..., help="A reward model folder (or a `danlu train rm` run: its model/)."),
    data: Optional[List[str]] = typer.Argument(None, help="JSONL files or folders: SFT records, `eval gen` answers, "
                                               "preference pairs or KTO records (or give them as 'data' in --config)."),
    out: str = typer.Option(..., "-o", "--out", help="Output folder: scores.jsonl, report.json."),
    config: Optional[str] = typer.Option(None, "--config", help="A YAML with the score settings (see ScoreConfig)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Answers per forward."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    set_: List[str] = sets_option("Override a setting, e.g. --set seq_len=8192 (repeatable)."),
    force: bool = force_option(),
) -> None:
    """Score answers with a reward model and report how the scores go with answer length (reward hacking
    toward long answers, measured)."""
    from danlu.config import build_config, load_yaml
    from danlu.train.config import ScoreConfig
    from danlu.train.score import score

    cfg = build_config(ScoreConfig, load_yaml(config, "score") if config else None,
                       fields={"data": list(data) if data else None, "batch_size": batch_size}, sets=set_,
                       source=config or "<score>")
    
    run_stage(force, score, model, out, cfg, progress=progress)


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
    """Entry point. A user error (bad config, missing input) prints one clear message and exits 2; a file system
    error (an output folder that is a file or cannot be written, a full disk) prints one line naming the path and
    what to do, and exits 1. Whatever ends the command is also recorded in the run.log of the run it interrupted
    (with the traceback there), so a run folder never hides why it is unfinished."""
    from danlu.names import ESCAPE
    from danlu.runs import record_fatal

    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 prints escaped, never crashes
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors=ESCAPE)
    try:
        app()
    except (ConfigError, FileNotFoundError, NotADirectoryError, ValueError) as e:
        _fail(record_fatal, e, display(str(e)), 2)
    except OSError as e:
        _fail(record_fatal, e, os_error_message(e), 1)
    except KeyboardInterrupt as e:
        _fail(record_fatal, e, "interrupted", 130)
    except SystemExit as e:
        if e.code not in (0, None):  # e.g. Ctrl-C, which click turns into "Aborted!" and exit 1
            record_fatal(f"the command ended with exit code {e.code}")
        raise
    except BaseException as e:
        record_fatal(f"{type(e).__name__}: {e}", e)  # a bug: the traceback follows on the terminal too
        raise


def _fail(record_fatal, exc: BaseException, message: str, code: int) -> None:
    folders = record_fatal(message, exc)
    where = f" (recorded in {display(folders[-1] / 'run.log')})" if folders and code == 1 else ""
    typer.secho(f"error: {message}{where}", err=True, fg="red")
    sys.exit(code)


_OS_ADVICE = {
    errno.ENOSPC: "the disk is full: free space there or choose another output folder (-o); finished files and "
                  "checkpoints are kept",
    errno.EDQUOT: "the disk quota is exhausted: free space or choose another output folder (-o)",
    errno.EFBIG: "the file size limit was reached (ulimit -f, or the file system's limit)",
    errno.EROFS: "the file system is read-only: choose another output folder (-o)",
    errno.EACCES: "check the folder's permissions (ls -ld) or choose another output folder (-o)",
    errno.EPERM: "check the folder's permissions (ls -ld) or choose another output folder (-o)",
    errno.EEXIST: "a file stands where a folder is needed: remove it or choose another output folder (-o)",
    errno.ENOTDIR: "a file stands where a folder is needed: remove it or choose another output folder (-o)",
    errno.EISDIR: "a folder stands where a file is needed",
}


def os_error_message(e: OSError) -> str:
    """One line: the path, what went wrong, what to do."""
    from danlu.runs import RunFolderError, open_runs

    where = e.filename or (str(open_runs()[-1].dir) if open_runs() else None)
    if isinstance(e, RunFolderError) and e.errno is None:
        return display(str(e))  # its own message already names the path and the way out
    what = e.strerror or str(e)
    advice = _OS_ADVICE.get(e.errno)
    return (f"{display(where)}: " if where else "") + what + (f"; {advice}" if advice else "")


if __name__ == "__main__":
    main()
