"""`danlu data sft` and `danlu data pref` (registered in danlu/data/cli.py). Flags default to None: the stage's
config model (stage.ChatDataOptions) holds every default; `--config` reads a YAML of its fields, `--set` overrides
any of them."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from danlu.cliutil import force_option, run_stage, sets_option

INPUTS_HELP = ("Data files (json, jsonl, csv, parquet), folders of them, or a LLaMA-Factory data/ folder (or its "
               "dataset_info.json) with --dataset.")


def _options(config: Optional[Path], stage: str, datasets, task_type, task_type_field, task_type_map, fmt, source,
             tags, tags_field, replace, tokenizer, chat_template, short_answer) -> dict:
    """The flags as the stage's option fields (None = not given), on top of --config's YAML."""
    from danlu.config import ConfigError, load_yaml

    default, per = None, {}
    for item in task_type or []:
        name, sep, value = item.rpartition("=")
        if sep:
            per[name] = value
        elif default is not None:
            raise ConfigError(f"--task-type {item!r}: a second default (the first was {default!r}); name the dataset "
                              "as --task-type NAME=TYPE")
        else:
            default = value
    pairs = {}
    for item in replace or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--replace {item!r}: expected NAME=VALUE, e.g. --replace name=Danlu")
        pairs[key.strip("{} ")] = value
    flags = dict(datasets=[d for item in datasets or [] for d in item.split(",") if d] or None, task_type=default,
                 task_types=per or None, task_type_field=task_type_field, task_type_map=task_type_map, format=fmt,
                 source=source, tags=tags or None, tags_field=tags_field, replace=pairs or None,
                 tokenizer=tokenizer, chat_template=chat_template, short_answer=short_answer)
    data = load_yaml(config, stage) if config else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{config}: expected a mapping of the stage's options")
    data = {k: v for k, v in data.items() if k not in ("inputs", "out")}  # a run's config.yaml: the command line's win
    return {**data, **{k: v for k, v in flags.items() if v is not None}}


def _command(stage_fn, stage: str):
    def command(
        inputs: List[Path] = typer.Argument(..., help=INPUTS_HELP),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder."),
        config: Optional[Path] = typer.Option(None, "--config",
                                              help="YAML of the stage's options (or a run's config.yaml)."),
        dataset: Optional[List[str]] = typer.Option(None, "--dataset",
                                                    help="dataset_info.json names (repeat or comma-separate)."),
        task_type: Optional[List[str]] = typer.Option(
            None, "--task-type", help="TYPE for every record, or DATASET=TYPE for one dataset or file (repeatable), "
            "e.g. qa or reasoning/math."),
        task_type_field: Optional[str] = typer.Option(None, "--task-type-field",
                                                      help="Row field holding the task_type."),
        task_type_map: Optional[str] = typer.Option(None, "--task-type-map",
                                                    help="YAML/JSON mapping the field's values to task types."),
        fmt: Optional[str] = typer.Option(None, "--format",
                                          help="auto|alpaca|sharegpt|openai (files without a registry)."),
        source: Optional[str] = typer.Option(None, "--source",
                                             help="Source name of every record (default: dataset or file name)."),
        tag: Optional[List[str]] = typer.Option(None, "--tag", help="Tag every record (repeatable), e.g. robustness."),
        tags_field: Optional[str] = typer.Option(None, "--tags-field", help="Row field holding tags."),
        replace: Optional[List[str]] = typer.Option(None, "--replace",
                                                    help="Replace a {{NAME}} placeholder: NAME=VALUE (repeatable)."),
        tokenizer: Optional[str] = typer.Option(None, "--tokenizer",
                                                help="Count tokens with this tokenizer folder and its chat template."),
        chat_template: Optional[str] = typer.Option(None, "--chat-template",
                                                    help="A .jinja template overriding the tokenizer's."),
        short_answer: Optional[int] = typer.Option(
            None, "--short-answer", help="Answers of at most this many tokens (characters) count as short."),
        set_: List[str] = sets_option(),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
        force: bool = force_option(),
    ) -> None:
        
        options = _options(config, stage, dataset, task_type, task_type_field, task_type_map, fmt, source, tag,
                           tags_field, replace, tokenizer, chat_template, short_answer)
        run_stage(force, stage_fn, inputs, out, sets=set_, progress=progress, **options)

    return command


def _sft(*args, **kwargs):
    from danlu.data.sft import sft_data

    return sft_data(*args, **kwargs)


def _pref(*args, **kwargs):
    from danlu.data.sft import preference_data

    return preference_data(*args, **kwargs)


sft_cmd = _command(_sft, "sft-data")
sft_cmd.__doc__ = """Import SFT data (alpaca, sharegpt, OpenAI messages; or a LLaMA-Factory dataset_info.json) as danlu
SFT records, validated row by row, with the task_type mix in report.json."""
pref_cmd = _command(_pref, "pref-data")
pref_cmd.__doc__ = """Import preference data (ranking pairs, KTO's unpaired good/bad answers; or a LLaMA-Factory
dataset_info.json with ranking: true) as danlu preference and KTO records, validated row by row."""
