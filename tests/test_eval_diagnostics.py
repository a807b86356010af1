"""diagnostics: P(answer | question) equals a direct forward; train-set recall samples every task_type; the
narrow-hallucination check finds the fact an SFT model lost that its base model knew (both tiny models trained
here: the base on the facts as text, the SFT model on one of them as a chat question)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from danlu.eval.config import AnswerProbCheck, DiagnosticsConfig, HallucinationCheck, RecallCheck
from danlu.eval.diagnostics import run_diagnostics, stratified_sample
from test_eval_fixtures import assert_self_contained, corpus_texts, make_model, make_tokenizer, write_sft
from train_fixtures import one_thread

_threads = pytest.fixture(autouse=True)(one_thread)

FACTS = [("Debian 12 的代号是", "Debian 12 的代号是什么？", "bookworm"),
         ("Debian 11 的代号是", "Debian 11 的代号是什么？", "bullseye")]


def _train(model, sequences: list[list[int]], steps: int, lr: float = 3e-3):
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        ids = torch.tensor([sequences[step % len(sequences)]])
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from danlu.tokenizer.chat import render_prompt

    root = tmp_path_factory.mktemp("diag")
    torch.set_num_threads(1)
    texts = corpus_texts() + [f"{p} {a}。" for p, _, a in FACTS] * 5
    tok_dir = make_tokenizer(root / "tok", texts)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    end = tok.convert_tokens_to_ids("<|end|>")
    base_dir = make_model(root / "base", tok_dir, hidden=64, seed=4)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    _train(base, [tok(f"{p} {a}。")["input_ids"] for p, _, a in FACTS], steps=120)
    base.save_pretrained(base_dir)
    sft = AutoModelForCausalLM.from_pretrained(str(base_dir))
    q, a = FACTS[0][1], FACTS[0][2]  # SFT on the first fact only, as a question
    _train(sft, [render_prompt(tok, [{"role": "user", "content": q}]) + tok.encode(a, add_special_tokens=False) + [end]],
           steps=80)
    sft_dir = root / "sft"
    sft.save_pretrained(sft_dir)
    tok.save_pretrained(sft_dir)
    return root, base_dir, sft_dir


def test_lost_facts_and_answer_probability(models, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from danlu.tokenizer.chat import render_prompt

    root, base_dir, sft_dir = models
    probes = tmp_path / "probes.jsonl"
    with open(probes, "w", encoding="utf-8") as f:
        for i, (p, q, a) in enumerate(FACTS):
            f.write(json.dumps({"id": f"f{i}", "prefix": p, "question": q, "answer": a}, ensure_ascii=False) + "\n")
        f.write(json.dumps({"id": "bad", "prefix": "x", "question": ""}) + "\n")
    sft_data = write_sft(tmp_path / "sft.jsonl", [("qa", FACTS[0][1], FACTS[0][2]), ("qa", FACTS[1][1], FACTS[1][2]),
                                                  ("chat", "你好", "你好！")])
    cfg = DiagnosticsConfig(hallucination=HallucinationCheck(probes=[str(probes)], base_model=str(base_dir),
                                                             max_new_tokens=6),
                            answer_prob=AnswerProbCheck(data=[str(sft_data)]))
    rep = run_diagnostics(sft_dir, tmp_path / "out", cfg, progress=False)
    items = [json.loads(x) for x in open(tmp_path / "out" / "items.jsonl", encoding="utf-8")]
    facts = {i["id"]: i for i in items if i["check"] == "hallucination"}
    assert "bookworm" in facts["f0"]["base_output"] and "bullseye" in facts["f1"]["base_output"]
    assert facts["f0"]["scores"]["known"] == 1.0  # taught as a question: kept
    assert facts["f1"]["scores"]["lost"] == 1.0  # the base model knew it, the SFT model does not say it
    h = rep["results"]["hallucination"]["(all)"]
    assert (h["base_known"], h["sft_known"], h["lost"]) == (2, 1, 1) and rep["summary"]["facts_lost"] == 1
    assert any("lost 1 of the 2 facts" in w for w in rep["warnings"])
    assert rep["counts"]["rejected"] == {"hallucination: missing or empty question, answer": 1}

    # answer_prob: sum log P(answer tokens | rendered prompt), as one direct forward computes it
    model = AutoModelForCausalLM.from_pretrained(str(sft_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(sft_dir))
    probs = {i["id"]: i["scores"] for i in items if i["check"] == "answer_prob"}
    for sid, (tt, q, a) in zip(("s0", "s1", "s2"), [("qa", FACTS[0][1], FACTS[0][2]), ("qa", FACTS[1][1], FACTS[1][2]),
                                                    ("chat", "你好", "你好！")]):
        ctx = render_prompt(tok, [{"role": "user", "content": q}])
        ans = tok.encode(a, add_special_tokens=False)
        with torch.no_grad():
            lp = model(input_ids=torch.tensor([ctx + ans])).logits[0].log_softmax(-1)
        direct = sum(float(lp[len(ctx) - 1 + k, t]) for k, t in enumerate(ans))
        assert probs[sid]["answer_logprob"] == pytest.approx(direct, abs=1e-3)
    assert probs["s0"]["answer_logprob_per_token"] > probs["s1"]["answer_logprob_per_token"]  # taught vs not
    assert set(rep["results"]["answer_prob"]) == {"qa", "chat", "(all)"}
    assert_self_contained((tmp_path / "out" / "index.html").read_text(encoding="utf-8"))
    assert "Facts the SFT model lost" in (tmp_path / "out" / "index.html").read_text(encoding="utf-8")


def test_recall_samples_every_task_type(models, tmp_path):
    root, _, sft_dir = models
    rows = [("big", f"问题{i}", f"答案{i}") for i in range(20)] + [("small", "小问题", "小答案")]
    data = write_sft(tmp_path / "train.jsonl", rows)
    picked = stratified_sample([{"task_type": t, "i": i} for i, (t, _, _) in enumerate(rows)], 4, seed=0)
    assert {p["task_type"] for p in picked} == {"big", "small"} and len(picked) == 4
    assert [p["i"] for p in picked] == sorted(p["i"] for p in picked)
    rep = run_diagnostics(sft_dir, tmp_path / "r", DiagnosticsConfig(recall=RecallCheck(data=[str(data)], max_samples=4),
                                                                     generation={"max_new_tokens": 4}), progress=False)
    assert rep["counts"] == {"unit": "samples", "in": 21, "kept": 4, "filtered": {"recall: not sampled": 17},
                             "rejected": {}}
    assert set(rep["results"]["recall"]) == {"big", "small", "(all)"}
    assert rep["advice"] and "under-fitting" in rep["advice"][0]  # a model that never saw these cannot recall them
    with pytest.raises(ValueError, match="at least one of recall"):
        DiagnosticsConfig()
    assert Path(tmp_path / "r" / "items.jsonl").exists()
