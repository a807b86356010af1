"""gen and its metrics: BLEU equals sacrebleu with the right tokenisation, ROUGE equals reference implementations
(rouge-chinese for segmented Chinese, Google's rouge-score on English), exact match and label accuracy follow the
stated normalisation, and batched left-padded generation equals one prompt at a time."""

from __future__ import annotations

import json

import pytest
import torch

from danlu.eval import metrics
from test_eval_fixtures import assert_self_contained, corpus_texts, make_model, make_tokenizer, write_sft
from train_fixtures import one_thread

_threads = pytest.fixture(autouse=True)(one_thread)

ZH = [("安装软件包时需要先更新软件源，然后执行 apt install 命令。", "先更新软件源，再用 apt install 安装软件包。"),
      ("内核模块加载失败，请检查日志", "内核模块加载失败，请查看系统日志"),
      ("重启服务", "使用 systemctl restart 重启服务")]
EN = [("The cat sat on the mat.", "The cat is on the mat."),
      ("Use ss -l to list listening sockets", "Run ss -l to list the listening sockets"),
      ("apt update refreshes the package index", "apt update downloads the package lists")]


def test_bleu_equals_sacrebleu_with_zh_tokenisation():
    import sacrebleu

    hyps, refs = [h for h, _ in ZH], [r for _, r in ZH]
    score, tok = metrics.corpus_bleu(hyps, refs)
    assert tok == "zh" and score == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh").score)
    # 13a would see each unspaced Chinese run as one word: a different (and meaningless) number
    assert score != pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score)
    hyps, refs = [h for h, _ in EN], [r for _, r in EN]
    score, tok = metrics.corpus_bleu(hyps, refs)
    assert tok == "13a" and score == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert metrics.corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"])[0] == pytest.approx(100.0)
    assert metrics.sentence_bleu(EN[0][0], EN[0][1], "13a") == pytest.approx(
        sacrebleu.sentence_bleu(EN[0][0], [EN[0][1]]).score)


@pytest.mark.parametrize("mode", ["jieba", "char"])
def test_rouge_chinese_equals_rouge_chinese_package(mode):
    from rouge_chinese import Rouge

    tok = metrics.ChineseAwareTokenizer(mode)
    ours = metrics.rouge_scores([h for h, _ in ZH], [r for _, r in ZH], mode)
    for (h, r), o in zip(ZH, ours):
        # the reference implementation on the same segmentation (the jieba + rouge-chinese recipe), multiset
        # n-gram counts as ROUGE-1.5.5 counts them
        ref = Rouge(exclusive=False).get_scores(" ".join(tok.tokenize(h)), " ".join(tok.tokenize(r)))[0]
        assert o["rouge1"] == pytest.approx(100 * ref["rouge-1"]["f"])
        assert o["rouge2"] == pytest.approx(100 * ref["rouge-2"]["f"])
        assert o["rougeL"] == pytest.approx(100 * ref["rouge-l"]["f"])
    assert all(o["rouge1"] > 0 for o in ours)  # rouge-score's own tokenizer would score Chinese as empty
    assert tok.tokenize("安装，软件包！") == (["安装", "软件包"] if mode == "jieba" else ["安", "装", "软", "件", "包"])


def test_rouge_english_equals_rouge_score_stock():
    from rouge_score import rouge_scorer

    stock = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    for (h, r), o in zip(EN, metrics.rouge_scores([h for h, _ in EN], [r for _, r in EN])):
        s = stock.score(r, h)
        assert o == pytest.approx({k: 100 * s[k].fmeasure for k in ("rouge1", "rouge2", "rougeL")})


def test_exact_match_and_label_accuracy_normalisation():
    assert metrics.normalize_answer("  「是」。 ") == "是" and metrics.normalize_answer("Yes!") == "yes"
    assert metrics.normalize_answer("ＡＢＣ  d") == "abc d"  # NFKC folds full-width letters
    samples = [{"task_type": "log_classification", "answer": a, "reference": r} for a, r in
               [("错误", "错误"), ("错误。这条日志表示磁盘已满", "错误"), ("正常", "错误"), ("我认为是正常的", "正常"),
                ("无法判断", "正常"), ("错误或正常", "正常")]]
    samples.append({"task_type": "qa", "answer": "Paris.", "reference": "paris"})
    table, per = metrics.score_samples(samples, [], ["classif"])
    assert [p.get("label") for p in per[:6]] == ["错误", "错误", "正常", "正常", None, "错误"]  # starts-with wins
    assert table["log_classification"]["label_accuracy"] == pytest.approx(3 / 6)
    assert table["log_classification"]["labels"] == 2 and "label_accuracy" not in table["qa"]
    assert per[6]["exact_match"] == 1.0 and table["qa"]["exact_match"] == 1.0
    assert table["(all)"]["samples"] == 7


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    torch.set_num_threads(1)
    tok = make_tokenizer(root / "tok", corpus_texts())
    return make_model(root / "model", tok, init=0.5, seed=2)


def test_batched_left_padded_generation_equals_one_at_a_time(model_dir):
    from danlu.eval.config import GenerationOptions
    from danlu.eval.generate import generate
    from danlu.eval.model import load_model
    from danlu.tokenizer.chat import render_prompt

    lm = load_model(model_dir)
    prompts = [render_prompt(lm.tokenizer, [{"role": "user", "content": q}])
               for q in ("怎么安装软件包？", "apt", "How do I read the boot log on Debian 12 with journalctl?", "挂载")]
    assert len({len(p) for p in prompts}) == 4
    batched = generate(lm, prompts, GenerationOptions(max_new_tokens=10, batch_size=4, backend="hf"), progress=False)
    single = generate(lm, prompts, GenerationOptions(max_new_tokens=10, batch_size=1, backend="hf"), progress=False)
    assert batched == single and any(batched)
    s1 = generate(lm, prompts, GenerationOptions(max_new_tokens=10, do_sample=True, seed=3, backend="hf"),
                  progress=False)
    s2 = generate(lm, prompts, GenerationOptions(max_new_tokens=10, do_sample=True, seed=3, backend="hf"),
                  progress=False)
    assert s1 == s2  # sampling is seeded
    pytest.importorskip("danlu.serve.engine", reason="danlu's serving engine is not installed")
    engine = generate(lm, prompts, GenerationOptions(max_new_tokens=10, batch_size=4, backend="engine"), progress=False)
    assert engine == batched  # greedy: the serving engine decodes exactly as HF generate


def test_gen_run_folder(model_dir, tmp_path):
    from danlu.eval.config import GenConfig
    from danlu.eval.gen import run_gen

    f = write_sft(tmp_path / "test.jsonl", [("qa", "怎么安装软件包？", "用 apt install 命令"),
                                            ("log_classification", "这条日志是错误吗？", "是"),
                                            ("qa", "How to list sockets?", "Use ss -l")])
    with open(f, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "bad", "messages": [{"role": "user", "content": "no answer"}]}) + "\n")
        fh.write("not json\n")
    rep = run_gen(model_dir, tmp_path / "gen", GenConfig(data=[str(f)], generation={"max_new_tokens": 8}),
                  progress=False)
    assert rep["counts"]["in"] == 5 and rep["counts"]["kept"] == 3 and sum(rep["counts"]["rejected"].values()) == 2
    rows = [json.loads(x) for x in open(tmp_path / "gen" / "answers.jsonl", encoding="utf-8")]
    assert [r["id"] for r in rows] == ["s0", "s1", "s2"]
    res = json.loads((tmp_path / "gen" / "results.json").read_text(encoding="utf-8"))
    # the table is what the metrics give on the written answers (nothing lost between scoring and writing)
    table, _ = metrics.score_samples(rows, [], ["classif"])
    assert res["by_task_type"]["qa"]["rougeL"] == pytest.approx(table["qa"]["rougeL"])
    assert "label_accuracy" in res["by_task_type"]["log_classification"]
    assert rows[0]["messages"] == [{"role": "user", "content": "怎么安装软件包？"}]
    rejects = [json.loads(x) for x in open(tmp_path / "gen" / "rejects.jsonl", encoding="utf-8")]
    assert {r["line"] for r in rejects} == {4, 5}
    assert_self_contained((tmp_path / "gen" / "index.html").read_text(encoding="utf-8"))
