"""`danlu train ...` commands. Each parses its flags and calls the stage's library function; all of them run
alone or under torchrun, resume with --resume and take --set overrides."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import List, Optional

import typer

from danlu.cliutil import echo_report, force_option, sets_option

app = typer.Typer(no_args_is_help=True)

Out = typer.Option(None, "-o", "--out", help="Output folder (overrides 'out' in the config).")
Resume = typer.Option(False, "--resume", help="Continue from the newest checkpoint in the output folder.")


def _train(stage: str, config: Path, out: Optional[Path], resume: bool, sets: list[str], force: bool) -> None:
    """Load the stage's config (a YAML file or a run's config.yaml, then --set), train, print the report."""
    from danlu.config import load_config
    from danlu.runs import taking_over
    from danlu.train import config as configs
    from danlu.train.distributed import shutdown

    model_name, module, fn = STAGES[stage]
    cfg = load_config(config, getattr(configs, model_name), {"out": str(out) if out else None}, sets=sets,
                      stage=f"train-{stage}")
    try:
        with taking_over(force):
            report = getattr(importlib.import_module(module), fn)(cfg, resume=resume)
    finally:
        shutdown()
    if report.get("status") == "complete":
        echo_report(report)


# stage -> (config model, module, function)
STAGES = {"pt": ("PretrainConfig", "danlu.train.pretrain", "pretrain"), "sft": ("SFTConfig", "danlu.train.sft", "sft"),
          "dpo": ("DPOConfig", "danlu.train.dpo", "dpo"), "rm": ("RMConfig", "danlu.train.rm", "rm")}


@app.command("pt")
def pt_cmd(
    config: Path = typer.Argument(..., help="Pretraining config YAML (see examples/pretrain-tiny.yaml), or a run's "
                                  "config.yaml."),
    out: Optional[Path] = Out, resume: bool = Resume,
    set_: List[str] = sets_option("Override a config key, e.g. --set optim.lr=1e-3 (repeatable)."),
    force: bool = force_option(),
) -> None:
    """Pretrain or continue pretraining a causal LM on token stores. Runs alone or under torchrun (DDP/FSDP)."""
    _train("pt", config, out, resume, set_, force)


@app.command("sft")
def sft_cmd(
    config: Path = typer.Argument(..., help="SFT config YAML (see examples/sft-*.yaml), or a run's config.yaml."),
    out: Optional[Path] = Out, resume: bool = Resume,
    set_: List[str] = sets_option("Override a config key, e.g. --set model.method=lora (repeatable)."),
    force: bool = force_option(),
) -> None:
    """Supervised fine-tuning (full, LoRA or freezing) of a local model on SFT records. Alone or under torchrun."""
    _train("sft", config, out, resume, set_, force)


@app.command("dpo")
def dpo_cmd(
    config: Path = typer.Argument(..., help="Preference-tuning config YAML (see examples/dpo-*.yaml), or a run's "
                                  "config.yaml."),
    out: Optional[Path] = Out, resume: bool = Resume,
    set_: List[str] = sets_option("Override a config key, e.g. --set dpo.loss=simpo (repeatable)."),
    force: bool = force_option(),
) -> None:
    """Preference tuning (DPO, IPO, hinge, SimPO, ORPO; KTO on unpaired data) on `danlu data pref` output.
    Alone or under torchrun."""
    _train("dpo", config, out, resume, set_, force)


@app.command("rm")
def rm_cmd(
    config: Path = typer.Argument(..., help="Reward-model config YAML (see examples/rm-lora.yaml), or a run's "
                                  "config.yaml."),
    out: Optional[Path] = Out, resume: bool = Resume,
    set_: List[str] = sets_option("Override a config key, e.g. --set model.method=lora (repeatable)."),
    force: bool = force_option(),
) -> None:
    """Train a Bradley-Terry reward model (a score head on a causal LM; full, LoRA or freezing) on preference
    pairs. Alone or under torchrun."""
    _train("rm", config, out, resume, set_, force)
