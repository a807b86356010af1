"""`danlu train rm` and `danlu score`: packed scores equal transformers' own score of each sequence alone, a reward
model learns a synthetic preference (correct vs corrupted answers) to >= 95% held-out accuracy, a LoRA reward
model scores through `danlu score` (pairs, SFT records, generation outputs) with correlations that match pandas',
and a reward model trained to prefer long answers is caught by the score-length correlation."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from danlu.config import validate
from danlu.train.config import RMConfig, ScoreConfig
from danlu.train.rm import rm
from pref_fixtures import WORDS, length_biased_pairs, pref_config, synthetic_pairs
from sft_fixtures import sft_record, tiny_model, write_jsonl
from train_fixtures import one_thread

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("rm")
    return {"root": root, "model": tiny_model(root / "qwen"),
            "data": write_jsonl(root / "pairs.jsonl", synthetic_pairs(24))}


def _cfg(base, records: Path | None = None, **sections) -> RMConfig:
    sections["data"] = {"seq_len": 256, **sections.get("data", {})}
    return validate(pref_config(base["model"], records or base["data"], **sections), RMConfig)


def _hf_score(model, ids) -> float:
    """transformers' own sequence-classification output (pooled at the last token) for one unpadded sequence."""
    with torch.no_grad():
        return float(model(input_ids=torch.as_tensor(np.asarray(ids, dtype=np.int64))[None]).logits[0, 0])


def test_packed_scores_equal_transformers_score_of_each_sequence_alone(base, tmp_path):
    from transformers import AutoTokenizer

    from danlu.train.pref_batches import units_batch
    from danlu.train.pref_data import PrefStore, prepare
    from danlu.train.rm import load_reward_model, sequence_scores

    tok = AutoTokenizer.from_pretrained(base["model"])
    prepare(tmp_path, tok, base["model"], tok.chat_template, _cfg(base).data, "pairs")
    store = PrefStore(tmp_path / "data" / "train")
    torch.manual_seed(0)
    model = load_reward_model(base["model"], pad_token_id=tok.pad_token_id).eval()
    for share in (False, True):  # the prompt laid out once per pair, or once per sequence
        batch = units_batch(list(range(store.n_units)), store, 256, packing=True, share_prompt=share)
        assert batch["input_ids"].shape[0] < store.n_units  # several pairs per row
        with torch.no_grad():
            got = sequence_scores(model, batch)
        expected = [_hf_score(model, store.doc(d)) for d in batch["seq_doc"].tolist()]
        assert got.tolist() == pytest.approx(expected, abs=1e-5)


def test_a_reward_model_learns_correct_vs_corrupted_answers_to_95_percent_held_out(base, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", synthetic_pairs(64, seed=3))
    held = write_jsonl(tmp_path / "val.jsonl", synthetic_pairs(40, seed=4))
    report = rm(_cfg(base, train, data={"val": [str(held)]}, train={"epochs": 2, "batch_size": 8},
                     optim={"lr": 2e-3}), tmp_path / "rm")
    h = report["heldout"]
    assert h["eval/accuracy"] >= 0.95, h
    assert h["eval/scores/margin"] > 0 and {"eval/qa/accuracy", "eval/chat/accuracy"} <= set(h)
    from transformers import AutoModelForSequenceClassification

    loaded = AutoModelForSequenceClassification.from_pretrained(report["model"])  # a plain HF reward model
    assert type(loaded).__name__ == "LlamaForSequenceClassification" and loaded.score.out_features == 1


def _answers_file(path: Path, n: int = 12, seed: int = 0) -> Path:
    """An `eval gen` answers.jsonl: prompt turns, the generated answer and the reference."""
    rng = random.Random(seed)
    rows = [{"id": f"g{i}", "task_type": "qa", "source": "ops",
             "messages": [{"role": "user", "content": " ".join(rng.choice(WORDS) for _ in range(4)) + "?"}],
             "answer": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 30))) + ".",
             "reference": " ".join(rng.choice(WORDS) for _ in range(8)) + "."} for i in range(n)]
    return write_jsonl(path, rows)


def test_a_lora_reward_model_scores_pairs_sft_records_and_generation_outputs(base, tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    from danlu.cli import app
    from danlu.train.rm import load_reward_model

    report = rm(_cfg(base, model={"method": "lora", "lora": {"r": 4, "alpha": 8}}, train={"max_steps": 2},
                     optim={"lr": 5e-3}), tmp_path / "rm")
    adapter = Path(report["model"])
    assert json.loads((adapter / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    gen = _answers_file(tmp_path / "answers.jsonl")
    sft = write_jsonl(tmp_path / "sft.jsonl", [sft_record(0, "restart nginx?", "systemctl restart nginx"),
                                               {"id": "bad", "messages": [{"role": "user", "content": "no answer"}],
                                                "task_type": "qa"}])
    res = CliRunner().invoke(app, ["score", str(tmp_path / "rm"), str(base["data"]), str(gen), str(sft), "-o",
                                   str(tmp_path / "score"), "--no-progress"])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "score" / "report.json").read_text())
    assert out["counts"] == {"unit": "records", "in": 24 + 12 + 2, "kept": 37, "filtered": {}, "rejected": {
        "no answer to score: the record must end with an assistant turn or carry an 'answer'": 1}}
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "score" / "scores.jsonl").read_text().splitlines())}
    assert {"chosen_score", "rejected_score"} <= set(rows["p0"])
    assert {"answer_score", "reference_score"} <= set(rows["g0"])
    # each score equals transformers' own score of the sequence alone, the adapter merged into its base
    from transformers import AutoTokenizer

    from danlu.train.pref_data import _rendered_sequence

    tok = AutoTokenizer.from_pretrained(adapter)
    model = load_reward_model(adapter, pad_token_id=tok.pad_token_id).eval()
    g0 = json.loads(gen.read_text().splitlines()[0])
    ids, _ = _rendered_sequence(tok, g0["messages"], {"role": "assistant", "content": g0["answer"]}, None, None)
    assert rows["g0"]["answer_score"] == pytest.approx(_hf_score(model, ids), abs=1e-5)
    # the correlation with length, recomputed with pandas from scores.jsonl
    flat = [(r[f"{n}_score"], r[f"{n}_tokens"]) for r in rows.values() for n in ("answer", "reference", "chosen",
                                                                                   "rejected") if f"{n}_score" in r]
    df = pd.DataFrame(flat, columns=["score", "tokens"])
    assert out["by_task_type"]["(all)"]["answers"] == len(df) == 24 * 2 + 12 * 2 + 1
    assert out["spearman_length"] == pytest.approx(df["score"].corr(df["tokens"], method="spearman"), abs=1e-9)
    assert out["by_task_type"]["(all)"]["pearson_length"] == pytest.approx(df["score"].corr(df["tokens"]), abs=1e-9)
    pairs = [r for r in rows.values() if "chosen_score" in r]
    accuracy = np.mean([r["chosen_score"] > r["rejected_score"] for r in pairs])
    assert out["by_task_type"]["(all)"]["pair_accuracy"] == pytest.approx(accuracy)
    assert out["pair_accuracy"] == round(accuracy, 4)  # the headline figure


def test_a_reward_model_that_learned_length_is_caught_by_danlu_score(base, tmp_path):
    """Trained on pairs whose chosen answer is always the longer one, the reward model scores new answers of
    random words by their length: danlu score measures the correlation and warns."""
    from danlu.train.score import score

    train = write_jsonl(tmp_path / "biased.jsonl", length_biased_pairs(48))
    rm(_cfg(base, train, train={"epochs": 2, "batch_size": 8}, optim={"lr": 2e-3}), tmp_path / "rm")
    report = score(tmp_path / "rm", tmp_path / "score", ScoreConfig(data=[str(_answers_file(tmp_path / "a.jsonl",
                                                                                            n=30, seed=9))]),
                   progress=False)
    assert report["spearman_length"] > 0.7
    assert any("the scores follow answer length" in w for w in report["warnings"])
