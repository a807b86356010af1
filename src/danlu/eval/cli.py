"""`danlu eval ...` commands: parse flags, build the suite's config (build_config), call its function, print the
report's summary. `danlu eval CONFIG.yaml` runs every suite the file configures (the `run` command)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperGroup

from danlu.cliutil import force_option, run_stage, sets_option
from danlu.runs import taking_over


class _DefaultRun(TyperGroup):
    """`danlu eval CONFIG.yaml ...` means `danlu eval run CONFIG.yaml ...`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(no_args_is_help=True, cls=_DefaultRun,
                  help="Evaluate a model: ppl, mcq, gen, judge, diagnostics; compare runs. "
                       "`danlu eval CONFIG.yaml` runs the suites a config file lists.")

SET_HELP = "Override a config key, e.g. --set k_shot=0 (repeatable)."
Device = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N")
Dtype = typer.Option(None, "--dtype", help="auto | float32 | bfloat16 | float16")
Progress = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")
RunFolder = typer.Option(..., "-o", "--out", help="Run folder to write.")


def _runtime(device: Optional[str], dtype: Optional[str]):
    from danlu.config import build_config
    from danlu.eval.config import Runtime

    return build_config(Runtime, None, source="flags", fields={"device": device, "dtype": dtype})


@app.command("run")
def run_cmd(
    config: Path = typer.Argument(..., help="Eval config YAML (see examples/eval-*.yaml)."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Output folder (overrides 'out')."),
    model: Optional[str] = typer.Option(None, "--model", help="HF model folder (overrides 'model')."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="An earlier eval folder to compare with."),
    set_: List[str] = sets_option("Override a config key, e.g. --set mcq.k_shot=0 (repeatable)."),
    force: bool = force_option(),
    progress: bool = Progress,
) -> None:
    """Run the suites a config lists, each into OUT/<suite>/ (report.json, results, index.html)."""
    from danlu.config import build_config, load_yaml
    from danlu.eval.config import EvalConfig
    from danlu.eval.stage import evaluate

    cfg = build_config(EvalConfig, load_yaml(config, stage="eval"), sets=set_, source=str(config),
                       fields={"out": str(out) if out else None, "model": model, "baseline": baseline})
    with taking_over(force):
        evaluate(cfg, progress=progress, echo=typer.echo)


@app.command("ppl")
def ppl_cmd(
    model: str = typer.Argument(..., help="HF model folder."),
    data: List[str] = typer.Option(..., "--data", help="Held-out Document JSONL file or folder (repeatable)."),
    out: Path = RunFolder,
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Tokens per window."),
    stride: Optional[int] = typer.Option(None, "--stride", help="New tokens per window after the first."),
    device: Optional[str] = Device,
    dtype: Optional[str] = Dtype,
    set_: List[str] = sets_option(SET_HELP),
    force: bool = force_option(),
    progress: bool = Progress,
) -> None:
    """Loss, perplexity, bits per byte and per character per source on held-out documents."""
    from danlu.config import build_config
    from danlu.eval.config import PplConfig
    from danlu.eval.ppl import run_ppl

    cfg = build_config(PplConfig, None, sets=set_, source="flags",
                       fields={"data": data, "max_length": max_length, "stride": stride})
    run_stage(force, run_ppl, model, out, cfg, _runtime(device, dtype), progress=progress)


@app.command("mcq")
def mcq_cmd(
    model: str = typer.Argument(..., help="HF model folder."),
    data: List[str] = typer.Option(..., "--data", help="Benchmark root (dev/ val/ test/) or CSV (repeatable)."),
    out: Path = RunFolder,
    k_shot: Optional[int] = typer.Option(None, "--k-shot", help="Dev examples in each prompt."),
    fmt: Optional[str] = typer.Option(None, "--format", help="auto | ceval | cmmlu | mmlu"),
    split: Optional[str] = typer.Option(None, "--split", help="Split scored (default: val, CMMLU test)."),
    delimiter: Optional[str] = typer.Option(None, "--delimiter", help="Between '答案：' and the letter "
                                            "(default: the format's own: none for C-Eval/CMMLU, ' ' for MMLU)."),
    chat: Optional[bool] = typer.Option(None, "--chat/--no-chat", help="Through the model's chat template."),
    device: Optional[str] = Device,
    dtype: Optional[str] = Dtype,
    set_: List[str] = sets_option(SET_HELP),
    force: bool = force_option(),
    progress: bool = Progress,
) -> None:
    """C-Eval / CMMLU / MMLU multiple choice: letter-probability and continuation scores, per subject/category."""
    from danlu.config import build_config
    from danlu.eval.config import McqConfig
    from danlu.eval.mcq import run_mcq

    cfg = build_config(McqConfig, None, sets=set_, source="flags", fields={
        "data": data, "k_shot": k_shot, "format": fmt, "split": split, "delimiter": delimiter, "chat": chat})
    run_stage(force, run_mcq, model, out, cfg, _runtime(device, dtype), progress=progress)


@app.command("gen")
def gen_cmd(
    model: str = typer.Argument(..., help="HF model folder."),
    data: List[str] = typer.Option(..., "--data", help="SFT JSONL test set, file or folder (repeatable)."),
    out: Path = RunFolder,
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens"),
    sample: Optional[bool] = typer.Option(None, "--sample/--greedy", help="Sampling (temperature/top_p) or greedy."),
    label_task_type: List[str] = typer.Option([], "--label-task-type", help="A task_type scored by label accuracy."),
    device: Optional[str] = Device,
    dtype: Optional[str] = Dtype,
    set_: List[str] = sets_option(SET_HELP),
    force: bool = force_option(),
    progress: bool = Progress,
) -> None:
    """Answer an SFT test set and score per task_type (BLEU, ROUGE, exact match, label accuracy)."""
    from danlu.config import build_config
    from danlu.eval.config import GenConfig
    from danlu.eval.gen import run_gen

    generation = {k: v for k, v in {"max_new_tokens": max_new_tokens, "do_sample": sample}.items() if v is not None}
    cfg = build_config(GenConfig, None, sets=set_, source="flags", fields={
        "data": data, "generation": generation or None, "label_task_types": label_task_type or None})
    run_stage(force, run_gen, model, out, cfg, _runtime(device, dtype), progress=progress)


@app.command("judge")
def judge_cmd(
    answers: str = typer.Argument(..., help="A gen run folder (answers.jsonl) or an answers JSONL."),
    out: Path = RunFolder,
    against: Optional[str] = typer.Option(None, "--against", help="Pairwise: the other model's answers."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint, e.g. http://host/v1"),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="Model name at the endpoint."),
    language: Optional[str] = typer.Option(None, "--language", help="zh | en (the default prompt)."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Judge each item this many times."),
    set_: List[str] = sets_option(SET_HELP),
    force: bool = force_option(),
    progress: bool = Progress,
) -> None:
    """LLM judge: pointwise against the reference, or pairwise (--against) with positions swapped."""
    from danlu.config import build_config
    from danlu.eval.config import JudgeConfig
    from danlu.eval.judge import run_judge

    cfg = build_config(JudgeConfig, None, sets=set_, source="flags", fields={
        "answers": answers, "against": against, "mode": "pairwise" if against else None, "base_url": base_url,
        "model": judge_model, "language": language, "samples": samples})
    run_stage(force, run_judge, out, cfg, progress=progress)


@app.command("compare")
def compare_cmd(
    runs: List[str] = typer.Argument(..., help="Eval folders (or suite run folders); the first is the baseline."),
    out: Path = typer.Option(..., "-o", "--out", help="Run folder to write (results.json, cases.jsonl, index.html)."),
    set_: List[str] = sets_option("Override a key, e.g. --set top_cases=100 (repeatable)."),
    force: bool = force_option(),
) -> None:
    """Runs side by side per suite, group and metric: deltas, bootstrap intervals / McNemar, moved cases."""
    from danlu.config import build_config
    from danlu.eval.compare import compare_runs
    from danlu.eval.config import CompareConfig

    run_stage(force, compare_runs, runs, out, build_config(CompareConfig, None, sets=set_, source="flags"))
