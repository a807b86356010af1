"""Generation metrics: BLEU (sacrebleu), ROUGE-1/2/L (rouge-score, Chinese-aware segmentation), exact match
and label accuracy, with the normalisation each applies stated here.

- BLEU: sacrebleu's corpus BLEU (0-100) per task_type, tokenised `zh` when the references contain Chinese
  (Chinese characters one token each, the rest as 13a) and `13a` otherwise; per sample, sentence BLEU.
- ROUGE: Google's rouge-score (the implementation HF `evaluate` uses) with a tokenizer that segments Chinese:
  NFKC, lower case, jieba words (or single characters with rouge_tokens=char; Latin words stay whole), tokens
  that are only punctuation or spaces dropped. F1 (0-100) per sample, averaged. rouge-score's own tokenizer
  drops every non-ASCII character, which silently scores Chinese as empty.
- Exact match: after `normalize_answer` (NFKC, lower case, whitespace collapsed, surrounding punctuation and
  quotes, Chinese or ASCII, stripped).
- Label accuracy (classification-style task_types): the labels are the task_type's distinct normalised
  references; a prediction's label is its normalised text if that is a label, else the longest label it
  starts with, else the one label it contains (none if several or none); correct when that is the reference.
"""

from __future__ import annotations

import logging
import re
import string
import unicodedata

CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]")
PUNCT = set(string.punctuation) | set("。，、；：？！…—～·“”‘’「」『』（）《》〈〉【】〔〕﹏　")
_WORD = re.compile(r"[A-Za-z0-9_]+(?:['.-][A-Za-z0-9_]+)*|\S")


def has_chinese(texts) -> bool:
    return any(CJK.search(t) for t in texts)


def normalize_answer(text: str) -> str:
    text = " ".join(unicodedata.normalize("NFKC", text).lower().split())
    return text.strip("".join(PUNCT) + " ")


def _is_noise(token: str) -> bool:
    return not token.strip() or all(ch in PUNCT for ch in token)


class ChineseAwareTokenizer:
    """The tokenizer rouge-score calls (`tokenize(text) -> tokens`)."""

    def __init__(self, mode: str = "jieba"):
        if mode not in ("jieba", "char"):
            raise ValueError(f"rouge_tokens must be jieba or char, got {mode!r}")
        self.mode = mode

    def tokenize(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFKC", text).lower()
        if self.mode == "jieba":
            import jieba

            jieba.setLogLevel(logging.WARNING)
            tokens = jieba.lcut(text)
        else:
            tokens = _WORD.findall(text)  # a CJK character is one \S match: one token
        return [t.strip() for t in tokens if not _is_noise(t)]


def bleu_tokenizer(references: list[str]) -> str:
    return "zh" if has_chinese(references) else "13a"


def corpus_bleu(hyps: list[str], refs: list[str]) -> tuple[float, str]:
    """(BLEU 0-100, the sacrebleu tokeniser used) over a task_type's samples."""
    import sacrebleu

    tok = bleu_tokenizer(refs)
    return float(sacrebleu.corpus_bleu(hyps, [refs], tokenize=tok).score), tok


def sentence_bleu(hyp: str, ref: str, tokenize: str) -> float:
    import sacrebleu

    return float(sacrebleu.sentence_bleu(hyp, [ref], tokenize=tokenize).score)


def rouge_scores(hyps: list[str], refs: list[str], mode: str = "jieba") -> list[dict[str, float]]:
    """Per sample {"rouge1", "rouge2", "rougeL"}: F1 x 100."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=ChineseAwareTokenizer(mode))
    out = []
    for h, r in zip(hyps, refs):
        s = scorer.score(r, h)  # rouge-score takes (target, prediction)
        out.append({k: 100.0 * s[k].fmeasure for k in ("rouge1", "rouge2", "rougeL")})
    return out


def predicted_label(prediction: str, labels: set[str]) -> str | None:
    p = normalize_answer(prediction)
    if p in labels:
        return p
    starts = [lab for lab in labels if lab and p.startswith(lab)]
    if starts:
        return max(starts, key=len)
    inside = [lab for lab in labels if lab and lab in p]
    return inside[0] if len(inside) == 1 else None


def is_label_task(task_type: str, explicit: list[str], markers: list[str]) -> bool:
    return task_type in explicit or any(m.lower() in task_type.lower() for m in markers)


def score_samples(samples: list[dict], label_task_types: list[str], label_markers: list[str],
                  rouge_tokens: str = "jieba") -> tuple[dict[str, dict], list[dict]]:
    """`samples`: {"task_type", "answer", "reference"}. Returns (per task_type metrics incl. "(all)", per-sample
    scores in input order). Corpus BLEU per task_type; ROUGE/EM/label accuracy are means of sample scores."""
    from collections import defaultdict

    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[s["task_type"]].append(i)
    per_sample: list[dict] = [{} for _ in samples]
    rouge = rouge_scores([s["answer"] for s in samples], [s["reference"] for s in samples], rouge_tokens)
    for i, s in enumerate(samples):
        per_sample[i].update(rouge[i])
        per_sample[i]["exact_match"] = float(normalize_answer(s["answer"]) == normalize_answer(s["reference"]))
    table: dict[str, dict] = {}
    for tt, idx in sorted(groups.items()):
        hyps, refs = [samples[i]["answer"] for i in idx], [samples[i]["reference"] for i in idx]
        bleu, tok = corpus_bleu(hyps, refs)
        for i in idx:
            per_sample[i]["bleu"] = sentence_bleu(samples[i]["answer"], samples[i]["reference"], tok)
        row = {"samples": len(idx), "bleu": bleu, "bleu_tokenize": tok}
        for k in ("rouge1", "rouge2", "rougeL", "exact_match"):
            row[k] = sum(per_sample[i][k] for i in idx) / len(idx)
        if is_label_task(tt, label_task_types, label_markers):
            labels = {normalize_answer(r) for r in refs}
            for i in idx:
                lab = predicted_label(samples[i]["answer"], labels)
                per_sample[i]["label"] = lab
                per_sample[i]["label_correct"] = float(lab == normalize_answer(samples[i]["reference"]))
            row["label_accuracy"] = sum(per_sample[i]["label_correct"] for i in idx) / len(idx)
            row["labels"] = len(labels)
        table[tt] = row
    if samples:
        all_idx = range(len(samples))
        bleu, tok = corpus_bleu([s["answer"] for s in samples], [s["reference"] for s in samples])
        table["(all)"] = {"samples": len(samples), "bleu": bleu, "bleu_tokenize": tok,
                          **{k: sum(per_sample[i][k] for i in all_idx) / len(samples)
                             for k in ("rouge1", "rouge2", "rougeL", "exact_match")}}
    return table, per_sample
