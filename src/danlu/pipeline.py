"""`danlu run PIPELINE.yaml`: the stages wired by their outputs, each skipped when its inputs are unchanged.

    per source:  ingest -> clean (+dedup)
    all sources: tokenizer (trained on the cleaned text, unless an existing one is given)
    per source:  chunk (section-complete pieces under a token budget) -> tokenize (token store)
    all sources: stats -> pretrain (or start from a local `model:`)
    per stage:   sft-data (import) -> sft (each stage starts from the previous model)
    per model:   eval (the suites configured) -> compare (with the model before it, and with the previous build)
    the build:   report (OUT/report.html)

Everything lands under OUT/ in one run folder per step (OUT/ingest/ops, OUT/clean/ops, OUT/tokenizer, ...),
so any step's output can be picked up by the stand-alone commands. Source names become folder names, so they
follow danlu.names.safe_name. Every section is validated before the first step runs (`check_pipeline`): a typo
in the last stage's options fails in a second, not after the hours of data work before it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Optional

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from danlu.config import ConfigError, StrictModel, build_config, load_yaml, validate
from danlu.data.chunk import ChunkOptions
from danlu.data.executor import ExecutorFields
from danlu.names import display, safe_name
from danlu.pipeline_runner import CACHE, Step, run_steps
from danlu.runs import read_report
from danlu.tokenizer.train import TokenizerTrainOptions

# the token store's files that pretraining reads (shard summaries carry timings, so they are not part of it)
STORE_OUTPUTS = ["store.json", "shards/*.tokens", "shards/*.index.npz", "rejects.jsonl"]


class PipelineSource(StrictModel):
    name: Annotated[str, AfterValidator(lambda v: safe_name(v, "source name"))]  # a folder: OUT/ingest/NAME
    paths: list[str] = Field(min_length=1)  # files and folders to ingest
    text_field: str = "text"  # for jsonl/json/csv inputs
    weight: float = Field(1.0, ge=0)  # share of pretraining tokens
    domain: bool = False  # domain data, for the domain-share guard


class CleanStep(StrictModel):
    preset: str = "pretrain"
    config: Optional[str] = None  # a clean pipeline YAML; overrides the preset


class TokenizerStep(TokenizerTrainOptions):
    path: Optional[str] = None  # an existing HF tokenizer folder; else one is trained on the cleaned corpus


class ChunkStep(ChunkOptions):
    enabled: bool = True


SafeName = Annotated[str, AfterValidator(lambda v: safe_name(v, "stage name"))]


class StartModel(StrictModel):
    path: str  # a local HF model folder (or a danlu run) to fine-tune instead of pretraining one


class TuneStep(StrictModel):
    """One fine-tuning stage (SFT, or preference tuning): its data (any format `danlu data sft` / `danlu data
    pref` reads, with its import options) and a `danlu train sft` / `train dpo` config without model.path (the
    previous model) and data.train (the imported records)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    name: SafeName = "sft"
    inputs: list[str] = Field(min_length=1)
    import_: dict[str, Any] = Field(default_factory=dict, alias="import")  # `danlu data sft` options (task_type...)
    model: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    optim: dict[str, Any] = Field(default_factory=dict)
    schedule: dict[str, Any] = Field(default_factory=dict)
    spikes: dict[str, Any] = Field(default_factory=dict)
    log: dict[str, Any] = Field(default_factory=dict)
    eval: dict[str, Any] = Field(default_factory=dict)
    checkpoint: dict[str, Any] = Field(default_factory=dict)
    dpo: dict[str, Any] = Field(default_factory=dict)  # preference stages: the loss section of `train dpo`


class EvalStep(StrictModel):
    """The suites (`danlu eval` sections) every model of the build is evaluated with."""

    models: Optional[list[str]] = None  # which (base / pretrain / SFT stage names); default all
    runtime: dict[str, Any] = Field(default_factory=dict)
    ppl: Optional[dict[str, Any]] = None
    mcq: Optional[dict[str, Any]] = None
    gen: Optional[dict[str, Any]] = None
    judge: Optional[dict[str, Any]] = None
    diagnostics: Optional[dict[str, Any]] = None


class Pipeline(StrictModel):
    out: str = "runs/pipeline"
    sources: list[PipelineSource] = Field(default_factory=list)
    clean: CleanStep = CleanStep()
    tokenizer: TokenizerStep = TokenizerStep()
    chunk: ChunkStep = ChunkStep()
    # A `danlu train pt` config without data.sources / model.tokenizer / out: the pipeline fills those in.
    pretrain: Optional[dict[str, Any]] = None
    model: Optional[StartModel] = None  # start SFT from a local model instead of pretraining
    sft: list[TuneStep] = Field(default_factory=list)
    dpo: list[TuneStep] = Field(default_factory=list)  # preference stages, after the SFT stages
    eval: Optional[EvalStep] = None
    report: bool = True  # write OUT/report.html
    # where the data steps run (ingest, clean, chunk, tokenize, stats): local workers or a Ray cluster. Not part
    # of any step's fingerprint: the outputs are the same wherever they are made.
    executor: ExecutorFields = ExecutorFields()

    @model_validator(mode="after")
    def _unique_names(self) -> "Pipeline":
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        stages = [s.name for s in self.sft + self.dpo]
        if len(set(stages)) != len(stages) or {"base", "pretrain"} & set(stages):
            raise ValueError(f"SFT and DPO stage names must be unique and not 'base' or 'pretrain', got {stages}")
        if self.pretrain is not None and self.model is not None:
            raise ValueError("give 'pretrain' (train a model) or 'model' (start from a local one), not both")
        if (self.sft or self.dpo) and self.pretrain is None and self.model is None:
            raise ValueError("the SFT/DPO stages need a model: add a 'pretrain' section or 'model: {path: ...}'")
        if any(s.dpo for s in self.sft):
            raise ValueError("an SFT stage has a 'dpo' section: preference stages go under 'dpo:'")
        if self.pretrain is not None and not self.sources:
            raise ValueError("pretraining needs 'sources'")
        if self.executor.address and self.executor.executor != "ray":
            raise ValueError(f"executor.address {self.executor.address!r} is for the Ray executor: add "
                             "executor.executor: ray")
        return self


def load_pipeline(path: str | Path, sets: Iterable[str] = ()) -> Pipeline:
    """The validated pipeline (with `--set` overrides, e.g. `sft.0.optim.lr=1e-3`); its relative paths are
    resolved against the working directory."""
    return build_config(Pipeline, load_yaml(path), sets=sets, source=str(path))


def pretrain_config(p: Pipeline, out: Path, tokenizer: Path):
    """The full PretrainConfig for the pipeline's last step (validated before any step runs)."""
    from danlu.train.config import PretrainConfig

    cfg = dict(p.pretrain or {})
    model = {**cfg.get("model", {})}
    if not model.get("path"):
        model.setdefault("tokenizer", str(tokenizer))
    data = {**cfg.get("data", {})}
    data["sources"] = [
        {"name": s.name, "store": str(out / "tokens" / s.name), "weight": s.weight, "domain": s.domain}
        for s in p.sources
    ]
    return validate({**cfg, "model": model, "data": data, "out": str(out / "pretrain")}, PretrainConfig,
                    "pipeline 'pretrain' section")


def build_steps(p: Pipeline, progress: bool = True, summary: list[dict] | None = None) -> list[Step]:
    """The steps of the build; `summary` (filled by run_steps as steps run or are skipped) is what the report
    step shows of this run."""
    from danlu.data.clean import clean
    from danlu.data.ingest import ingest

    out = Path(p.out)
    where = p.executor.model_dump()
    steps: list[Step] = []
    cleaned: dict[str, Path] = {}
    for s in p.sources:
        ing, cln = out / "ingest" / s.name, out / "clean" / s.name
        steps.append(Step(f"ingest {s.name}", ing, _call(ingest, s.paths, ing, source=s.name,
                                                          text_field=s.text_field, progress=progress, **where),
                          config=s.model_dump(include={"name", "paths", "text_field"}),  # not weight/domain
                          inputs=[Path(x) for x in s.paths], outputs=["documents.jsonl"]))
        steps.append(Step(f"clean {s.name}", cln, _call(clean, [ing / "documents.jsonl"], cln, preset=p.clean.preset,
                                                         config=p.clean.config, progress=progress, **where),
                          config=p.clean.model_dump(), inputs=[ing] + ([Path(p.clean.config)] if p.clean.config else []),
                          outputs=["clean.jsonl"]))  # what the next steps read; rejects and review.html they do not
        cleaned[s.name] = cln / "clean.jsonl"

    tok = _data_steps(p, out, cleaned, steps, progress) if p.sources else None

    models: dict[str, Path] = {}  # model name -> the folder holding it (a run or a model folder)
    if p.pretrain is not None:
        cfg = pretrain_config(p, out, tok)
        cfg.log.progress = cfg.log.progress and progress
        steps.append(Step("pretrain", out / "pretrain", _train_step("pretrain", cfg),
                          config=cfg.model_dump(mode="json", exclude={"log": {"progress"}}),
                          inputs=[out / "tokens" / s.name for s in p.sources] + [tok], outputs=["model/*"]))
        models["pretrain"] = out / "pretrain"
    elif p.model is not None:
        models["base"] = Path(p.model.path)
    steps += _tune_steps(p, out, models, progress)
    if p.eval is not None:
        steps += _eval_steps(p, out, models, progress)
    if p.report:
        built = list(steps)
        steps.append(Step("report", out / "report", lambda resume: _write_build_report(out, built, summary or []),
                          inputs=[s.out for s in built], outputs=["report.html"]))
    return steps


def _data_steps(p: Pipeline, out: Path, cleaned: dict[str, Path], steps: list[Step], progress: bool) -> Path:
    """tokenizer -> chunk -> tokenize -> stats (appended to `steps`); returns the tokenizer folder."""
    from danlu.data.chunk import chunk
    from danlu.data.stats import stats
    from danlu.data.tokenize import tokenize
    from danlu.tokenizer.train import train_tokenizer

    where = p.executor.model_dump()
    if p.tokenizer.path:
        tok = Path(p.tokenizer.path)
    else:
        tok = out / "tokenizer"
        options = p.tokenizer.model_dump(exclude={"path"})
        steps.append(Step("tokenizer", tok, _call(train_tokenizer, list(cleaned.values()), tok, **options),
                          config=p.tokenizer.model_dump(), inputs=[out / "clean" / n for n in cleaned]))

    final: dict[str, Path] = {}
    for name, path in cleaned.items():
        if p.chunk.enabled:
            ch = out / "chunk" / name
            steps.append(Step(f"chunk {name}", ch, _call(chunk, [path], ch, tokenizer=tok, progress=progress,
                                                          **p.chunk.model_dump(exclude={"enabled"}), **where),
                              config=p.chunk.model_dump(), inputs=[path.parent, tok], outputs=["chunks.jsonl"]))
            final[name] = ch / "chunks.jsonl"
        else:
            final[name] = path
    for name, path in final.items():
        store = out / "tokens" / name
        steps.append(Step(f"tokenize {name}", store, _call(tokenize, [path], store, tok, source=name, progress=progress,
                                                         **where),
                          inputs=[path.parent, tok], outputs=STORE_OUTPUTS))

    st = out / "stats"
    steps.append(Step("stats", st, _call(stats, list(final.values()), st, tokenizer=tok, **where),
                      inputs=[f.parent for f in final.values()] + [tok]))
    return tok


def tune_config(p: Pipeline, kind: str, stage: TuneStep, model: Path, data: Path):
    """The full SFTConfig / DPOConfig of one stage (validated before any step runs)."""
    from danlu.train.config import DPOConfig, SFTConfig

    sections = stage.model_dump(exclude={"name", "inputs", "import_"} | ({"dpo"} if kind == "sft" else set()))
    sections["model"] = {**sections["model"], "path": str(model)}
    sections["data"] = {**sections["data"], "train": [str(data)]}
    return validate({**{k: v for k, v in sections.items() if v}, "out": str(Path(p.out) / kind / stage.name)},
                    SFTConfig if kind == "sft" else DPOConfig, f"pipeline {kind} stage '{stage.name}'")


def _tune_steps(p: Pipeline, out: Path, models: dict[str, Path], progress: bool) -> list[Step]:
    """Per stage: import its data (`data sft` / `data pref`), then train from the model before it."""
    from danlu.data.sft import preference_data, sft_data

    steps = []
    for kind, stages in (("sft", p.sft), ("dpo", p.dpo)):
        for stage in stages:
            importer, data_kind = (sft_data, "sft-data") if kind == "sft" else (preference_data, "pref-data")
            data_dir = out / data_kind / stage.name
            steps.append(Step(f"{data_kind} {stage.name}", data_dir,
                              _call(importer, stage.inputs, data_dir, progress=progress, **stage.import_),
                              config=stage.import_, inputs=[Path(x) for x in stage.inputs],
                              outputs=["sft.jsonl"] if kind == "sft" else ["pref.jsonl", "kto.jsonl"]))
            previous = list(models.values())[-1]
            cfg = tune_config(p, kind, stage, previous, data_dir / "sft.jsonl" if kind == "sft" else data_dir)
            cfg.log.progress = cfg.log.progress and progress
            steps.append(Step(f"{kind} {stage.name}", Path(cfg.out), _train_step(kind, cfg),
                              config=cfg.model_dump(mode="json", exclude={"log": {"progress"}}),
                              inputs=[data_dir, previous], outputs=["model/*"]))
            models[stage.name] = Path(cfg.out)
    return steps


def eval_config(p: Pipeline, name: str, model: Path):
    from danlu.eval.config import EvalConfig

    sections = p.eval.model_dump(exclude={"models"}, exclude_none=True)
    return validate({**sections, "model": str(model), "out": str(Path(p.out) / "eval" / name), "name": name},
                    EvalConfig, "pipeline 'eval' section")


def _eval_steps(p: Pipeline, out: Path, models: dict[str, Path], progress: bool) -> list[Step]:
    """eval NAME for each model, then compare each with the model before it (what the stage changed) and with
    the same model of the previous build (what this build changed); the previous build's evaluation is kept
    beside the new one as eval/NAME.previous."""
    names = [n for n in models if p.eval.models is None or n in p.eval.models]
    unknown = sorted(set(p.eval.models or []) - set(models))
    if unknown:
        raise ConfigError(f"pipeline 'eval.models': {', '.join(unknown)} is not a model of this build "
                          f"({', '.join(models)})")
    steps, evals = [], {}
    data = [Path(x) for section in ("ppl", "mcq", "gen", "diagnostics") for x in
            ((getattr(p.eval, section) or {}).get("data") or [])]
    for name in names:
        cfg = eval_config(p, name, models[name])
        evals[name] = Path(cfg.out)
        steps.append(Step(f"eval {name}", Path(cfg.out), _eval_step(cfg, progress),
                          config=cfg.model_dump(mode="json", exclude={"model", "out"}),
                          inputs=[models[name], *data], outputs=["*/results.json", "*/answers.jsonl"]))
    for before, after in zip(names, names[1:]):
        steps.append(_compare_step(out / "compare" / f"{after}-vs-{before}", [evals[before], evals[after]],
                                   [before, after]))
    for name in names:
        previous = evals[name].with_name(f"{name}.previous")
        steps.append(_compare_step(out / "compare" / f"{name}-vs-previous-build", [previous, evals[name]],
                                   [f"{name} (previous build)", name], optional=True))
    return steps


def _compare_step(folder: Path, runs: list[Path], names: list[str], optional: bool = False) -> Step:
    def run(resume: bool) -> dict:
        from danlu.eval.compare import compare_runs
        from danlu.runs import counts, start_run

        if optional and read_report(runs[0]) is None and not any(runs[0].glob("*/report.json")):
            # the first build has no previous one: say so in a report instead of comparing with nothing
            r = start_run(folder, "eval-compare", {"runs": [str(x) for x in runs]})
            return r.finish({"suite": "compare", "counts": counts(0, 0, unit="suites"),
                             "warnings": [f"no previous build of {names[1]} to compare with yet"]})
        return compare_runs(runs, folder, names=names)

    return Step(f"compare {folder.name}", folder, run, inputs=list(runs), outputs=["results.json"])


def _eval_step(cfg, progress: bool) -> Callable[[bool], dict]:
    def run(resume: bool) -> dict:
        import shutil

        from danlu.eval.stage import evaluate

        folder = Path(cfg.out)
        if read_report(folder) is not None:  # the previous build's results: kept for the compare step
            previous = folder.with_name(f"{folder.name}.previous")
            shutil.rmtree(previous, ignore_errors=True)
            folder.rename(previous)
        reports = evaluate(cfg, progress=progress, echo=print)
        from danlu.runs import counts, start_run

        run_ = start_run(folder, "eval", cfg)
        return run_.finish({"counts": counts(len(reports), len(reports), unit="suites"),
                            "suites": {k: str(folder / k) for k in reports}})

    return run


def _write_build_report(out: Path, steps: list[Step], summary: list[dict]) -> dict:
    from danlu.build_report import write_report
    from danlu.runs import counts, start_run

    run = start_run(out / "report", "report", {"steps": [s.name for s in steps]})
    this_run = {s["step"]: s for s in summary}
    listed = [{**this_run.get(s.name, {}), "step": s.name, "out": str(s.out),
               "status": this_run.get(s.name, {}).get("status", "done" if read_report(s.out) else "missing")}
              for s in steps]
    page = write_report(out, listed, title=f"danlu build: {out}")
    (out / "report" / "report.html").write_bytes(page.read_bytes())
    missing = sum(x["status"] == "missing" for x in listed)
    return run.finish({"counts": counts(len(listed), len(listed) - missing, {"not finished": missing},
                                        unit="steps"), "page": str(page)})


def _call(fn: Callable[..., dict], *args: Any, **kwargs: Any) -> Callable[[bool], dict]:
    """A data step: it reruns, and `data ingest` / `data tokenize` reuse the finished work of a killed run."""
    return lambda resume: fn(*args, **kwargs)


def _train_step(kind: str, cfg) -> Callable[[bool], dict]:
    """A training step: resume an interrupted run on the same inputs; otherwise keep the previous model version
    aside (OUT/NAME.prev-TIME, for comparison) and train afresh."""

    def run(resume: bool) -> dict:
        from danlu.train.checkpoint import latest_checkpoint

        if kind == "pretrain":
            from danlu.train.pretrain import pretrain as fn
        elif kind == "sft":
            from danlu.train.sft import sft as fn
        else:
            from danlu.train.dpo import dpo as fn
        out = Path(cfg.out)
        if resume and latest_checkpoint(out / "checkpoints") is not None:
            return fn(cfg, resume=True)
        if out.exists() and any(out.iterdir()):
            prev = out.with_name(f"{out.name}.prev-{time.strftime('%Y%m%d-%H%M%S')}")
            out.rename(prev)
            print(f"previous {kind} run kept as {prev}")
        return fn(cfg)

    return run


def check_pipeline(p: Pipeline, source: str = "pipeline") -> None:
    """Validate every stage's section as its step will (inputs, ingest options, clean preset or config with its
    operators, tokenizer, training) before any step runs; raises ConfigError / FileNotFoundError."""
    from danlu.data.clean.config import load_clean_config
    from danlu.data.ingest.importer import IngestConfig

    out = Path(p.out)
    for s in p.sources:
        for x in s.paths:
            if not Path(x).exists():
                raise FileNotFoundError(f"{source}: source '{s.name}': input {display(x)} does not exist")
        build_config(IngestConfig, fields=dict(inputs=s.paths, out=str(out / "ingest" / s.name),
                                               source=s.name, text_field=s.text_field),
                     source=f"{source}: source '{s.name}'")
    try:
        load_clean_config(p.clean.config, preset=None if p.clean.config else p.clean.preset)
    except ConfigError as e:
        raise ConfigError(f"{source}: section 'clean': {e}") from None
    if p.tokenizer.path and not (Path(p.tokenizer.path) / "tokenizer.json").exists():
        raise FileNotFoundError(f"{source}: tokenizer.path {display(p.tokenizer.path)} is not a Hugging Face "
                                "tokenizer folder (no tokenizer.json)")
    if p.pretrain is not None:  # fail on a bad training section before hours of data work, not after
        pretrain_config(p, out, Path(p.tokenizer.path or out / "tokenizer"))
    if p.model is not None and not Path(p.model.path).exists():
        raise FileNotFoundError(f"{source}: model.path {display(p.model.path)} does not exist")
    from danlu.data.sft import ChatDataOptions

    for kind, stages in (("sft", p.sft), ("dpo", p.dpo)):
        for stage in stages:
            build_config(ChatDataOptions, fields=stage.import_, source=f"{source}: {kind} stage '{stage.name}' import")
            tune_config(p, kind, stage, out / "model", out / "data" / stage.name)
    if p.eval is not None:
        eval_config(p, "check", out / "model")


def run_pipeline(path: str | Path, force: bool = False, progress: bool = True,
                 echo: Callable[[str], None] = print, sets: Iterable[str] = ()) -> list[dict]:
    p = load_pipeline(path, sets)
    check_pipeline(p, str(path))
    summary: list[dict] = []
    steps = build_steps(p, progress=progress, summary=summary)
    return run_steps(steps, force=force, echo=echo, cache=Path(p.out) / CACHE, summary=summary)
