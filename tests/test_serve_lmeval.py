"""lm-evaluation-harness scores a local multiple-choice task through `danlu serve` (its `local-completions`
model: echo + prompt logprobs over HTTP) and picks the same answers, with the same loglikelihoods, as its own
in-process `hf` model and as danlu's mcq suite (cloze method) on the same folder and prompts."""

from __future__ import annotations

import csv
import json
import random

import pytest

from serve_fixtures import ENGLISH, cached_serve_models
from train_fixtures import one_thread

from danlu.serve.server import ServerThread, serve_config

TASK = "danlu_serve_mcq"
N_DOCS = 16
# danlu mcq's MMLU prompt for a subject file named ops_test.csv, 0-shot, cloze: the instruction line, the
# question, "Answer:", then " " + the option's text as the continuation
INSTRUCTION = "The following are multiple choice questions (with answers) about ops.\n\n"


@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_thread()


def write_task(folder) -> None:
    """The same questions as lm-eval JSONL + task YAML and as an MMLU-layout CSV (test/ops_test.csv)."""
    rng = random.Random(3)
    rows = []
    for i in range(N_DOCS):
        question = " ".join(rng.choice(ENGLISH) for _ in range(rng.randint(3, 9)))
        choices = [" ".join(rng.choice(ENGLISH) for _ in range(rng.randint(1, 3))) for _ in range(4)]
        rows.append({"question": question, "choices": choices, "answer": i % 4})
    (folder / "mcq.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / "test").mkdir()
    with open(folder / "test" / "ops_test.csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([r["question"], *r["choices"], "ABCD"[r["answer"]]] for r in rows)
    instruction = json.dumps(INSTRUCTION)[1:-1]
    (folder / f"{TASK}.yaml").write_text(f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / 'mcq.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "{instruction}{{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
target_delimiter: " "
metric_list:
  - metric: acc
""", encoding="utf-8")


def run_lm_eval(model: str, model_args: str, task_dir) -> dict[int, list[float]]:
    """{doc id: loglikelihood of each choice}."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=[TASK], log_samples=True,
                                  task_manager=TaskManager(include_path=str(task_dir)), batch_size=4,
                                  random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
    return {s["doc_id"]: [r[0] for r in s["filtered_resps"]] for s in out["samples"][TASK]}


def picks(scores: dict[int, list[float]]) -> dict[int, int]:
    return {d: max(range(4), key=lambda c: (s[c], -c)) for d, s in scores.items()}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """lm-eval's local-completions through the server: (task folder, model folder, scores)."""
    models = cached_serve_models(tmp_path_factory)
    task_dir = tmp_path_factory.mktemp("lmeval-task")
    write_task(task_dir)
    folder = models["random"]
    with ServerThread(serve_config(folder, port=0, served_model_name="tiny")) as srv:
        # add_bos_token: <|bos|> first, as lm-eval's hf model and danlu mcq do (its API models leave it out)
        scores = run_lm_eval("local-completions",
                             f"model=tiny,base_url={srv.base_url}/completions,tokenizer_backend=huggingface,"
                             f"tokenizer={folder},max_length=200,num_concurrent=4,max_retries=1,add_bos_token=True",
                             task_dir)
        assert srv.engine.metrics.summary()["requests"] > 0  # the scores really came through the server
    return task_dir, folder, scores


@pytest.mark.slow
def test_lm_eval_through_the_server_matches_lm_eval_hf(served):
    task_dir, folder, scores = served
    local = run_lm_eval("hf", f"pretrained={folder},dtype=float32,device=cpu,max_length=200,add_bos_token=True",
                        task_dir)
    assert sorted(scores) == sorted(local) == list(range(N_DOCS))
    assert picks(scores) == picks(local)
    assert len(set(picks(scores).values())) > 1  # the task discriminates (not one answer everywhere)
    for d in scores:
        assert scores[d] == pytest.approx(local[d], abs=1e-4)


@pytest.mark.slow
def test_lm_eval_through_the_server_matches_danlu_mcq(served):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from danlu.eval.config import McqConfig
    from danlu.eval.mcq import score_subject
    from danlu.eval.mcq_data import load_mcq

    task_dir, folder, scores = served
    cfg = McqConfig(data=[str(task_dir)], format="mmlu", split="test", k_shot=0, methods=["cloze"])
    (subject,) = load_mcq(cfg.data, fmt="mmlu", split="test", k_shot=0).subjects
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    results = score_subject(model, AutoTokenizer.from_pretrained(str(folder)), subject, cfg, "mmlu")
    assert len(results) == N_DOCS
    assert {d: "ABCD".index(r["cloze"]["choice"]) for d, r in enumerate(results)} == picks(scores)
    for d, r in enumerate(results):
        assert [r["cloze"]["logprobs"][c] for c in "ABCD"] == pytest.approx(scores[d], abs=1e-4)
