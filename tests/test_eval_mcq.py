"""mcq: danlu's choices equal EleutherAI lm-evaluation-harness's on the same tiny model, data and prompt; the shared
k-shot prefix cache changes nothing; the benchmark formats, subject names and accounting."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from danlu.eval.config import McqConfig
from danlu.eval.mcq import FORMATS, prompt_format, run_mcq, text_prompt
from danlu.eval.mcq_data import builtin_subjects, load_mcq
from test_eval_fixtures import (SUBJECTS, assert_self_contained, corpus_texts, make_model, make_tokenizer,
                                write_ceval)
from train_fixtures import one_thread

_threads = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """C-Eval-layout data, a BOS-adding tokenizer trained on it, and a tiny Llama whose large random weights make
    its choices differ clearly between questions (an untrained small-init model gives near-ties)."""
    root = tmp_path_factory.mktemp("mcq")
    torch.set_num_threads(1)
    data = write_ceval(root / "ceval", n_val=6, n_dev=3)
    tok = make_tokenizer(root / "tok", corpus_texts(data))
    model = make_model(root / "model", tok, init=0.5, seed=1)
    return root, data, model


def lm_eval_task(name: str, subject: str, zh_name: str, data: Path, method: str, delimiter: str) -> dict:
    """A local lm-eval task on the same CSVs whose prompt is danlu's C-Eval prompt."""
    task = {"task": name, "dataset_path": "csv",
            "dataset_kwargs": {"data_files": {"validation": str(data / "val" / f"{subject}_val.csv"),
                                              "dev": str(data / "dev" / f"{subject}_dev.csv")}},
            "validation_split": "validation", "fewshot_split": "dev", "fewshot_config": {"sampler": "first_n"},
            "output_type": "multiple_choice", "target_delimiter": delimiter, "fewshot_delimiter": "\n\n",
            "description": f"以下是中国关于{zh_name}考试的单项选择题，请选出其中的正确答案。\n\n",
            "doc_to_target": "{{['A', 'B', 'C', 'D'].index(answer)}}",
            "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")]}
    if method == "letter":
        task["doc_to_text"] = "{{question.strip()}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\n答案："
        task["doc_to_choice"] = ["A", "B", "C", "D"]
    else:
        task["doc_to_text"] = "{{question.strip()}}\n答案："
        task["doc_to_choice"] = "{{[A|string|trim, B|string|trim, C|string|trim, D|string|trim]}}"
    return task


@pytest.mark.slow
def test_choices_equal_lm_eval(bench, tmp_path, monkeypatch):
    """Per question, danlu's letter-softmax choice equals lm-eval's acc over choices A-D, and danlu's cloze
    choices equal lm-eval's acc / acc_norm over the option texts, for both answer delimiters."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(k, "1")
    root, data, model = bench
    names = builtin_subjects()["ceval"]
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    runs = {"nodelim": ("", ["letter", "cloze"]), "space": (" ", ["letter"])}
    tasks = []
    for tag, (delim, methods) in runs.items():
        for s in SUBJECTS:
            for m in methods:
                t = lm_eval_task(f"danlu_{tag}_{m}_{s}", s, names[s]["name"], data, m, delim)
                (tasks_dir / f"{t['task']}.yaml").write_text(yaml.safe_dump(t, allow_unicode=True), encoding="utf-8")
                tasks.append(t["task"])
    res = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model},dtype=float32", tasks=tasks,
                                  num_fewshot=2, log_samples=True, batch_size=4, device="cpu",
                                  task_manager=TaskManager(include_path=str(tasks_dir)))

    mcq_data = load_mcq([str(data)], k_shot=2)
    subjects = {s.key: s for s in mcq_data.subjects}
    letters_seen = set()
    for tag, (delim, methods) in runs.items():
        out = tmp_path / f"danlu-{tag}"
        run_mcq(model, out, McqConfig(data=[str(data)], k_shot=2, delimiter=delim, methods=methods), progress=False)
        ours = {json.loads(x)["id"]: json.loads(x) for x in open(out / "questions.jsonl", encoding="utf-8")}
        for s in SUBJECTS:
            for m in methods:
                samples = res["samples"][f"danlu_{tag}_{m}_{s}"]
                assert len(samples) == 6
                for smp in samples:
                    q = ours[f"{s}/{smp['doc_id']}"]
                    # the same prompt text and continuations
                    ctx, cont = smp["arguments"][0]
                    question = subjects[s].questions[smp["doc_id"]]
                    assert ctx == text_prompt(subjects[s], question, prompt_format("ceval", delim), m)
                    assert cont == delim + ("A" if m == "letter" else question.options[0].strip())
                    lls = [r[0] for r in smp["filtered_resps"]]
                    theirs = "ABCD"[max(range(4), key=lambda i: lls[i])]
                    assert q[m]["choice"] == theirs, (tag, m, q["id"], q[m], lls)
                    assert [q[m]["logprobs"][x] for x in "ABCD"] == pytest.approx(lls, abs=2e-3)
                    assert float(q[m]["correct"]) == smp["acc"]
                    if m == "cloze":
                        assert float(q[m]["correct_norm"]) == smp["acc_norm"]
                    letters_seen.add(q[m]["choice"])
    assert len(letters_seen) >= 3  # the comparison means something: not "always A"


def test_shared_prefix_cache_equals_no_cache(bench):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from danlu.eval.mcq import prompt_format, subject_requests
    from danlu.eval.scoring import common_prefix, score_requests

    root, data, model_dir = bench
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    sub = load_mcq([str(data)], k_shot=3).subjects[0]
    for method in ("letter", "cloze"):
        reqs = subject_requests(tok, sub, prompt_format("ceval"), method, chat=False)
        assert common_prefix([r.context for r in reqs]) > 0.6 * min(len(r.context) for r in reqs)  # the k-shot prefix
        cached = score_requests(model, reqs, batch_size=5, shared_prefix=True)
        plain = score_requests(model, reqs, batch_size=1, shared_prefix=False)
        assert [s.logprob for s in cached] == pytest.approx([s.logprob for s in plain], abs=1e-4)
        assert [s.greedy for s in cached] == [s.greedy for s in plain]


def test_chat_template_mode(bench, tmp_path):
    """Chat models: the examples are user/assistant turns rendered by the model's template; the letter is
    scored right after the assistant header, and caching the shared turns changes nothing."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from danlu.eval.mcq import chat_messages, prompt_format, subject_requests
    from danlu.eval.scoring import score_requests
    from danlu.tokenizer.chat import render_prompt

    root, data, model_dir = bench
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    sub = load_mcq([str(data)], k_shot=2).subjects[0]
    f = prompt_format("ceval")
    msgs = chat_messages(sub, sub.questions[0], f, "letter")
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    assert msgs[0]["content"].startswith("以下是中国关于计算机网络考试") and msgs[1]["content"] == sub.dev[0].answer
    reqs = subject_requests(tok, sub, f, "letter", chat=True)
    assert list(reqs[0].context) == render_prompt(tok, msgs)
    assert reqs[0].context[-1] == tok.convert_tokens_to_ids("<|assistant|>")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    a = score_requests(model, reqs, batch_size=8)
    b = score_requests(model, reqs, batch_size=3, shared_prefix=False)
    assert [s.logprob for s in a] == pytest.approx([s.logprob for s in b], abs=1e-4)
    rep = run_mcq(model_dir, tmp_path / "chat", McqConfig(data=[str(data)], k_shot=2, chat=True, methods=["letter"]),
                  progress=False)
    assert rep["counts"]["kept"] == 12 and 0 <= rep["results"]["acc"] <= 1


def _write(path: Path, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_formats_subject_names_and_accounting(bench, tmp_path):
    root, data, model = bench
    # CMMLU: unnamed index column, Question/Answer headers, dev/ and test/ without split suffix
    cm = tmp_path / "cmmlu"
    head = ["", "Question", "A", "B", "C", "D", "Answer"]
    _write(cm / "dev" / "agronomy.csv", [head, ["0", "示例题", "甲", "乙", "丙", "丁", "B"]])
    _write(cm / "test" / "agronomy.csv", [head, ["0", "题一", "甲", "乙", "丙", "丁", "C"],
                                          ["1", "题二", "甲", "乙", "丙", "丁", "x"],
                                          ["2", "", "甲", "乙", "丙", "丁", "A"]])
    d = load_mcq([str(cm)], k_shot=5)
    assert d.format == "cmmlu" and d.split == "test"
    sub = d.subjects[0]
    assert (sub.name, sub.categories) == ("农学", ["Other"]) and len(sub.dev) == 1
    assert [(r["line"], r["kind"]) for r in d.rejected] == [(3, "answer not A-D"), (4, "empty question")]
    p = text_prompt(sub, sub.questions[0], FORMATS["cmmlu"], "letter")
    assert p == ("以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n"
                 "题目：示例题\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案是：B\n\n"
                 "题目：题一\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案是：")
    # MMLU: no header; the instruction names the subject in English, the delimiter is a space
    mm = tmp_path / "mmlu"
    _write(mm / "dev" / "astronomy_dev.csv", [["What is a star?", "gas", "rock", "ice", "dust", "A"]])
    _write(mm / "test" / "astronomy_test.csv", [["What orbits Earth?", "Moon", "Sun", "Mars", "Venus", "A"],
                                                ["short row", "x"]])
    d = load_mcq([str(mm)], k_shot=1)
    assert d.format == "mmlu" and d.subjects[0].categories == ["STEM"] and d.rejected[0]["line"] == 2
    assert text_prompt(d.subjects[0], d.subjects[0].questions[0], FORMATS["mmlu"], "letter").startswith(
        "The following are multiple choice questions (with answers) about astronomy.\n\nWhat is a star?\n"
        "A. gas\nB. rock\nC. ice\nD. dust\nAnswer: A\n\nWhat orbits Earth?")
    # a user map renames and recategorises; C-Eval rows that cannot be questions are rejected with reasons
    bad = write_ceval(tmp_path / "bad", n_val=4, n_dev=2, bad_rows=True)
    umap = tmp_path / "map.yaml"
    umap.write_text("ceval:\n  computer_network: {name: 网络, categories: [Ops]}\n", encoding="utf-8")
    rep = run_mcq(model, tmp_path / "out", McqConfig(data=[str(bad)], k_shot=2, subject_map=str(umap),
                                                     max_questions=3, methods=["letter"]), progress=False)
    assert rep["counts"] == {"unit": "questions", "in": 12, "kept": 6, "filtered": {"max_questions": 2},
                             "rejected": {"answer not A-D": 2, "too few columns": 2}}
    res = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    assert res["subjects"]["computer_network"]["name"] == "网络" and "Ops" in res["categories"]
    assert res["overall"]["acc"] == pytest.approx(sum(v["acc"] * v["questions"] for v in res["subjects"].values()) / 6)
    rejects = [json.loads(x) for x in open(tmp_path / "out" / "rejects.jsonl", encoding="utf-8")]
    assert {(Path(r["path"]).name, r["line"]) for r in rejects} >= {("computer_network_val.csv", 6)}
    assert_self_contained((tmp_path / "out" / "index.html").read_text(encoding="utf-8"))
    assert rep["fingerprint"]["model"]["files"]["config.json"]["xxh3"]
    with pytest.raises(ValueError, match="no files for nope"):
        load_mcq([str(bad)], only=["nope"])


def test_subject_names_match_the_published_lists():
    """subjects.yaml's Chinese names are the ones in lm-eval's C-Eval and CMMLU task descriptions."""
    import re

    import lm_eval

    tasks = Path(lm_eval.__file__).parent / "tasks"
    ours = builtin_subjects()
    pattern = r"关于(.+?)的单项选择题"
    for fmt, folder in (("ceval", "ceval"), ("cmmlu", "cmmlu")):
        found = {}
        for f in (tasks / folder).glob("*.yaml"):
            cfg = yaml.safe_load(f.read_text(encoding="utf-8"))
            if isinstance(cfg, dict) and "description" in cfg and "dataset_name" in cfg:
                found[cfg["dataset_name"]] = re.search(pattern, cfg["description"]).group(1)
        assert len(found) == {"ceval": 52, "cmmlu": 67}[fmt]
        assert {k: v["name"] for k, v in ours[fmt].items()} == found
    assert len(ours["mmlu"]) == 57
    assert os.path.basename(str(tasks))  # lm-eval present
