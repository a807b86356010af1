"""`danlu run`: the quickstart pipeline end to end, skip-when-unchanged, and up-front config validation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from danlu.config import ConfigError
from danlu.pipeline import run_pipeline
from danlu.runs import read_report
from report_helpers import file_counts

REPO = Path(__file__).resolve().parents[1]


def _quickstart(tmp_path: Path, **changes) -> Path:
    """A copy of examples/quickstart.yaml writing under tmp_path, with a private copy of the corpus."""
    shutil.copytree(REPO / "examples" / "corpus", tmp_path / "corpus")
    cfg = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    cfg["out"] = str(tmp_path / "out")
    for s in cfg["sources"]:
        s["paths"] = [str(tmp_path / "corpus" / Path(p).name) for p in s["paths"]]
    cfg["pretrain"]["train"]["max_steps"] = 6
    cfg["pretrain"]["log"] = {"every": 2, "progress": False, "tensorboard": False}
    for later in ("sft", "eval"):  # the data half and pretraining (tests/test_quickstart.py runs the whole recipe)
        cfg.pop(later, None)
    cfg["report"] = False
    cfg.update(changes)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


def _status(summary: list[dict]) -> dict[str, str]:
    return {s["step"]: s["status"] for s in summary}


def test_quickstart_runs_end_to_end_and_skips_unchanged_steps(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = _quickstart(tmp_path)
    out = tmp_path / "out"
    first = _status(run_pipeline(cfg, progress=False, echo=lambda s: None))
    assert set(first.values()) == {"ran"} and "pretrain" in first and "stats" in first
    for step in ("ingest/ops", "clean/general", "tokenizer", "chunk/ops", "tokens/general", "stats", "pretrain"):
        assert read_report(out / step) is not None, step
    ingest = read_report(out / "ingest" / "ops")
    assert file_counts(ingest)["failed"] == 0 and file_counts(ingest)["written"] == sum(
        p.is_file() for p in (tmp_path / "corpus" / "ops").rglob("*"))
    model = AutoModelForCausalLM.from_pretrained(out / "pretrain" / "model")
    tok = AutoTokenizer.from_pretrained(out / "pretrain" / "model")
    assert model.config.vocab_size >= len(tok) and (out / "stats" / "report.html").exists()

    again = _status(run_pipeline(cfg, progress=False, echo=lambda s: None))
    assert set(again.values()) == {"skipped"}

    # a new general document (long enough to pass the filters) reruns that source's chain and everything
    # downstream of it, nothing else
    doc = tmp_path / "corpus" / "general" / "essays.jsonl"
    doc.write_text(doc.read_text(encoding="utf-8") + '{"title": "新", "content": "新的一篇短文，讲的是秋天的落叶和远方'
                   '的朋友。山里的枫叶红了，风一吹就落满小路；他在信里说，等到冬天下第一场雪，就回来和我们一起煮茶。"}\n',
                   encoding="utf-8")
    third = _status(run_pipeline(cfg, progress=False, echo=lambda s: None))
    assert third["ingest ops"] == third["clean ops"] == "skipped"
    assert third["ingest general"] == third["clean general"] == third["tokenizer"] == "ran"
    assert third["pretrain"] == "ran"

    # a forced rerun of the data steps reproduces their outputs: nothing downstream is invalidated by it
    data = yaml.safe_load(cfg.read_text())
    data["sources"][0]["weight"] = 0.2  # a mixing weight: only pretraining depends on it
    cfg.write_text(yaml.safe_dump(data, allow_unicode=True))
    fourth = _status(run_pipeline(cfg, progress=False, echo=lambda s: None))
    assert [k for k, v in fourth.items() if v == "ran"] == ["pretrain"]


def test_bad_pretrain_section_fails_before_any_step(tmp_path):
    cfg = _quickstart(tmp_path)
    data = yaml.safe_load(cfg.read_text())
    data["pretrain"]["train"]["max_step"] = 3  # misspelt
    cfg.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="max_step"):
        run_pipeline(cfg, progress=False, echo=lambda s: None)
    assert not (tmp_path / "out").exists()


def test_unknown_pipeline_key_names_the_file(tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("sources: [{name: a, paths: [x]}]\ntokeniser: {vocab_size: 100}\n")
    with pytest.raises(ConfigError, match=r"(?s)p\.yaml.*tokeniser"):
        run_pipeline(cfg, progress=False, echo=lambda s: None)


def test_interrupted_pretrain_resumes_and_changed_inputs_keep_the_previous_model(tmp_path, monkeypatch):
    import danlu.train.pretrain as pt

    cfg = _quickstart(tmp_path)
    out = tmp_path / "out" / "pretrain"
    real = pt.pretrain
    calls = []

    def killed_after_checkpoint(c, out_dir=None, resume=False):
        calls.append(resume)
        real(c, out_dir, resume=resume)
        (out / "report.json").unlink()  # as if killed after the last checkpoint, before the report landed
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(pt, "pretrain", killed_after_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, progress=False, echo=lambda s: None)
    monkeypatch.setattr(pt, "pretrain", lambda c, out_dir=None, resume=False: calls.append(resume) or real(c, out_dir, resume=resume))
    summary = _status(run_pipeline(cfg, progress=False, echo=lambda s: None))
    assert summary["pretrain"] == "ran" and calls == [False, True]  # same inputs: resumed, not restarted

    assert _status(run_pipeline(cfg, progress=True, echo=lambda s: None))["pretrain"] == "skipped"  # flag only
    data = yaml.safe_load(cfg.read_text())
    data["pretrain"]["optim"]["lr"] = 1e-3  # changed inputs: a fresh run, the old model kept beside it
    cfg.write_text(yaml.safe_dump(data, allow_unicode=True))
    run_pipeline(cfg, progress=False, echo=lambda s: None)
    assert calls[-1] is False and read_report(out) is not None
    kept = [p for p in out.parent.iterdir() if p.name.startswith("pretrain.prev-")]
    assert len(kept) == 1 and (kept[0] / "model" / "model.safetensors").exists()


def test_a_build_from_a_local_model_through_sft_and_dpo_with_eval_and_report(tmp_path):
    """`model:` instead of pretraining; an SFT stage then a DPO stage, each from the model before it; every model
    evaluated and compared with the one before it; the report lists them; a second run skips everything."""
    from pref_fixtures import synthetic_pairs
    from sft_fixtures import mixed_records, tiny_model, write_jsonl

    model = tiny_model(tmp_path / "base")
    sft = write_jsonl(tmp_path / "sft.jsonl", mixed_records(24))
    test = write_jsonl(tmp_path / "test.jsonl", mixed_records(6, seed=3))
    pairs = write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(16))
    quick = {"train": {"max_steps": 2, "batch_size": 4, "micro_batch_size": 2, "precision": "fp32"},
             "log": {"every": 1, "progress": False, "tensorboard": False}, "checkpoint": {"every": 0}}
    cfg = {"out": str(tmp_path / "out"), "model": {"path": str(model)},
           "sft": [{"name": "chat", "inputs": [str(sft)], "data": {"seq_len": 256}, **quick}],
           "dpo": [{"name": "aligned", "inputs": [str(pairs)], "import": {"task_type": "qa"},
                    "data": {"seq_len": 128}, "dpo": {"beta": 0.1}, **quick}],
           "eval": {"gen": {"data": [str(test)], "generation": {"max_new_tokens": 4, "batch_size": 8}}}}
    path = tmp_path / "build.yaml"
    path.write_text(yaml.safe_dump(cfg))
    first = run_pipeline(path, progress=False, echo=lambda s: None)
    names = [s["step"] for s in first]
    assert names[:4] == ["sft-data chat", "sft chat", "pref-data aligned", "dpo aligned"]
    assert {"eval base", "eval chat", "eval aligned", "compare chat-vs-base", "compare aligned-vs-chat"} <= set(names)
    lineage = json.loads((tmp_path / "out" / "dpo" / "aligned" / "model" / "lineage.json").read_text())
    assert lineage["stage"] == "train-dpo" and lineage["base_model"]["lineage"]["stage"] == "train-sft"
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "dpo aligned" in page and "compare aligned-vs-chat" in page
    assert {s["status"] for s in run_pipeline(path, progress=False, echo=lambda s: None)} == {"skipped"}
