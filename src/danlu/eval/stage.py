"""`danlu eval CONFIG.yaml`: the configured suites on one model, each into its own run folder OUT/<suite>/,
the model loaded once and shared; with `baseline`, a compare against that earlier eval into OUT/compare/."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from danlu.eval.config import SUITES, CompareConfig, EvalConfig


def suite_dir(out: str | Path, suite: str) -> Path:
    return Path(out) / suite


def evaluate(cfg: EvalConfig, progress: bool = True, echo: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Run every suite `cfg` configures; returns {suite: report} (and "compare" with a baseline)."""
    from danlu.eval.compare import compare_runs
    from danlu.eval.diagnostics import run_diagnostics
    from danlu.eval.gen import run_gen
    from danlu.eval.judge import run_judge
    from danlu.eval.mcq import run_mcq
    from danlu.eval.model import load_model
    from danlu.eval.ppl import run_ppl

    runners = {"ppl": run_ppl, "mcq": run_mcq, "gen": run_gen, "diagnostics": run_diagnostics}
    reports: dict[str, dict] = {}
    lm = None
    for suite in SUITES:
        section = getattr(cfg, suite)
        if section is None:
            continue
        out = suite_dir(cfg.out, suite)
        if suite == "judge":
            reports[suite] = run_judge(out, section, progress=progress)
        else:
            lm = lm or load_model(cfg.model, cfg.runtime)
            reports[suite] = runners[suite](cfg.model, out, section, cfg.runtime, progress=progress, loaded=lm)
        if echo:
            from danlu.runs import summary_lines

            for line in summary_lines(reports[suite]):
                echo(line)
    if cfg.baseline:
        names = [Path(cfg.baseline).name, cfg.name or Path(cfg.model or cfg.out).name]
        reports["compare"] = compare_runs([cfg.baseline, cfg.out], suite_dir(cfg.out, "compare"), CompareConfig(),
                                          names=names if names[0] != names[1] else None)
        if echo:
            from danlu.runs import summary_lines

            for line in summary_lines(reports["compare"]):
                echo(line)
    return reports
