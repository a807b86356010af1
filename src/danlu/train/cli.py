"""`danlu train ...` commands. Each parses its flags and calls the stage's library function."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(no_args_is_help=True)


def parse_sets(items: list[str]) -> dict:
    """["optim.lr=1e-3", "train.max_steps=10"] -> nested dict; values are parsed as YAML (numbers, bools, lists)."""
    import yaml

    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--set {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for k, v in over.items():
        merged[k] = merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


@app.command("pt")
def pt_cmd(
    config: Path = typer.Argument(..., help="Pretraining config YAML (see examples/pretrain-tiny.yaml)."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Output folder (overrides 'out' in the config)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in the output folder."),
    set_: List[str] = typer.Option([], "--set", help="Override a config key, e.g. --set optim.lr=1e-3 (repeatable)."),
) -> None:
    """Pretrain or continue pretraining a causal LM on token stores. Runs alone or under torchrun (DDP/FSDP)."""
    from danlu.config import load_yaml, validate
    from danlu.train.config import PretrainConfig
    from danlu.train.distributed import shutdown
    from danlu.train.pretrain import pretrain

    data = load_yaml(config) or {}
    if set_:
        if not isinstance(data, dict):
            raise typer.BadParameter(f"{config}: expected a mapping of keys at the top level")
        data = merge(data, parse_sets(set_))
    cfg = validate(data, PretrainConfig, str(config))
    try:
        pretrain(cfg, out, resume=resume)
    finally:
        shutdown()
