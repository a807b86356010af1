"""ppl: exact figures on a model whose every prediction is uniform, windows that score every token once, batching
that changes nothing, per-source accounting, and bits per byte equal to lm-eval's on the same documents."""

from __future__ import annotations

import json
import math

import pytest
import torch

from danlu.eval.config import PplConfig
from danlu.eval.ppl import frame, run_ppl, windows
from test_eval_fixtures import assert_self_contained, corpus_texts, make_model, make_tokenizer
from tokstore_helpers import write_docs
from train_fixtures import one_thread

_threads = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppl")
    torch.set_num_threads(1)
    tok = make_tokenizer(root / "tok", corpus_texts(), bos=False)  # no BOS post-processor: danlu frames
    model = make_model(root / "model", tok, init=0.1, seed=3)
    from transformers import AutoModelForCausalLM

    uniform = AutoModelForCausalLM.from_pretrained(str(model))
    with torch.no_grad():
        uniform.get_input_embeddings().weight.zero_()  # tied: every logit is 0, every token costs ln V nats
    uniform.save_pretrained(root / "uniform")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(model)).save_pretrained(root / "uniform")
    return root, model, root / "uniform"


def test_windows_score_every_token_once():
    for n in (2, 5, 64, 65, 200, 777):
        for max_length, stride in ((64, 63), (64, 16), (64, 1), (8, 5)):
            ids = list(range(n))
            covered = []
            for k, w in enumerate(windows(0, ids, max_length, stride)):
                assert len(w.ids) <= max_length and w.score_from >= 1
                if k:  # later windows keep max_length - stride tokens of context (or all there is)
                    assert w.score_from >= max_length - stride or w.ids[0] == 0
                covered += w.ids[w.score_from:]
            assert covered == ids[1:]


def test_uniform_model_gives_exact_bits_per_byte(models, tmp_path):
    from transformers import AutoTokenizer

    root, _, uniform = models
    docs = write_docs(tmp_path / "held" / "ops.jsonl", 4, source="ops", max_words=150)
    tok = AutoTokenizer.from_pretrained(str(uniform))
    rep = run_ppl(uniform, tmp_path / "out", PplConfig(data=[str(tmp_path / "held")], max_length=32, stride=20),
                  progress=False)
    v = len(tok)
    tokens = sum(len(frame(tok, d["text"])[0]) - 1 for d in docs)
    nbytes = sum(len(d["text"].encode("utf-8")) for d in docs)
    m = rep["results"]["ops"]
    assert m["tokens"] == tokens and m["bytes"] == nbytes
    assert m["loss"] == pytest.approx(math.log(v), rel=1e-6)
    assert m["bits_per_byte"] == pytest.approx(tokens * math.log(v) / math.log(2) / nbytes, rel=1e-6)
    assert m["bits_per_char"] == pytest.approx(tokens * math.log2(v) / sum(len(d["text"]) for d in docs), rel=1e-6)


def test_one_window_equals_hf_loss_and_batching_changes_nothing(models, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, model_dir, _ = models
    docs = write_docs(tmp_path / "held" / "a.jsonl", 5, source="a", max_words=40, bad_lines={3: "{oops"})
    write_docs(tmp_path / "held" / "b.jsonl", 3, source="general", seed=9, max_words=30)
    big = run_ppl(model_dir, tmp_path / "big", PplConfig(data=[str(tmp_path / "held")], max_length=1024, stride=512,
                                                         batch_tokens=100000), progress=False)
    small = run_ppl(model_dir, tmp_path / "small", PplConfig(data=[str(tmp_path / "held")], max_length=1024,
                                                             stride=512, batch_tokens=8), progress=False)
    assert big["results"]["a"]["loss"] == pytest.approx(small["results"]["a"]["loss"], rel=1e-5)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ours = {json.loads(x)["id"]: json.loads(x) for x in open(tmp_path / "big" / "documents.jsonl")}
    for d in docs:
        ids, framed = frame(tok, d["text"])
        assert framed and ids[0] == tok.bos_token_id
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss
        assert ours[d["id"]]["nats"] == pytest.approx(float(loss) * (len(ids) - 1), rel=1e-5)
    assert big["counts"] == {"unit": "documents", "in": 9, "kept": 8, "filtered": {},
                             "rejected": {"invalid JSON at column #: Expecting property name enclosed in double "
                                          "quotes": 1}}
    assert set(big["results"]) == {"a", "general", "(all)"}
    allm = big["results"]["(all)"]
    assert allm["documents"] == 8
    assert allm["tokens"] == big["results"]["a"]["tokens"] + big["results"]["general"]["tokens"]
    assert_self_contained((tmp_path / "big" / "index.html").read_text(encoding="utf-8"))
    # long documents: strided windows give each token more context than cut-off windows would, never less
    strided = run_ppl(model_dir, tmp_path / "s", PplConfig(data=[str(tmp_path / "held")], max_length=16, stride=4),
                      progress=False)
    assert strided["results"]["(all)"]["tokens"] == allm["tokens"]


@pytest.mark.slow
def test_bits_per_byte_equals_lm_eval(models, tmp_path, monkeypatch):
    """lm-eval's loglikelihood_rolling (bits_per_byte) on the same documents and model."""
    import lm_eval
    import yaml
    from lm_eval.tasks import TaskManager

    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(k, "1")
    root, model_dir, _ = models
    write_docs(tmp_path / "held" / "ops.jsonl", 6, source="ops", max_words=80)
    (tmp_path / "tasks").mkdir()
    task = {"task": "danlu_rolling", "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(tmp_path / "held" / "ops.jsonl")}}, "test_split": "test",
            "output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
            "metric_list": [{"metric": "bits_per_byte", "aggregation": "bits_per_byte", "higher_is_better": False}]}
    (tmp_path / "tasks" / "danlu_rolling.yaml").write_text(yaml.safe_dump(task, allow_unicode=True), encoding="utf-8")
    res = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32",
                                  tasks=["danlu_rolling"], batch_size=2, device="cpu",
                                  task_manager=TaskManager(include_path=str(tmp_path / "tasks")))
    theirs = res["results"]["danlu_rolling"]["bits_per_byte,none"]
    ours = run_ppl(model_dir, tmp_path / "out", PplConfig(data=[str(tmp_path / "held")], max_length=4096,
                                                          stride=2048), progress=False)
    assert ours["results"]["ops"]["bits_per_byte"] == pytest.approx(theirs, rel=1e-5)
