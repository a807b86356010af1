"""`danlu train dpo`: packed per-sequence log-probs equal each sequence scored alone, the three reference modes
agree (precomputed == frozen copy, LoRA-disabled == frozen copy), DPO raises the held-out chosen-minus-rejected
margin, resume is exact, the data is accounted for (KTO records, identical pairs), KTO trains on unpaired data,
the loop averages an objective's extra metrics, DDP matches one process, and the CLI runs the examples."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from danlu.config import validate
from danlu.train.config import DPOConfig
from danlu.train.dpo import dpo
from pref_fixtures import kto_record, pref_config, pref_record, synthetic_pairs
from sft_fixtures import sft_record, tiny_model, write_jsonl
from train_fixtures import interrupted_after, one_thread

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("dpo")
    return {"root": root, "model": tiny_model(root / "qwen"),
            "data": write_jsonl(root / "pairs.jsonl", synthetic_pairs(24))}


def _cfg(base, records: Path | None = None, **sections) -> DPOConfig:
    sections["data"] = {"seq_len": 256, **sections.get("data", {})}
    return validate(pref_config(base["model"], records or base["data"], **sections), DPOConfig)


def _store(base, tmp_path, mode="pairs"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from danlu.train.pref_data import PrefStore, prepare

    tok = AutoTokenizer.from_pretrained(base["model"])
    prepare(tmp_path, tok, base["model"], tok.chat_template, _cfg(base).data, mode)
    model = AutoModelForCausalLM.from_pretrained(base["model"], dtype=torch.float32)
    return PrefStore(tmp_path / "data" / "train"), model


def _alone(model, store, doc: int) -> float:
    """A sequence's answer log-prob through the plain model, alone, with a full log-softmax."""
    ids, w = store.sequence(doc)
    ids = torch.as_tensor(ids.astype(np.int64))[None]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
    picked = logp.gather(1, ids[0, 1:, None]).squeeze(1)
    return float(picked[torch.as_tensor(np.asarray(w)[1:] > 0)].sum())


def test_packed_sequence_logps_equal_each_sequence_alone(base, tmp_path):
    from danlu.train.pref_batches import units_batch
    from danlu.train.pref_forward import sequence_logps

    store, model = _store(base, tmp_path)
    units = list(range(store.n_units))
    expected = [_alone(model, store, d) for d in range(len(store))]
    assert store.shares_prompt.all()  # every pair's two sequences start with the same prompt tokens
    positions = {}
    for packing in (True, False):
        for share in (False, True):
            batch = units_batch(units, store, 256, packing, share_prompt=share)
            with torch.no_grad():
                got = sequence_logps(model, batch)
            assert got.tolist() == pytest.approx([expected[d] for d in batch["seq_doc"].tolist()], abs=2e-4)
            rows = batch["input_ids"].shape[0]
            assert rows < store.n_units if packing else rows == store.n_units  # packed: several pairs per row
            assert ("branch" in batch) == share
            positions[packing, share] = int((batch["input_ids"] != store.pad_id).sum())
            # a pair's chosen and rejected are consecutive sequences of one row
            docs = batch["seq_doc"].tolist()
            assert sorted(docs) == list(range(len(store)))
            assert all(docs[i] + 1 == docs[i + 1] for i in range(0, len(docs), 2))
    # sharing the prompt saves exactly one prompt per pair
    saved = int(store.prompt_len[0::2].sum())
    assert positions[True, False] - positions[True, True] == saved


def test_lora_disabled_reference_equals_a_frozen_copy(base, tmp_path):
    from danlu.model.adapters import add_lora
    from danlu.train.config import LoraConfig
    from danlu.train.pref_batches import units_batch
    from danlu.train.pref_forward import reference_live, sequence_logps

    store, model = _store(base, tmp_path)
    frozen = copy.deepcopy(model)
    policy = add_lora(model, LoraConfig(r=4, alpha=8))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)  # a trained adapter: the policy now differs from its base
    batch = units_batch(list(range(store.n_units)), store, 256, True)
    with torch.no_grad():
        live_policy = sequence_logps(policy, batch)
    off = reference_live("disable_adapter", policy, None, batch)
    copied = reference_live("copy", policy, frozen, batch)
    assert torch.allclose(off, copied, atol=1e-5)
    assert (live_policy - copied).abs().max() > 1e-2
    assert policy.training and not off.requires_grad  # the reference ran in eval mode, the policy is back in train


def _metric_lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x
            and '"event"' not in x]


@pytest.mark.parametrize("method,live", [("full", "copy"), ("lora", "disable_adapter")])
def test_precomputed_reference_equals_the_live_reference(base, tmp_path, method, live):
    sections = dict(model={"method": method}, train={"max_steps": 3}, data={"val_size": 4})
    pre = dpo(_cfg(base, dpo={"reference": "precompute"}, **sections), tmp_path / "pre")
    run = dpo(_cfg(base, dpo={"reference": live}, **sections), tmp_path / "live")
    a, b = _metric_lines(tmp_path / "pre"), _metric_lines(tmp_path / "live")
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy"):
            assert x[key] == pytest.approx(y[key], abs=1e-5), key
    # before the first update the policy is the reference: DPO's loss is log 2, every reward 0
    assert a[0]["loss"] == pytest.approx(math.log(2), abs=1e-6) and abs(a[0]["rewards/margin"]) < 1e-6
    assert a[-1]["rewards/margin"] != 0  # and then it trains
    assert pre["heldout"] == pytest.approx(run["heldout"], rel=1e-6, abs=1e-5)
    assert (tmp_path / "pre" / "data" / "ref" / "ref.json").exists()
    assert not (tmp_path / "live" / "data" / "ref").exists()


def test_stored_reference_log_probs_are_the_starting_models(base, tmp_path):
    from danlu.train.pref_data import PrefStore

    dpo(_cfg(base, train={"max_steps": 1}), tmp_path / "run")
    store = PrefStore(tmp_path / "run" / "data" / "train")
    _, model = _store(base, tmp_path / "plain")
    stored = np.load(tmp_path / "run" / "data" / "ref" / "train.npy")
    assert stored.tolist() == pytest.approx([_alone(model, store, d) for d in range(len(store))], abs=2e-4)


def test_dpo_raises_the_held_out_chosen_minus_rejected_margin(base, tmp_path):
    """Trained on pairs of a correct answer vs the same answer corrupted, the model prefers the correct answer of
    pairs it never saw: their log-prob margin (chosen - rejected) rises above the starting model's."""
    from danlu.train.pref_data import PrefStore

    data = write_jsonl(tmp_path / "train.jsonl", synthetic_pairs(32, seed=1))
    held = write_jsonl(tmp_path / "val.jsonl", synthetic_pairs(12, seed=2))
    report = dpo(_cfg(base, data, data={"val": [str(held)]}, train={"epochs": 2, "batch_size": 8},
                      optim={"lr": 2e-3}, dpo={"beta": 0.1}), tmp_path / "run")
    ref = np.load(tmp_path / "run" / "data" / "ref" / "val.npy")
    assert len(PrefStore(tmp_path / "run" / "data" / "val")) == 24
    before = float(np.mean(ref[0::2] - ref[1::2]))
    h = report["heldout"]
    after = h["eval/logps/chosen"] - h["eval/logps/rejected"]
    assert after > before + 5  # nats per pair
    assert h["eval/rewards/margin"] == pytest.approx(0.1 * (after - before), rel=1e-4)
    assert h["eval/rewards/accuracy"] >= 0.9 and h["eval/loss"] < math.log(2)
    assert {"eval/qa/rewards/accuracy", "eval/chat/rewards/accuracy"} <= set(h)  # per task_type


def test_resume_equals_the_uninterrupted_run(base, tmp_path, monkeypatch):
    sections = dict(train={"epochs": 2}, checkpoint={"every": 2})
    full = dpo(_cfg(base, **sections), tmp_path / "full")
    interrupted_after(monkeypatch, 2, lambda: dpo(_cfg(base, **sections), tmp_path / "cut"))
    resumed = dpo(_cfg(base, **sections), tmp_path / "cut", resume=True)
    assert resumed["steps"] == full["steps"] > 2
    def figures(out):
        return [(x["step"], x["loss"], x["rewards/margin"], x["rewards/accuracy"]) for x in _metric_lines(out)]

    assert figures(tmp_path / "cut") == figures(tmp_path / "full")  # bit for bit, the same steps


def test_data_accounting_kto_records_identical_pairs_and_sft_records(base, tmp_path):
    records = synthetic_pairs(8) + [
        pref_record(100, "same?", "identical answer", "identical answer"),
        kto_record(101, "good?", "a fine answer", True),
        sft_record(102, "plain sft", "an sft answer"),
    ]
    data = write_jsonl(tmp_path / "mixed.jsonl", records)
    report = dpo(_cfg(base, data, train={"max_steps": 1}), tmp_path / "pairs")
    c = report["counts"]
    assert c["in"] == 11 and c["kept"] == 8
    assert c["rejected"] == {"chosen and rejected are identical": 1}
    assert set(c["filtered"]) == {"a KTO record (one answer judged good or bad): train it with dpo.loss: kto",
                                  "not preference data (an SFT record)"}
    rejects = [json.loads(x) for x in (tmp_path / "pairs" / "data" / "rejects.jsonl").read_text().splitlines()]
    assert {r.get("id") for r in rejects} >= {"k101", "r102"}
    # KTO: pairs are split into a desirable and an undesirable record, KTO records are used as they are
    kto = dpo(_cfg(base, data, train={"max_steps": 2}, dpo={"loss": "kto"}), tmp_path / "kto")
    assert kto["counts"]["kept"] == 9 and kto["records"]["train"] == 9
    assert json.loads((tmp_path / "kto" / "data" / "report.json").read_text())["sequences"]["train"] == 17
    lines = _metric_lines(tmp_path / "kto")
    assert lines[0]["loss"] == pytest.approx(0.5, abs=1e-6)  # policy == reference: 1 - sigma(0) per record
    assert {"rewards/desirable", "rewards/undesirable", "kl"} <= set(lines[-1])


def test_kto_precomputed_equals_copy_and_reference_free_losses_need_no_reference(base, tmp_path):
    pre = dpo(_cfg(base, train={"max_steps": 2}, dpo={"loss": "kto"}), tmp_path / "pre")
    live = dpo(_cfg(base, train={"max_steps": 2}, dpo={"loss": "kto", "reference": "copy"}), tmp_path / "live")
    assert pre["final_loss"] == pytest.approx(live["final_loss"], abs=1e-5)
    for loss in ("simpo", "orpo"):
        r = dpo(_cfg(base, train={"max_steps": 1}, dpo={"loss": loss}), tmp_path / loss)
        assert r["reference"] is None and not (tmp_path / loss / "data" / "ref").exists()
        assert math.isfinite(r["final_loss"])


def test_the_loop_averages_an_objectives_extra_metrics_over_the_logging_window(tmp_path):
    """MetricSums: (sum, count) pairs added by loss_sum are summed over the window's steps and logged as sum/count;
    the loss is untouched."""
    from danlu.train.loop import LoopConfig, train
    from danlu.train.objectives import MetricSums, Objective, causal_lm
    from train_fixtures import ListStream, pack_rows, random_docs, tiny_llama

    rows = pack_rows(random_docs(40), 32)
    plain = causal_lm(doc_mask=True)
    metrics = MetricSums()

    def loss_sum(model, batch):
        metrics.add("probe/targets", plain.count(batch), 1)  # the mean target count per micro-batch
        return plain.loss_sum(model, batch)

    with_metrics = Objective("probe", plain.count, loss_sum, metrics)
    seen: list[dict] = []
    cfg = LoopConfig(max_steps=4, grad_accum=2, log_every=2, progress=False)
    runs = {}
    for name, objective in (("plain", plain), ("metrics", with_metrics)):
        model = tiny_llama()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        lines: list[dict] = []
        runs[name] = train(model, opt, sched, ListStream(rows, 2), objective, cfg, sink=lines.append)
        seen.append([m for m in lines if "loss" in m])
    assert runs["plain"]["losses"] == runs["metrics"]["losses"]
    stream = ListStream(rows, 2)
    counts = [plain.count(next(stream)) for _ in range(8)]  # 4 steps x 2 micro-batches
    logged = [m["probe/targets"] for m in seen[1]]
    assert logged == pytest.approx([np.mean(counts[:4]), np.mean(counts[4:])])
    assert all("probe/targets" not in m for m in seen[0])


def test_examples_validate_and_the_cli_trains(base, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from danlu.cli import app
    from danlu.config import load_config

    examples = sorted((REPO / "examples").glob("dpo-*.yaml"))
    assert len(examples) >= 3
    for path in examples:
        load_config(path, DPOConfig, stage="train-dpo")
    cfg = yaml.safe_load((REPO / "examples" / "dpo-lora.yaml").read_text())
    cfg["model"]["path"] = str(base["model"])
    cfg["data"] = {"train": [str(base["data"])], "seq_len": 256}
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["train", "dpo", str(path), "-o", str(tmp_path / "run"), "--set", "train.max_steps=1",
                                   "--set", "log.tensorboard=false", "--set", "log.progress=false"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["stage"] == "train-dpo" and report["steps"] == 1 and report["method"] == "lora"
    lineage = json.loads((tmp_path / "run" / "model" / "lineage.json").read_text())
    assert lineage["stage"] == "train-dpo" and lineage["loss"] == cfg["dpo"]["loss"]


@pytest.mark.slow
def test_two_processes_ddp_match_one_process(base, tmp_path):
    import os
    import subprocess
    import sys

    import yaml

    cfg = pref_config(base["model"], base["data"], data={"seq_len": 256, "val_size": 4},
                      train={"epochs": 1, "batch_size": 4, "micro_batch_size": 2})
    single = dpo(validate(cfg, DPOConfig), tmp_path / "single")
    (tmp_path / "dpo.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "danlu.cli",
           "train", "dpo", str(tmp_path / "dpo.yaml"), "-o", str(tmp_path / "ddp"), "--set", "train.micro_batch_size=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "ddp" / "report.json").read_text())
    assert report["world_size"] == 2 and report["grad_accum"] == 1
    one, two = _metric_lines(tmp_path / "single"), _metric_lines(tmp_path / "ddp")
    assert len(one) == len(two) == single["steps"] > 1
    for x, y in zip(one, two):
        for key in ("loss", "rewards/margin", "rewards/accuracy", "length/chosen"):
            assert y[key] == pytest.approx(x[key], abs=1e-5)
    assert np.allclose(np.load(tmp_path / "ddp" / "data" / "ref" / "train.npy"),
                       np.load(tmp_path / "single" / "data" / "ref" / "train.npy"), atol=1e-5)
    assert report["heldout"] == pytest.approx(single["heldout"], abs=1e-5)


@pytest.mark.slow
def test_llamafactory_demo_pairs_and_kto_records_train_after_data_pref(tmp_path):
    """LF's dpo_en_demo, dpo_zh_demo and kto_en_demo through their dataset_info.json (`danlu data pref`), then two
    DPO steps on the pairs and two KTO steps on the folder: every record is kept or filtered for its length."""
    from danlu.data.sft.stage import preference_data

    corpus = REPO.parent / "shared" / "corpora" / "llamafactory"
    if not (corpus / "dataset_info.json").exists():
        pytest.skip(f"{corpus} not found: the LLaMA-Factory demo data lives in ../shared beside the checkout")
    imported = preference_data([corpus], tmp_path / "pref", datasets=["dpo_en_demo", "dpo_zh_demo", "kto_en_demo"],
                               task_type="qa", progress=False)
    assert imported["counts"]["kept"] == 900 and not imported["counts"]["rejected"]
    base = {"model": tiny_model(tmp_path / "qwen")}
    for loss, train in (("sigmoid", tmp_path / "pref" / "pref.jsonl"), ("kto", tmp_path / "pref")):
        r = dpo(_cfg(base, train, data={"seq_len": 1024}, train={"max_steps": 2}, dpo={"loss": loss}),
                tmp_path / loss)
        c = r["counts"]
        assert c["in"] == (600 if loss == "sigmoid" else 900) and not c["rejected"]
        assert set(c["filtered"]) <= {"longer than seq_len"} and c["kept"] > 50, c
        assert r["steps"] == 2 and math.isfinite(r["final_loss"])
