"""`danlu run PIPELINE.yaml`: the stages wired by their outputs, each skipped when its inputs are unchanged.

    per source:  ingest -> clean (+dedup)
    all sources: tokenizer (trained on the cleaned text, unless an existing one is given)
    per source:  chunk (section-complete pieces under a token budget) -> tokenize (token store)
    all sources: stats (HTML report) -> pretrain

Everything lands under OUT/ in one run folder per step (OUT/ingest/ops, OUT/clean/ops, OUT/tokenizer, ...),
so any step's output can be picked up by the stand-alone commands.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional

from pydantic import Field, model_validator

from danlu.config import StrictModel, load_yaml, validate
from danlu.pipeline_runner import Step, run_steps
from danlu.runs import start_run


class PipelineSource(StrictModel):
    name: str
    paths: list[str] = Field(min_length=1)  # files and folders to ingest
    text_field: str = "text"  # for jsonl/json/csv inputs
    weight: float = Field(1.0, ge=0)  # share of pretraining tokens
    domain: bool = False  # domain data, for the domain-share guard


class CleanStep(StrictModel):
    preset: str = "pretrain"
    config: Optional[str] = None  # a clean pipeline YAML; overrides the preset


class TokenizerStep(StrictModel):
    path: Optional[str] = None  # an existing HF tokenizer folder; else one is trained on the cleaned corpus
    vocab_size: int = Field(4096, ge=300)


class ChunkStep(StrictModel):
    enabled: bool = True
    max_tokens: int = Field(4096, ge=8)
    heading_prefix: bool = False


class Pipeline(StrictModel):
    out: str = "runs/pipeline"
    sources: list[PipelineSource] = Field(min_length=1)
    clean: CleanStep = CleanStep()
    tokenizer: TokenizerStep = TokenizerStep()
    chunk: ChunkStep = ChunkStep()
    # A `danlu train pt` config without data.sources / model.tokenizer / out: the pipeline fills those in.
    pretrain: Optional[dict[str, Any]] = None

    @model_validator(mode="after")
    def _unique_names(self) -> "Pipeline":
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        return self


def load_pipeline(path: str | Path) -> Pipeline:
    """The validated pipeline; its relative paths are resolved against the working directory."""
    return validate(load_yaml(path), Pipeline, str(path))


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


def build_steps(p: Pipeline, progress: bool = True) -> list[Step]:
    from danlu.data.chunk import chunk
    from danlu.data.clean import clean
    from danlu.data.ingest import ingest
    from danlu.data.tokenize import tokenize
    from danlu.tokenizer.train import train_tokenizer

    out = Path(p.out)
    steps: list[Step] = []
    cleaned: dict[str, Path] = {}
    for s in p.sources:
        ing, cln = out / "ingest" / s.name, out / "clean" / s.name
        steps.append(Step(f"ingest {s.name}", ing, _call(ingest, s.paths, ing, source=s.name,
                                                          text_field=s.text_field, progress=progress),
                          config=s.model_dump(include={"name", "paths", "text_field"}),  # not weight/domain
                          inputs=[Path(x) for x in s.paths]))
        steps.append(Step(f"clean {s.name}", cln, _call(clean, [ing / "documents.jsonl"], cln, preset=p.clean.preset,
                                                         config=p.clean.config, progress=progress),
                          config=p.clean.model_dump(), inputs=[ing] + ([Path(p.clean.config)] if p.clean.config else [])))
        cleaned[s.name] = cln / "clean.jsonl"

    if p.tokenizer.path:
        tok = Path(p.tokenizer.path)
    else:
        tok = out / "tokenizer"
        steps.append(Step("tokenizer", tok, _call(train_tokenizer, list(cleaned.values()), tok,
                                                   vocab_size=p.tokenizer.vocab_size),
                          config=p.tokenizer.model_dump(), inputs=[out / "clean" / n for n in cleaned]))

    final: dict[str, Path] = {}
    for name, path in cleaned.items():
        if p.chunk.enabled:
            ch = out / "chunk" / name
            steps.append(Step(f"chunk {name}", ch, _call(chunk, [path], ch, tokenizer=tok, max_tokens=p.chunk.max_tokens,
                                                          heading_prefix=p.chunk.heading_prefix, progress=progress),
                              config=p.chunk.model_dump(), inputs=[path.parent, tok]))
            final[name] = ch / "chunks.jsonl"
        else:
            final[name] = path
    for name, path in final.items():
        store = out / "tokens" / name
        steps.append(Step(f"tokenize {name}", store, _call(tokenize, [path], store, tok, source=name, progress=progress),
                          inputs=[path.parent, tok]))

    st = out / "stats"
    steps.append(Step("stats", st, lambda resume: _stats(list(final.values()), tok, st),
                      inputs=[f.parent for f in final.values()] + [tok]))

    if p.pretrain is not None:
        cfg = pretrain_config(p, out, tok)
        cfg.log.progress = cfg.log.progress and progress
        steps.append(Step("pretrain", out / "pretrain", lambda resume: _pretrain(cfg, resume),
                          config=cfg.model_dump(mode="json", exclude={"log": {"progress"}}), inputs=[out / "tokens" / s.name for s in p.sources] + [tok]))
    return steps


def _call(fn: Callable[..., dict], *args: Any, **kwargs: Any) -> Callable[[bool], dict]:
    """A data step: it reruns, and `data ingest` / `data tokenize` reuse the finished work of a killed run."""
    return lambda resume: fn(*args, **kwargs)


def _pretrain(cfg, resume: bool) -> dict:
    """Resume an interrupted run on the same inputs; otherwise keep the previous model version aside (the next
    evaluation compares against it) and train afresh."""
    from danlu.train.checkpoint import latest_checkpoint
    from danlu.train.pretrain import pretrain

    out = Path(cfg.out)
    if resume and latest_checkpoint(out / "checkpoints") is not None:
        return pretrain(cfg, resume=True)
    if out.exists() and any(out.iterdir()):
        prev = out.with_name(f"{out.name}.prev-{time.strftime('%Y%m%d-%H%M%S')}")
        out.rename(prev)
        print(f"previous pretrain run kept as {prev}")
    return pretrain(cfg)


def _stats(inputs: list[Path], tokenizer: Path, out: Path) -> dict:
    """`danlu data stats` as a pipeline step: its figures become the step's report, plots go to report.html."""
    from danlu.data.stats import stats

    run = start_run(out, "stats", {"inputs": [str(p) for p in inputs], "tokenizer": str(tokenizer)})
    return run.finish(stats(inputs, tokenizer=tokenizer, html=out / "report.html"))


def run_pipeline(path: str | Path, force: bool = False, progress: bool = True,
                 echo: Callable[[str], None] = print) -> list[dict]:
    p = load_pipeline(path)
    if p.pretrain is not None:  # fail on a bad training section before hours of data work, not after
        pretrain_config(p, Path(p.out), Path(p.tokenizer.path or Path(p.out) / "tokenizer"))
    return run_steps(build_steps(p, progress=progress), force=force, echo=echo)
