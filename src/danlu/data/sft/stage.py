"""`danlu data sft` and `danlu data pref`: read SFT / preference data as users have it (alpaca, sharegpt, OpenAI
messages, TRL rows; JSON arrays, JSON Lines, CSV, Parquet; or a LLaMA-Factory dataset_info.json), convert it to
danlu's records (records.py), validate them strictly, and report the task_type mix.

    OUT/sft.jsonl       SFT records                         (data sft)
    OUT/pref.jsonl      preference pairs                    (data pref)
    OUT/kto.jsonl       KTO records (unpaired, desirable)   (data pref)
    OUT/rejects.jsonl   every row not kept: dataset, file, index or line, the reason naming the field, the raw row
    OUT/report.json     counts (in = kept + filtered + rejected, by reason), per dataset and per task_type

Placeholders such as LLaMA-Factory's identity.json "{{name}}" are replaced with `replace` ({"name": "Danlu"});
left unreplaced they are kept and reported as a warning.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Literal

from pydantic import Field
from tqdm import tqdm

from danlu.config import ConfigError, StrictModel, build_config
from danlu.data.sft import alpaca, openai, sharegpt
from danlu.data.sft.convert import Example, RowError
from danlu.data.sft.measure import Meter
from danlu.data.sft.registry import DATA_SUFFIXES, RegistryError, dataset_specs, registry_path
from danlu.data.sft.report import PrefStats, SftStats
from danlu.data.sft.rows import read_rows
from danlu.data.sft.spec import DatasetSpec, detect_format
from danlu.data.sft.tasktypes import HOW, TaskTypes
from danlu.jsonl import SIDE_FILES, JsonlWriter
from danlu.records import problem, stable_id
from danlu.runs import counts, reason_key, start_run
from danlu.tokenizer.chat import TemplateError

CONVERTERS = {"alpaca": alpaca.convert, "sharegpt": sharegpt.convert, "openai": openai.convert}
RECORD_FIELDS = ("id", "task_type", "tags", "source")  # a row's own (danlu records have them) win over defaults
PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
RUN_FILES = SIDE_FILES | {"report.json", "metrics.jsonl"}  # a run folder given as input: read its records only


class ChatDataOptions(StrictModel):
    """What `data sft` / `data pref` (and a pipeline's sft_data / pref_data section) set."""

    format: Literal["auto", "alpaca", "sharegpt", "openai"] = "auto"  # of plain files (a registry says its own)
    datasets: list[str] = []  # names in a dataset_info.json input
    task_type: str | None = None  # for every record without one
    task_types: dict[str, str] = {}  # dataset name or file name/stem -> task_type
    task_type_field: str | None = None  # a row field holding the task_type
    task_type_map: str | dict[str, str] | None = None  # YAML/JSON file or mapping: field value -> task_type
    source: str | None = None  # every record's source (default: the dataset name or file stem)
    tags: list[str] = []  # added to every record (e.g. robustness)
    tags_field: str | None = None  # a row field holding tags (a list, or one string)
    replace: dict[str, str] = {}  # "{{name}}" -> value in every message
    tokenizer: str | None = None  # count tokens (rendered with the chat template) instead of characters
    chat_template: str | None = None  # a .jinja file overriding the tokenizer's template
    short_answer: int = Field(3, ge=0)  # answers of at most this many tokens (characters) count as short
    short_answer_warn: float = Field(0.5, gt=0, le=1)  # warn when this share of a task_type's answers is short
    reject_examples: int = Field(3, ge=0)  # examples per reject reason in the report


class ChatDataConfig(ChatDataOptions):
    inputs: list[str]
    out: str


def sft_data(inputs: str | Path | Iterable[str | Path], out: str | Path, *, sets: Iterable[str] = (),
             progress: bool = True, **options) -> dict:
    """Import SFT data into OUT/sft.jsonl; returns the report (also OUT/report.json). `options` are
    ChatDataOptions' fields."""
    return _run("sft", inputs, out, sets, progress, options)


def preference_data(inputs: str | Path | Iterable[str | Path], out: str | Path, *, sets: Iterable[str] = (),
                    progress: bool = True, **options) -> dict:
    """Import preference pairs into OUT/pref.jsonl and KTO records into OUT/kto.jsonl; returns the report."""
    return _run("pref", inputs, out, sets, progress, options)


def _run(stage: str, inputs, out, sets, progress: bool, options: dict) -> dict:
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    cfg = build_config(ChatDataConfig, fields=dict(options, inputs=[str(p) for p in inputs], out=str(out)),
                       sets=sets, source=f"data {stage}")
    specs, warnings = _specs(cfg, stage)  # every input problem surfaces before a run folder exists
    known = {s.name for s in specs} | {n for s in specs for f in s.files for n in (f.name, f.stem)}
    task_types = TaskTypes(cfg.task_type, cfg.task_types, cfg.task_type_field, cfg.task_type_map, known)
    meter = Meter(cfg.tokenizer, cfg.chat_template)
    run = start_run(out, "sft-data" if stage == "sft" else "pref-data", cfg)
    job = _Job(cfg, stage, task_types, meter, run.log)
    names = ["sft"] if stage == "sft" else ["pref", "kto"]
    writers = {n: JsonlWriter(Path(out) / f"{n}.jsonl") for n in names}
    try:
        with JsonlWriter(Path(out) / "rejects.jsonl") as rejects:
            for spec in specs:
                job.dataset(spec, writers, rejects, progress)
    except BaseException:
        for w in writers.values():
            w.close(ok=False)
        raise
    for w in writers.values():
        w.close()
    return run.finish(job.report(warnings, {n: w.count for n, w in writers.items()}))


def _specs(cfg: ChatDataConfig, stage: str) -> tuple[list[DatasetSpec], list[str]]:
    """The datasets to read: the named entries of registry inputs, and every data file of the other inputs."""
    specs, warnings, registries, plain = [], [], [], []
    for item in cfg.inputs:
        reg = registry_path(item)
        (registries if reg else plain).append(reg or Path(item))
    if cfg.datasets and not registries:
        raise ConfigError("datasets are names in a dataset_info.json: give its folder (or the file) as an input")
    for reg in registries:
        found, warn = dataset_specs(reg, [d for names in cfg.datasets for d in names.split(",") if d])
        specs += found
        warnings += warn
    for p in plain:
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or folder")
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.suffix in DATA_SUFFIXES and f.is_file()
                                                and not any(part.startswith(".") for part in f.relative_to(p).parts)
                                                and f.name not in RUN_FILES)
        if not files:
            raise FileNotFoundError(f"{p}: no {'/'.join(DATA_SUFFIXES)} files")
        specs += [DatasetSpec(name=f.stem, files=[f], formatting=cfg.format if cfg.format != "auto" else "openai")
                  for f in files]
    for s in specs:
        if s.registry is None:
            continue
        if stage == "sft" and s.kind != "sft":
            raise RegistryError(f"{s.where()} is {'ranking' if s.ranking else 'KTO'} data: import it with "
                                "`danlu data pref`")
        if stage == "pref" and s.kind == "sft":
            raise RegistryError(f"{s.where()} is SFT data (no ranking: true, no kto_tag column): import it with "
                                "`danlu data sft`")
    return specs, warnings


class _Job:
    """One import: converts, validates, writes and accounts for every row."""

    def __init__(self, cfg: ChatDataConfig, stage: str, task_types: TaskTypes, meter: Meter, log):
        self.cfg, self.stage, self.task_types, self.meter, self.log = cfg, stage, task_types, meter, log
        self.n_in = 0
        self.rejected: Counter = Counter()
        self.filtered: Counter = Counter()
        self.examples: dict[str, list] = defaultdict(list)
        self.per_dataset: dict[str, dict] = {}
        self.placeholders: Counter = Counter()
        if stage == "sft":
            self.stats = SftStats(meter.unit, cfg.short_answer, cfg.short_answer_warn)
        else:
            self.stats = PrefStats(meter.unit, cfg.short_answer)

    def dataset(self, spec: DatasetSpec, writers: dict, rejects: JsonlWriter, progress: bool) -> None:
        d = self.per_dataset.setdefault(spec.name, {"formats": Counter(), "in": 0, "kept": 0, "filtered": 0,
                                                    "rejected": Counter(), "unused_fields": Counter()})
        d["files"] = [str(f) for f in spec.files]
        kept: list[tuple[str, dict, tuple]] = []
        for path in spec.files:
            rows = read_rows(path)
            for where, pos, row in tqdm(rows, desc=f"{self.stage} {path.name}", unit="row",
                                        disable=not progress or None):
                self.n_in += 1
                d["in"] += 1
                try:
                    row_spec = self._detected(spec, row) if self._auto(spec, row) else spec
                    d["formats"][row_spec.formatting] += 1
                    kind, record, stat = self._record(row, row_spec, path, pos)
                except RowError as e:
                    self._reject(rejects, d, spec, path, where, pos, row, str(e), e.key)
                    continue
                used = set(row_spec.columns.values()) | set(RECORD_FIELDS) | {"tools"} | \
                    {self.cfg.task_type_field, self.cfg.tags_field}
                d["unused_fields"].update(k for k in row if k not in used)
                if spec.num_samples is None:
                    self._write(writers, kind, record, stat, d)
                else:
                    kept.append((kind, record, stat))
        if spec.num_samples is not None:  # LLaMA-Factory's num_samples: a random subset (seeded: reruns agree)
            chosen = set(random.Random(0).sample(range(len(kept)), min(spec.num_samples, len(kept))))
            for i, (kind, record, stat) in enumerate(kept):
                if i in chosen:
                    self._write(writers, kind, record, stat, d)
            dropped = len(kept) - len(chosen)
            self.filtered["num_samples (dataset_info.json)"] += dropped
            d["filtered"] += dropped
        self.log.info("%s: in=%d kept=%d filtered=%d rejected=%d %s", spec.name, d["in"], d["kept"], d["filtered"],
                      sum(d["rejected"].values()), dict(d["rejected"]) or "")

    def _auto(self, spec: DatasetSpec, row) -> bool:
        """Rows of files given without a registry: each row's fields say its format and columns (a file may mix
        TRL pairs, KTO rows and danlu records); --format fixes the format."""
        return spec.registry is None and isinstance(row, dict)

    def _detected(self, spec: DatasetSpec, row: dict) -> DatasetSpec:
        fixed = self.cfg.format != "auto"
        try:
            formatting, columns, tags = detect_format(row)
        except ValueError as e:
            if fixed:
                return spec
            raise RowError(str(e), key="no known format fits the row's fields") from None
        if fixed and formatting != self.cfg.format:
            formatting, columns = self.cfg.format, {k: v for k, v in columns.items() if k != "messages"}
        return DatasetSpec(name=spec.name, files=spec.files, formatting=formatting,
                           ranking="chosen" in columns, columns=columns, tags=tags)

    def _record(self, row, spec: DatasetSpec, path: Path, pos: int) -> tuple[str, dict, tuple]:
        """(kind, record, its statistics) of a row, or RowError."""
        if isinstance(row, str):
            raise RowError(row, key=row.split(":")[0])
        ex = CONVERTERS[spec.formatting](row, spec)
        if self.stage == "sft" and ex.kind != "sft":
            raise RowError(f"a {'preference pair' if ex.kind == 'preference' else 'KTO row'}: import it with "
                           "`danlu data pref`")
        if self.stage == "pref" and ex.kind == "sft":
            raise RowError("no chosen/rejected answers and no KTO tag: import SFT data with `danlu data sft`")
        self._replace(ex)
        own = {k: row[k] for k in RECORD_FIELDS if k in row}
        task_type, why = self.task_types.resolve(row, own.get("task_type"), spec.name, path)
        if why:
            raise RowError(why, key=f"{self.cfg.task_type_field}: value not in the task_type_map")
        source = self.cfg.source or own.get("source") or spec.name
        rid = own.get("id")
        rid = str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) and rid != "" else \
            stable_id(source, path.name, pos)
        record = {"id": rid, "messages": ex.messages}
        if ex.kind == "preference":
            record.update(chosen=ex.chosen, rejected=ex.rejected)
        elif ex.kind == "kto":
            record.update(completion=ex.completion, desirable=ex.desirable)
        record.update(task_type=task_type, tags=self._tags(row, own.get("tags")), source=source)
        if ex.tools:
            record["tools"] = ex.tools
        why = problem(record, ex.kind, strict=True)
        if why:
            if why.startswith("missing field 'task_type'"):
                why += HOW
            raise RowError(why)
        try:
            stat = self._measure(ex.kind, record)
        except TemplateError as e:  # counted without the quoted text snippets, so the reason groups
            key = "chat template: " + re.sub(r"'[^']*'|\"[^\"]*\"", "...", str(e))
            raise RowError(f"chat template: {e}", key=key) from None
        return ex.kind, record, stat

    def _tags(self, row: dict, own) -> list:
        tags = list(self.cfg.tags)
        if self.cfg.tags_field and row.get(self.cfg.tags_field) not in (None, "", []):
            own = row[self.cfg.tags_field]
        if isinstance(own, str):
            own = [own]
        for t in own or []:
            if t not in tags:
                tags.append(t)
        return tags

    def _replace(self, ex: Example) -> None:
        msgs = ex.messages + [m for m in (ex.chosen, ex.rejected, ex.completion) if m is not None]
        found = set()
        for m in msgs:
            content = m.get("content")
            if isinstance(content, str) and "{{" in content:
                for key, value in self.cfg.replace.items():
                    content = re.sub(r"\{\{\s*" + re.escape(key) + r"\s*\}\}", value.replace("\\", "\\\\"), content)
                m["content"] = content
                found.update(PLACEHOLDER.findall(content))
        self.placeholders.update(found)

    def _measure(self, kind: str, record: dict) -> tuple:
        """(task_type, size, ...) for the statistics: answer lengths and trained tokens of an SFT record, the two
        answers' lengths of a pair, a KTO completion's length and its label."""
        meter, tt = self.meter, record["task_type"]
        if kind == "sft":
            size, targets = meter.sft(record)
            answers = [m["content"] for m in record["messages"]
                       if m["role"] == "assistant" and not m.get("tool_calls") and m.get("loss_weight", 1) != 0]
            return tt, size, meter.lengths(answers), targets
        if kind == "preference":
            size = meter.answer(record, record["chosen"]) + meter.answer(record, record["rejected"])
            chosen, rejected = meter.lengths([record["chosen"]["content"], record["rejected"]["content"]])
            return tt, size, chosen, rejected
        size = meter.answer(record, record["completion"])
        return tt, size, meter.lengths([record["completion"]["content"]])[0], record["desirable"]

    def _write(self, writers: dict, kind: str, record: dict, stat: tuple, d: dict) -> None:
        writers[{"sft": "sft", "preference": "pref", "kto": "kto"}[kind]].write(record)
        d["kept"] += 1
        tt, size, a, b = stat
        if kind == "sft":
            self.stats.add(tt, size, a, b)
        elif kind == "preference":
            self.stats.add_pair(tt, size, a, b)
        else:
            self.stats.add_kto(tt, size, a, b)

    def _reject(self, rejects, d, spec, path, where, pos, row, reason: str, key: str) -> None:
        key = reason_key(key.split(", got ")[0])
        self.rejected[key] += 1
        d["rejected"][key] += 1
        entry = {"dataset": spec.name, "path": str(path), where: pos, "reason": reason,
                 "raw": (json.dumps(row, ensure_ascii=False) if isinstance(row, dict) else "")[:500]}
        rejects.write(entry)
        if len(self.examples[key]) < self.cfg.reject_examples:
            self.examples[key].append(entry)

    def report(self, warnings: list[str], written: dict[str, int]) -> dict:
        kept = sum(written.values())
        body, stat_warnings = self.stats.report()
        warnings = list(warnings) + stat_warnings
        if self.placeholders:
            names = ", ".join(f"{{{{{k}}}}} in {n}" for k, n in self.placeholders.most_common())
            warnings.append(f"unreplaced placeholders ({names} records): LLaMA-Factory users replace them; pass "
                            "--replace NAME=VALUE (they were kept as written)")
        if self.meter.default_template:
            warnings.append(f"{self.cfg.tokenizer} has no chat template: tokens were counted with danlu's default "
                            "(training installs it and adds its role tokens)")
        for name, d in self.per_dataset.items():
            if d["in"] and not d["kept"]:
                warnings.append(f"dataset {name!r}: none of its {d['in']} rows was kept (see rejects.jsonl)")
        per_dataset = {name: {**d, "formats": dict(d["formats"]), "rejected": dict(d["rejected"]),
                              "unused_fields": dict(d["unused_fields"])} for name, d in self.per_dataset.items()}
        headline = ["records", "task_types", self.meter.unit] if self.stage == "sft" else \
            ["pairs", "kto", "task_types", self.meter.unit]
        return {"counts": counts(self.n_in, kept, filtered=dict(self.filtered), rejected=dict(self.rejected)),
                "unit": self.meter.unit, **body, "outputs": written, "per_dataset": per_dataset,
                "reject_examples": dict(self.examples), "placeholders": dict(self.placeholders),
                "headline": headline, "warnings": warnings}
