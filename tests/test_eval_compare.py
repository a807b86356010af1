"""compare: deltas equal the difference of the two runs' own results, McNemar counts equal the questions that
flipped, intervals behave, moved cases are ranked; `danlu eval CONFIG.yaml` (with a baseline) and
`danlu eval compare` end to end through the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from danlu.eval.stats import bootstrap_delta, mcnemar_exact
from test_eval_fixtures import assert_self_contained, corpus_texts, make_model, make_tokenizer, write_ceval, write_sft
from tokstore_helpers import write_docs
from train_fixtures import one_thread

_threads = pytest.fixture(autouse=True)(one_thread)


def test_mcnemar_and_bootstrap():
    assert mcnemar_exact(1, 9) == pytest.approx(2 * (1 + 10) / 2 ** 10)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(5, 5) == 1.0
    a = np.arange(50, dtype=float)
    assert bootstrap_delta(a, a, 200) == (0.0, 0.0)
    assert bootstrap_delta(a, a + 1.5, 200) == pytest.approx((1.5, 1.5))
    lo, hi = bootstrap_delta(np.zeros(40), np.r_[np.ones(20), np.zeros(20)], 2000, seed=1)
    assert lo < 0.5 < hi and lo > 0.2
    # ratio statistic (bits per byte): nats over bytes of the resampled items
    lo, hi = bootstrap_delta(np.full(10, 2.0), np.full(10, 3.0), 100, den_a=np.full(10, 4.0), den_b=np.full(10, 4.0))
    assert (lo, hi) == pytest.approx((0.25, 0.25))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    torch.set_num_threads(1)
    data = write_ceval(root / "ceval", n_val=8, n_dev=2)
    tok = make_tokenizer(root / "tok", corpus_texts(data))
    m1 = make_model(root / "v1", tok, init=0.5, seed=1)
    m2 = make_model(root / "v2", tok, init=0.5, seed=2)
    write_docs(root / "held" / "ops.jsonl", 6, source="ops", max_words=50)
    write_docs(root / "held" / "general.jsonl", 4, source="general", seed=5, max_words=50)
    sft = write_sft(root / "sft" / "test.jsonl", [("qa", "怎么安装软件包？", "用 apt install 命令"),
                                                  ("qa", "How to list sockets?", "Use ss -l"),
                                                  ("ops", "重启服务用什么？", "systemctl restart")])
    return root, data, m1, m2, sft


def _config(root, data, sft, model, out, baseline=None) -> dict:
    cfg = {"model": str(model), "out": str(out), "runtime": {"device": "cpu"},
           "ppl": {"data": [str(root / "held")], "max_length": 64, "stride": 32},
           "mcq": {"data": [str(data)], "k_shot": 2},
           "gen": {"data": [str(sft)], "generation": {"max_new_tokens": 6}}}
    if baseline:
        cfg["baseline"] = str(baseline)
    return cfg


def test_eval_config_then_compare_with_baseline(world, tmp_path):
    from danlu.cli import app

    root, data, m1, m2, sft = world
    runner = CliRunner()
    for model, base in ((m1, None), (m2, tmp_path / "v1")):
        cfg_file = tmp_path / f"{model.name}.yaml"
        cfg_file.write_text(yaml.safe_dump(_config(root, data, sft, model, tmp_path / model.name, base)),
                            encoding="utf-8")
        res = runner.invoke(app, ["eval", str(cfg_file), "--no-progress"])
        assert res.exit_code == 0, res.output
        assert "eval-mcq: questions in=16 kept=16" in res.output and "bits_per_byte=" in res.output
    assert "eval-compare: suites in=3 kept=3" in res.output

    cmp = json.loads((tmp_path / "v2" / "compare" / "results.json").read_text(encoding="utf-8"))
    assert [r["name"] for r in cmp["runs"]] == ["v1", "v2"]
    mcq = cmp["suites"]["mcq"][0]
    r1 = json.loads((tmp_path / "v1" / "mcq" / "results.json").read_text(encoding="utf-8"))
    r2 = json.loads((tmp_path / "v2" / "mcq" / "results.json").read_text(encoding="utf-8"))
    overall = next(r for r in mcq["rows"] if (r["group"], r["metric"]) == ("(all)", "acc"))
    assert overall["delta"] == pytest.approx(r2["overall"]["acc"] - r1["overall"]["acc"])
    q1 = {json.loads(x)["id"]: json.loads(x) for x in open(tmp_path / "v1" / "mcq" / "questions.jsonl")}
    q2 = {json.loads(x)["id"]: json.loads(x) for x in open(tmp_path / "v2" / "mcq" / "questions.jsonl")}
    better = sum(not q1[i]["letter"]["correct"] and q2[i]["letter"]["correct"] for i in q1)
    worse = sum(q1[i]["letter"]["correct"] and not q2[i]["letter"]["correct"] for i in q1)
    assert (overall["better"], overall["worse"], overall["paired"]) == (better, worse, 16)
    assert overall["mcnemar_p"] == pytest.approx(mcnemar_exact(worse, better))
    assert overall["better"] - overall["worse"] == round(overall["delta"] * 16)
    lo, hi = overall["ci"]
    assert lo <= overall["delta"] <= hi
    assert any(r["group"] == "category: STEM" for r in mcq["rows"])

    ppl = cmp["suites"]["ppl"][0]
    p1 = json.loads((tmp_path / "v1" / "ppl" / "results.json").read_text(encoding="utf-8"))["sources"]
    p2 = json.loads((tmp_path / "v2" / "ppl" / "results.json").read_text(encoding="utf-8"))["sources"]
    for src in ("ops", "general", "(all)"):
        row = next(r for r in ppl["rows"] if (r["group"], r["metric"]) == (src, "bits_per_byte"))
        assert row["delta"] == pytest.approx(p2[src]["bits_per_byte"] - p1[src]["bits_per_byte"])
        assert row["ci"][0] <= row["delta"] <= row["ci"][1]

    cases = [json.loads(x) for x in open(tmp_path / "v2" / "compare" / "cases.jsonl", encoding="utf-8")]
    mc = [c for c in cases if c["suite"] == "mcq"]
    ups = [c["delta"] for c in mc if c["direction"] == "better"]
    downs = [c["delta"] for c in mc if c["direction"] == "worse"]
    assert ups == sorted(ups, reverse=True) and all(d > 0 for d in ups)
    assert downs == sorted(downs) and all(d < 0 for d in downs) and ups and downs
    # for ppl lower is better: a "better" document has a lower bits per byte
    assert all(c["delta"] < 0 for c in cases if c["suite"] == "ppl" and c["direction"] == "better")
    assert_self_contained((tmp_path / "v2" / "compare" / "index.html").read_text(encoding="utf-8"))

    # the stand-alone command gives the same rows
    res = runner.invoke(app, ["eval", "compare", str(tmp_path / "v1"), str(tmp_path / "v2"), "-o",
                              str(tmp_path / "cmp2"), "--set", "top_cases=3"])
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "cmp2" / "results.json").read_text(encoding="utf-8"))
    assert again["suites"]["mcq"][0]["rows"] == mcq["rows"]
    assert len([c for c in again["suites"]["mcq"][0]["cases"] if c["direction"] == "better"]) <= 3


def test_compare_warns_on_different_data_and_needs_two_runs(world, tmp_path):
    from danlu.eval.compare import compare_runs
    from danlu.eval.config import McqConfig
    from danlu.eval.mcq import run_mcq

    root, data, m1, m2, sft = world
    run_mcq(m1, tmp_path / "a", McqConfig(data=[str(data)], k_shot=2, methods=["letter"]), progress=False)
    run_mcq(m2, tmp_path / "b", McqConfig(data=[str(data)], k_shot=2, methods=["letter"], max_questions=4),
            progress=False)
    rep = compare_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "c")
    assert not any("different data" in w for w in rep["warnings"])  # same files; b scored fewer of them
    res = json.loads((tmp_path / "c" / "results.json").read_text(encoding="utf-8"))["suites"]["mcq"][0]
    assert res["paired_items"] == 8 and res["only_a"] == 8
    other = write_ceval(tmp_path / "other", n_val=3, n_dev=2, seed=9)
    run_mcq(m2, tmp_path / "d", McqConfig(data=[str(other)], k_shot=2, methods=["letter"]), progress=False)
    rep = compare_runs([tmp_path / "a", tmp_path / "d"], tmp_path / "e")
    assert any("scored different data" in w for w in rep["warnings"])
    with pytest.raises(ValueError, match="at least two runs"):
        compare_runs([tmp_path / "a"], tmp_path / "f")
    with pytest.raises(FileNotFoundError, match="no finished eval suite"):
        compare_runs([tmp_path / "a", root / "held"], tmp_path / "g")
    assert not math.isnan(rep["summary"].get("mcq_acc_delta", 0.0))


def test_example_configs_validate():
    from pathlib import Path

    from danlu.config import build_config, load_yaml
    from danlu.eval.config import EvalConfig

    examples = sorted((Path(__file__).resolve().parents[1] / "examples").glob("eval-*.yaml"))
    assert len(examples) >= 3
    for p in examples:
        cfg = build_config(EvalConfig, load_yaml(p, stage="eval"), source=str(p))
        assert any(getattr(cfg, s) is not None for s in ("ppl", "mcq", "gen", "judge", "diagnostics"))
