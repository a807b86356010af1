"""What every `danlu` sub-command shares: the `--set` and `--force` options and the one way a report is printed."""

from __future__ import annotations

import typer

from danlu.runs import summary_lines, taking_over

SET_HELP = "Override a config field, e.g. --set workers=2 (repeatable; see the stage's config for the fields)."
FORCE_HELP = "Write into an output folder another stage's run wrote (its report, rejects and config are replaced)."


def sets_option(help: str = SET_HELP):
    return typer.Option([], "--set", help=help)


def force_option(help: str = FORCE_HELP):
    """`--force`: the command may take over a folder another stage wrote (danlu.runs.taking_over)."""
    return typer.Option(False, "--force", help=help)


def echo_report(report: dict) -> None:
    """Print any stage's report (danlu.runs.summary_lines); warnings go to stderr."""
    for line in summary_lines(report):
        typer.echo(line, err=line.startswith("warning:"))


def run_stage(force: bool, stage_fn, *args, **kwargs) -> dict:
    """`stage_fn(*args, **kwargs)`, taking over another stage's run folder when `force` (--force), then its report
    printed (echo_report); returns the report."""
    with taking_over(force):
        report = stage_fn(*args, **kwargs)
    echo_report(report)
    return report
