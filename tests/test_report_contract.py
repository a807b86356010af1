"""The report contract (danlu.runs): every stage's report.json has a counts block that adds up, and every
configurable command takes `--set` through one helper, with the strict error for an unknown key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from danlu.cli import app
from danlu.runs import AccountingError, check_counts, counts, start_run

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "corpus"


def _invoke(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


def _ok(*args: str):
    result = _invoke(*args)
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Every stage run once through the CLI on the bundled example, each with a `--set` override."""
    t = tmp_path_factory.mktemp("contract")
    r = {name: t / name for name in ("ingest", "ingest_general", "clean", "clean_general", "dedup", "tok",
                                     "tok_general", "expand", "chunk", "stats", "tokens", "pt")}
    _ok("data", "ingest", EXAMPLE / "ops", "-o", r["ingest"], "--source", "ops", "--no-progress", "--set", "workers=1")
    _ok("data", "ingest", EXAMPLE / "general", "-o", r["ingest_general"], "--set", "text_field=content",
        "--no-progress")
    _ok("data", "clean", r["ingest"] / "documents.jsonl", "-o", r["clean"], "--preset", "pretrain",
        "--set", "near_dedup.threshold=0.9", "--no-progress")
    _ok("data", "clean", r["ingest_general"], "-o", r["clean_general"], "--preset", "pretrain", "--no-progress")
    _ok("data", "dedup", r["ingest"] / "documents.jsonl", "-o", r["dedup"], "--set", "near_dedup.ngram=4",
        "--no-progress")
    _ok("tokenizer", "train", r["clean"], r["clean_general"], "-o", r["tok"], "--set", "vocab_size=600")
    _ok("tokenizer", "train", r["clean_general"], "-o", r["tok_general"], "--vocab-size", "400")
    _ok("tokenizer", "expand", r["tok_general"], r["tok"], "-o", r["expand"], "--set", "max_new=20")
    _ok("data", "chunk", r["clean"], "-o", r["chunk"], "--tokenizer", r["tok"], "--set", "max_tokens=64",
        "--no-progress")
    _ok("data", "stats", r["chunk"], "-o", r["stats"], "--tokenizer", r["tok"], "--set", "near_dup=false")
    _ok("data", "tokenize", r["chunk"], "-o", r["tokens"], "--tokenizer", r["tok"], "--set", "workers=1")
    cfg = {"model": {"tokenizer": str(r["tok"]), "preset": "tiny", "max_position_embeddings": 128},
           "data": {"sources": [{"name": "ops", "store": str(r["tokens"]), "weight": 1.0}], "seq_len": 32,
                    "heldout_rows": 2, "max_domain_ratio": 1.0},
           "train": {"max_steps": 50, "batch_size": 2, "micro_batch_size": 2, "precision": "fp32"},
           "log": {"every": 1, "progress": False, "tensorboard": False}, "checkpoint": {"every": 0}}
    (t / "pt.yaml").write_text(yaml.safe_dump(cfg))
    _ok("train", "pt", t / "pt.yaml", "-o", r["pt"], "--set", "train.max_steps=2")
    return r


def test_every_stage_report_follows_the_contract(runs):
    stages, by_run = {}, {}
    for name, folder in runs.items():
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        assert report["status"] == "complete", name
        check_counts(report["stage"], report)  # raises if it does not add up
        c = report["counts"]
        assert isinstance(c["unit"], str) and c["in"] > 0, (name, c)
        assert c["kept"] + sum(c["filtered"].values()) + sum(c["rejected"].values()) == c["in"]
        assert yaml.safe_load((folder / "config.yaml").read_text())["stage"] == report["stage"]
        stages[report["stage"]] = by_run[name] = report
    assert set(stages) == {"ingest", "clean", "tokenizer-train", "tokenizer-expand", "chunk", "stats", "tokenize",
                           "train-pt"}
    # --set took effect, through the config each stage records
    assert json.loads((runs["tokens"] / "report.json").read_text())["counts"]["kept"] > 0
    assert yaml.safe_load((runs["chunk"] / "config.yaml").read_text())["max_tokens"] == 64
    assert by_run["chunk"]["max_chunk_tokens"] <= 64
    assert by_run["tok"]["requested_vocab_size"] == 600
    assert stages["tokenizer-expand"]["counts"]["kept"] <= 20
    assert stages["train-pt"]["steps"] == 2
    assert yaml.safe_load((runs["clean"] / "config.yaml").read_text())["steps"][-1]["threshold"] == 0.9
    # clean also accounts in characters of its input
    check_counts("clean", {"counts": by_run["clean"]["counts"], "chars": by_run["clean"]["chars"]})


def test_a_runs_config_yaml_can_be_given_back(runs, tmp_path):
    _ok("train", "pt", runs["pt"] / "config.yaml", "-o", tmp_path / "again", "--set", "train.max_steps=1")
    assert json.loads((tmp_path / "again" / "report.json").read_text())["steps"] == 1
    _ok("data", "clean", runs["ingest"] / "documents.jsonl", "-o", tmp_path / "clean2", "--config",
        runs["clean"] / "config.yaml", "--no-progress")
    first = (runs["clean"] / "clean.jsonl").read_bytes()
    assert (tmp_path / "clean2" / "clean.jsonl").read_bytes() == first


@pytest.mark.parametrize("args", [
    ("data", "ingest", EXAMPLE / "ops", "-o", "{t}/x"),
    ("data", "clean", EXAMPLE / "general", "-o", "{t}/x", "--preset", "pretrain"),
    ("data", "dedup", EXAMPLE / "general", "-o", "{t}/x"),
    ("data", "chunk", EXAMPLE / "general", "-o", "{t}/x", "--tokenizer", "{tok}"),
    ("data", "stats", EXAMPLE / "general", "-o", "{t}/x"),
    ("data", "tokenize", EXAMPLE / "general", "-o", "{t}/x", "--tokenizer", "{tok}"),
    ("tokenizer", "train", EXAMPLE / "general", "-o", "{t}/x"),
    ("tokenizer", "expand", "{tok}", "{tok}", "-o", "{t}/x"),
    ("train", "pt", "{pt}", "-o", "{t}/x"),
])
def test_unknown_set_key_is_a_strict_error_on_every_stage(runs, tmp_path, args):
    filled = [str(a).format(t=tmp_path, tok=runs["tok"], pt=runs["pt"] / "config.yaml") for a in args]
    result = _invoke(*filled, "--set", "bogus_key=1")
    assert result.exit_code != 0
    message = str(result.exception)
    assert "unknown key 'bogus_key' (from --set bogus_key=1)" in message, message
    assert not (tmp_path / "x" / "report.json").exists()


def test_counts_that_do_not_add_up_fail_the_stage_with_the_numbers(tmp_path):
    run = start_run(tmp_path / "out", "demo-stage", {})
    with pytest.raises(AccountingError, match=r"stage 'demo-stage'.*in 10 != kept 7 \+ filtered 1 \+ rejected 1"):
        run.finish({"counts": counts(10, 7, {"too short": 1}, {"bad json": 1})})
    assert not (tmp_path / "out" / "report.json").exists()
    assert "do not add up" in (tmp_path / "out" / "run.log").read_text()
    with pytest.raises(AccountingError, match="no 'counts' block"):
        start_run(tmp_path / "out2", "demo", {}).finish({"in": 3})


def test_the_check_holds_under_python_O(tmp_path):
    """No bare assert does the accounting: it still fails with assertions compiled out."""
    code = ("from danlu.runs import start_run, counts, AccountingError\n"
            f"run = start_run({str(tmp_path / 'o')!r}, 'x', {{}})\n"
            "try:\n    run.finish({'counts': counts(2, 2, {'dup': 1})})\nexcept AccountingError as e:\n"
            "    print('refused:', e)\n")
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "refused: stage 'x'" in out.stdout, out.stderr
